"""Small files written safely: never through a symlink, never half-written, space kept in reserve.

* :func:`write_text_safely` writes ``path`` through a fresh temporary file in the same folder,
  opened with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a name planted in advance, symlink or not, makes
  the open fail instead of being followed), flushed to disk, then renamed over ``path``
  (``rename`` replaces a symlink at ``path`` itself, never its target). A failed write removes
  its temporary file.
* :func:`reserve_space` / the ``reserve`` argument: a run keeps a small file of real blocks
  beside its outputs; when the disk fills up, the reserve is deleted and the summary written in
  the space it held.
* :func:`check_output_dir`: an output folder that cannot be created or written is refused with
  one line before any device opens.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dmicro_hw.errors import ConfigError

RESERVE_NAME = ".dmicro-reserve"
RESERVE_BYTES = 256 << 10


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` when the block ends without error.

    The temporary file is created exclusively (``O_EXCL | O_NOFOLLOW``) beside ``path``,
    fsynced, then renamed over it; on any error it is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_once(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text_safely(path: Path | str, text: str, reserve: Path | None = None) -> None:
    """Write ``text`` to ``path`` atomically without following symlinks (see module doc).

    ``reserve``: a file made by :func:`reserve_space`; on ENOSPC/EDQUOT it is deleted and the
    write tried once more.
    """
    write_bytes_safely(path, text.encode("utf-8"), reserve)


def write_bytes_safely(path: Path | str, data: bytes, reserve: Path | None = None) -> None:
    """As :func:`write_text_safely`, for bytes."""
    p = Path(path)
    try:
        _write_once(p, data)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or reserve is None or not reserve.exists():
            raise
        reserve.unlink()
        _write_once(p, data)


def reserve_space(folder: Path, nbytes: int = RESERVE_BYTES) -> Path | None:
    """Keep ``nbytes`` of real disk blocks in ``folder/.dmicro-reserve``; None if impossible."""
    p = folder / RESERVE_NAME
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(p, flags, 0o600)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * nbytes)  # written, not sparse: the blocks are really allocated
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            p.unlink()
        return None
    return p


def release_space(reserve: Path | None) -> None:
    if reserve is not None:
        with contextlib.suppress(OSError):
            reserve.unlink()


def check_output_dir(path: Path, what: str = "--out") -> None:
    """Refuse an output folder that is a file, or whose nearest existing ancestor is not a
    writable folder (read-only file system, permissions, /proc …) — without creating it."""
    p = Path(path)
    if p.is_symlink() and not p.is_dir():
        raise ConfigError(f"{what} {p}: is a dangling symlink; choose another folder")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p}: exists and is not a folder")
    anc = p if p.exists() else p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{what} {p}: {anc} is not a folder")
    try:
        st = os.statvfs(anc)
    except OSError as e:
        raise ConfigError(f"{what} {p}: cannot inspect {anc} ({e.strerror})") from None
    if st.f_flag & os.ST_RDONLY:
        raise ConfigError(f"{what} {p}: {anc} is on a read-only file system")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p}: {anc} is not writable")


def make_output_dir(path: Path, what: str = "--out") -> None:
    """Create the output folder (parents too); one clear line when the system refuses."""
    check_output_dir(path, what)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot create folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: folder is not writable")
