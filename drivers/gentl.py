"""GenTL producer discovery: which ``.cti`` files there are, whether a file is a producer for
this machine (checked without loading it), and which devices a producer sees.

* :func:`gentl_path_producers`: the ``*.cti`` named by ``GENICAM_GENTL64_PATH`` (the GenTL
  convention); :func:`bundled_producers`: those shipped in the ``genicam`` wheel (viky.cti);
* :func:`check_producer`: the ELF dynamic symbols must export the GenTL entry points
  (:data:`GENTL_SYMBOLS`) for this machine's architecture — a refused file never runs;
* :func:`enumerate_devices`: the devices one producer sees, as plain dicts
  (:func:`describe_device`).

Used by the GenICam camera (:mod:`dmicro_hw.drivers.genicam_camera`) and ``dmicro devices list``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dmicro_hw.errors import DeviceError

#: harvesters' own log records go here (quiet unless debugging)
_hv_log = logging.getLogger("dmicro_hw.drivers.genicam_camera.harvesters")


def gentl_path_producers(env: str | None = None) -> list[Path]:
    """``*.cti`` files named by ``GENICAM_GENTL64_PATH`` (folders or files, ``os.pathsep`` list)."""
    value = os.environ.get("GENICAM_GENTL64_PATH", "") if env is None else env
    out: list[Path] = []
    for entry in filter(None, value.split(os.pathsep)):
        p = Path(entry)
        if p.is_dir():
            out.extend(sorted(p.glob("*.cti")))
        elif p.is_file() and p.suffix == ".cti":
            out.append(p)
    return out


def bundled_producers() -> list[Path]:
    """GenTL producers shipped inside the ``genicam`` wheel (the viky test camera)."""
    try:
        import genicam
    except ImportError:
        return []
    return sorted(Path(genicam.__file__).parent.glob("*.cti"))


#: functions every GenTL producer exports (GenTL standard, "GenTL C interface")
GENTL_SYMBOLS = ("GCInitLib", "GCCloseLib", "TLOpen", "TLClose")


def check_producer(path: Path | str) -> Path:
    """Check that ``path`` is a GenTL producer for this machine *without loading it*: its ELF
    dynamic symbol table must export the GenTL entry points (:data:`GENTL_SYMBOLS`). A refused
    file never runs (no constructor of it executes). DeviceError naming the path otherwise."""
    import platform

    from dmicro_hw.drivers.elf_symbols import ElfError, exported_functions

    p = Path(path)
    if not p.is_file():
        raise DeviceError(f"camera.cti: GenTL producer not found: {p}")
    try:
        names, machine = exported_functions(p)
    except (ElfError, OSError) as e:
        raise DeviceError(f"camera.cti: {p} is not a loadable GenTL producer ({e})") from None
    here = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
        platform.machine().lower()
    )
    if here and machine != here:
        raise DeviceError(f"camera.cti: {p} is built for {machine}, this machine is {here}")
    missing = [s for s in GENTL_SYMBOLS if s not in names]
    if missing:
        raise DeviceError(f"camera.cti: {p} is not a GenTL producer (no {', '.join(missing)})")
    return p


def _safe(obj: Any, attr: str) -> Any:
    try:
        return getattr(obj, attr)
    except Exception:  # GenTL raises when a producer does not implement an info query
        return None


def describe_device(info: Any) -> dict[str, Any]:
    """Plain dict of a harvesters DeviceInfo (id, serial, model, vendor, names, tl type)."""
    keys = ("id_", "serial_number", "model", "vendor", "user_defined_name", "display_name")
    d = {k.rstrip("_"): _safe(info, k) for k in keys}
    d["tl_type"] = _safe(info, "tl_type")
    return d


def _label(d: dict[str, Any]) -> str:
    return f"{d['id']} (serial {d['serial_number']}, model {d['model']})"


def enumerate_devices(cti: Path | str) -> list[dict[str, Any]]:
    """The devices producer ``cti`` sees (checked first, loaded in this process), as
    :func:`describe_device` dicts."""
    from dmicro_hw.extras import require

    require("harvesters.core", "dmicro devices genicam")
    from harvesters.core import Harvester, ParameterKey, ParameterSet

    check_producer(cti)
    h = Harvester(config=ParameterSet({ParameterKey.LOGGER: _hv_log}))
    try:
        h.add_file(str(cti))
        h.update()
        return [describe_device(i) for i in h.device_info_list]
    finally:
        h.reset()
