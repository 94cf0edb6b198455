"""The one pixel-format table (drivers/pixel_formats.py) and its users."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dmicro_hw.acquisition.pipeline import frame_dtype, pixel_format_bits
from dmicro_hw.drivers.pixel_formats import PIXEL_FORMATS, UNPACKED_FORMATS, format_bits

ROOT = Path(__file__).resolve().parents[2]


def test_table_bits_and_dtypes() -> None:
    assert UNPACKED_FORMATS == ("Mono8", "Mono10", "Mono12", "Mono14", "Mono16")
    for name, f in PIXEL_FORMATS.items():
        assert f.bits == int(re.sub(r"\D", "", name))
        assert f.dtype == (np.uint8 if f.bits == 8 else np.uint16)
        data = np.zeros(2, np.uint16)
        assert pixel_format_bits(name, data) == f.bits and frame_dtype(name, data) == f.dtype
    assert format_bits("RGBa8") is None and format_bits("RGBa8", 8) == 8
    assert pixel_format_bits("Weird", np.zeros(1, np.uint8)) == 8


def test_no_second_pixel_format_table() -> None:
    """No module but drivers/pixel_formats.py maps a Mono format to its bits."""
    pattern = re.compile(r"[\"']Mono1[0246][\"']\s*:\s*\d")
    hits = []
    for folder in ("dmicro_hw", "drivers", "simulators", "calibration"):
        for p in (ROOT / folder).rglob("*.py"):
            if p.name != "pixel_formats.py" and pattern.search(p.read_text()):
                hits.append(str(p.relative_to(ROOT)))
    assert hits == []
