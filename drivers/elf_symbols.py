"""Read the exported dynamic symbols of an ELF shared library *without loading it*.

Loading a library (``ctypes.CDLL``) runs its constructors, so a file that only claims to be a
GenTL producer would already have executed code by the time it is refused. This reader parses
the ELF header, the section headers and ``.dynsym``/its string table with :mod:`struct` only.

Layout facts used (System V gABI): ``e_ident`` = ``\\x7fELF``, class (1 = 32-bit, 2 = 64-bit),
data (1 = little, 2 = big endian); ``e_type`` 3 = ET_DYN (shared object); section type 11 =
SHT_DYNSYM whose ``sh_link`` is its string table; a symbol with ``st_shndx`` 0 is undefined
(imported), others are defined here (exported).
"""

from __future__ import annotations

import struct
from pathlib import Path

ET_DYN = 3
SHT_DYNSYM = 11
STT_FUNC = 2
MAX_BYTES = 512 << 20
#: e_machine of the CPUs we might run on → name
MACHINES = {3: "x86", 62: "x86-64", 40: "arm", 183: "aarch64", 243: "riscv", 21: "ppc64"}


class ElfError(ValueError):
    """The file is not a readable ELF shared library (message says why)."""


def exported_functions(path: Path | str) -> tuple[set[str], str]:
    """Names of the functions a shared library defines, and its machine name.

    Raises:
        ElfError: not ELF, not a shared object, truncated or inconsistent tables.
    """
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise ElfError(f"{size} bytes is too large for a GenTL producer")
    data = p.read_bytes()
    if len(data) < 52 or data[:4] != b"\x7fELF":
        kind = "a Windows DLL" if data[:2] == b"MZ" else "not an ELF file"
        raise ElfError(f"{kind}, not a shared library for this system")
    cls, enc = data[4], data[5]
    if cls not in (1, 2) or enc not in (1, 2):
        raise ElfError("bad ELF class or byte order")
    e = "<" if enc == 1 else ">"
    is64 = cls == 2
    try:
        if is64:
            (e_type, e_machine) = struct.unpack_from(e + "HH", data, 16)
            (e_shoff,) = struct.unpack_from(e + "Q", data, 40)
            e_shentsize, e_shnum = struct.unpack_from(e + "HH", data, 58)
            sh_fmt, sym_fmt = e + "IIQQQQIIQQ", e + "IBBHQQ"
        else:
            (e_type, e_machine) = struct.unpack_from(e + "HH", data, 16)
            (e_shoff,) = struct.unpack_from(e + "I", data, 32)
            e_shentsize, e_shnum = struct.unpack_from(e + "HH", data, 46)
            sh_fmt, sym_fmt = e + "IIIIIIIIII", e + "IIIBBH"
        if e_type != ET_DYN:
            raise ElfError("ELF file is not a shared library (e_type != ET_DYN)")
        sh_size = struct.calcsize(sh_fmt)
        if e_shentsize < sh_size or e_shoff + e_shnum * e_shentsize > len(data) or not e_shnum:
            raise ElfError("truncated or missing ELF section headers")
        sections = [
            struct.unpack_from(sh_fmt, data, e_shoff + i * e_shentsize) for i in range(e_shnum)
        ]
        names: set[str] = set()
        for sh in sections:
            sh_type, sh_offset, sh_sz, sh_link, sh_entsize = sh[1], sh[4], sh[5], sh[6], sh[9]
            if sh_type != SHT_DYNSYM:
                continue
            if sh_link >= len(sections) or sh_offset + sh_sz > len(data):
                raise ElfError("inconsistent .dynsym section")
            strtab = sections[sh_link]
            s_off, s_size = strtab[4], strtab[5]
            if s_off + s_size > len(data):
                raise ElfError("truncated dynamic string table")
            ent = sh_entsize or struct.calcsize(sym_fmt)
            for k in range(sh_sz // ent):
                sym = struct.unpack_from(sym_fmt, data, sh_offset + k * ent)
                if is64:
                    st_name, st_info, st_shndx = sym[0], sym[1], sym[3]
                else:
                    st_name, st_info, st_shndx = sym[0], sym[3], sym[5]
                if st_shndx == 0 or (st_info & 0xF) != STT_FUNC or st_name >= s_size:
                    continue
                end = data.index(b"\0", s_off + st_name, s_off + s_size)
                names.add(data[s_off + st_name : end].decode("ascii", "replace"))
    except struct.error:
        raise ElfError("truncated ELF file") from None
    except ValueError as ex:
        if isinstance(ex, ElfError):
            raise
        raise ElfError("unterminated symbol name") from None
    return names, MACHINES.get(e_machine, f"machine {e_machine}")
