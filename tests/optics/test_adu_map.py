"""The one ADU map (optics/sensor.py ADUMap): camera pixels → decoder input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dmicro_hw.config import SensorConfig
from dmicro_hw.optics.sensor import ADUMap, Sensor, bin_frames

ROOT = Path(__file__).resolve().parents[2]


def test_map_inverts_the_sensor_and_the_camera_response() -> None:
    cfg = SensorConfig(photons_per_pixel=900.0, gain_adu_per_e=0.25, offset_adu=12.0, noise=False)
    sensor = Sensor(cfg, binning=2)
    intensity = torch.rand(2, 8, 8, dtype=torch.float32) * 1.5
    adu = sensor(intensity)
    np.testing.assert_allclose(sensor.normalise(adu), bin_frames(intensity, 2), rtol=1e-5)
    # a camera that answers raw' = g·raw + o, sent as Mono16 from a 12-bit ADC (×16)
    g, o, s = 1.07, 3.5, 16.0
    pixels = (adu * g + o) * s
    m = ADUMap.from_sensor(cfg, g, o, s)
    np.testing.assert_allclose(m(pixels), sensor.normalise(adu), rtol=1e-5, atol=1e-6)
    a, b = m.affine()
    np.testing.assert_allclose(pixels * a + b, m(pixels), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m(pixels.numpy()), m(pixels).numpy(), rtol=1e-6)  # numpy too
    assert m.with_pixel_scale(1.0)(adu * g + o).allclose(m(pixels), atol=1e-6)
    # identity steps are skipped: Sensor.normalise is exactly the plain sensor formula
    plain = (adu - cfg.offset_adu) / (cfg.gain_adu_per_e * cfg.photons_per_pixel)
    assert torch.equal(sensor.normalise(adu), plain)


def test_no_other_adu_inverse() -> None:
    """ADU → intensity (÷ gain·photons) is written only in ADUMap."""
    hits = []
    for folder in ("dmicro_hw", "calibration", "simulators", "drivers"):
        for p in (ROOT / folder).rglob("*.py"):
            text = p.read_text().replace(" ", "")
            if p.name != "sensor.py" and "/(c.gain_adu_per_e*c.photons_per_pixel)" in text:
                hits.append(str(p.relative_to(ROOT)))
    assert hits == []
