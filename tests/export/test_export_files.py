"""Pattern files (PNG/NPY + sidecar): hashes verify, a tampered or foreign pattern is refused;
``dmicro export`` in a subprocess on a checkpoint made by ``dmicro train``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmicro_hw.config import RigConfig, load_rig_config
from dmicro_hw.errors import CheckpointError
from dmicro_hw.export import (
    export_filter,
    filter_correlation,
    load_pattern,
    read_png,
    sha256_file,
    sha256_pattern,
    write_pattern,
)
from dmicro_hw.optics.fourier4f import pupil_mask
from dmicro_hw.optics.slm import PhaseResponse, SLMGeometry, SLMModel

TINY_TRAIN = """\
seed: 0
device: cpu
optics: {field_size: 32, compression: 16}
sensor: {noise: true, photons_per_pixel: 1000.0}
encoder: {kind: lff}
decoder: {kind: unet, base_channels: 4, depth: 1}
data: {kind: synthetic, n_train: 16, n_val: 4, n_test: 4, seed: 0}
stages:
  - {name: optics, epochs: 2, lr: 0.3, batch_size: 4}
  - {name: decoder, epochs: 1, lr: 2.0e-3, batch_size: 8}
"""

TINY_RIG = """\
rig_id: tiny-rig
optics: {field_size: 32, compression: 16, focal_length_m: 0.02}
slm: {backend: sim, pixels: [128, 160], pitch_m: 8.0e-6, bit_depth: BITS, fill_factor: 1.0}
"""


def rig_for(bits: int = 8, **slm) -> RigConfig:
    cfg = {"pixels": (128, 160), "pitch_m": 8e-6, "bit_depth": bits, "fill_factor": 1.0}
    cfg.update(slm)
    return RigConfig(
        rig_id="tiny-rig",
        optics={"field_size": 32, "compression": 16, "focal_length_m": 0.02},
        slm=cfg,
    )


def random_filter(n: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.polar(torch.rand(n, n, generator=g), torch.randn(n, n, generator=g)) * pupil_mask(
        n
    )


def dmicro(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [str(Path(sys.executable).with_name("dmicro")), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


# ------------------------------------------------------------------ files and sidecar
@pytest.mark.parametrize("bits", [8, 12])
def test_written_pattern_verifies_from_every_container(tmp_path, bits):
    rig = rig_for(bits, mode="amplitude_phase")
    grey, _, meta = export_filter(random_filter(), rig)
    assert grey.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert int(grey.max()) < 2**bits and int(grey.max()) > 2 ** (bits - 1)
    side_p = write_pattern(tmp_path / "out", grey, meta)
    side = json.loads(side_p.read_text())
    assert side["shape"] == [128, 160] and side["bit_depth"] == bits
    assert side["mode"] == "amplitude_phase" and side["encoding"] == "double_phase_checkerboard"
    assert side["sha256"]["pattern"] == sha256_pattern(grey)
    assert side["sha256"]["png"] == sha256_file(tmp_path / "out" / "pattern.png")
    # the PNG holds the raw grey levels (16-bit for > 8 bits), identical to the NPY
    assert np.array_equal(read_png(tmp_path / "out" / "pattern.png"), grey)
    for p in ("out", "out/pattern.json", "out/pattern.npy", "out/pattern.png"):
        pat = load_pattern(tmp_path / p, rig)
        assert np.array_equal(pat.grey, grey) and pat.grey.dtype == grey.dtype
        assert pat.pattern_id == side["sha256"]["pattern"][:16]


def test_tampered_or_orphaned_pattern_is_refused(tmp_path):
    rig = rig_for(8)
    grey, _, meta = export_filter(random_filter(), rig)
    out = tmp_path / "p"
    write_pattern(out, grey, meta)
    changed = grey.copy()
    changed[5, 5] ^= 1
    np.save(out / "pattern.npy", changed)
    with pytest.raises(CheckpointError, match="SHA-256 does not match its sidecar"):
        load_pattern(out / "pattern.npy", rig)
    # the PNG is still intact and loads
    assert np.array_equal(load_pattern(out / "pattern.png", rig).grey, grey)
    side = json.loads((out / "pattern.json").read_text())
    side["sha256"]["npy"] = sha256_file(out / "pattern.npy")  # hash the file, not the pattern
    (out / "pattern.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="pattern SHA-256 does not match"):
        load_pattern(out / "pattern.npy", rig)
    (out / "pattern.json").unlink()
    with pytest.raises(CheckpointError, match="no sidecar pattern.json"):
        load_pattern(out / "pattern.png", rig)
    (out / "pattern.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a dmicro-hw SLM pattern sidecar"):
        load_pattern(out, rig)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(slm={"pixels": (128, 128)}), r"128×160 px, the rig's SLM \(slm.pixels\) is 128×128"),
        (dict(slm={"bit_depth": 10}), r"8-bit grey levels, the rig's SLM \(slm.bit_depth\) is 10"),
        (dict(optics={"wavelength_m": 532e-9}), r"λ = 632.8 nm, the rig .* uses 532.0 nm"),
    ],
)
def test_pattern_for_another_rig_is_refused_with_one_clear_line(tmp_path, other, message):
    rig = rig_for(8)
    grey, _, meta = export_filter(random_filter(), rig)
    write_pattern(tmp_path, grey, meta)
    data = rig.model_dump()
    for section, values in other.items():
        data[section].update(values)
    foreign = RigConfig.model_validate(data)
    with pytest.raises(CheckpointError, match=message) as e:
        load_pattern(tmp_path / "pattern.png", foreign)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ the CLI on a real checkpoint
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint made by `dmicro train` (tiny config, a few seconds)."""
    d = tmp_path_factory.mktemp("train")
    (d / "train.yaml").write_text(TINY_TRAIN)
    r = dmicro("train", "--config", "train.yaml", "--out", "run", "--examples", "0", cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    return d / "run" / "best.pt"


def test_cli_export_on_trained_checkpoint_realises_the_trained_phase_filter(trained, tmp_path):
    from dmicro_hw.training.checkpoint import learned_filter

    (tmp_path / "rig.yaml").write_text(TINY_RIG.replace("BITS", "10"))
    cal = tmp_path / "cal"
    cal.mkdir()
    placement = {"offset_px": [2.5, -3.0], "rotation_rad": 0.02, "scale": 0.99}
    (cal / "calibration.json").write_text(
        json.dumps({"rig_id": "tiny-rig", "wavelength_m": 632.8e-9, "slm": placement})
    )
    lut = np.linspace(0.0, 2.1 * np.pi, 1024) ** 1.1 / (2.1 * np.pi) ** 0.1  # gamma-ish, >2π
    np.save(cal / "lut.npy", lut)
    r = dmicro(
        "export", str(trained), "--config", "rig.yaml", "--calibration", "cal", "--out", "pat",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SLM pattern for rig 'tiny-rig'" in r.stdout
    rig = load_rig_config(tmp_path / "rig.yaml")
    pat = load_pattern(tmp_path / "pat", rig)
    side = pat.sidecar
    assert pat.grey.shape == (128, 160) and pat.grey.dtype == np.uint16 and side["bit_depth"] == 10
    assert side["sha256"]["checkpoint"] == sha256_file(trained)
    assert side["sha256"]["calibration"] and side["lut"]["source"] == "calibration"
    assert side["placement"] == placement and side["rig_id"] == "tiny-rig"
    assert side["software_version"] and side["wavelength_m"] == pytest.approx(632.8e-9)
    # The realised filter: an independent SLMModel with the calibrated placement and LUT, fed
    # the exported grey levels, against the trained filter's phase (phase-only export).
    h = learned_filter(trained)
    pupil = pupil_mask(32)
    assert float(h.angle()[pupil > 0].std()) > 0.3  # the filter really has structure
    geom = SLMGeometry.from_configs(rig.optics, rig.slm, **placement)
    model = SLMModel(rig.optics, rig.slm, geom, PhaseResponse(10, table=lut))
    realised = model(torch.from_numpy(pat.grey.astype(np.float32))) * pupil
    phase_only = torch.polar(torch.ones(32, 32), h.angle()) * pupil
    assert filter_correlation(realised, phase_only, pupil) > 0.99
    assert filter_correlation(realised, h, pupil) > 0.99
    assert side["quality"]["filter_correlation"] > 0.99


def test_cli_export_show_and_clear_errors(trained, tmp_path, capsys, monkeypatch):
    (tmp_path / "rig.yaml").write_text(TINY_RIG.replace("BITS", "8"))
    r = dmicro("export", str(trained), "-c", "rig.yaml", "-o", "p", "--show", "--hold", "0",
               cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "showing pattern" in r.stdout and "sim SLM" in r.stdout
    # user errors: one line, exit code 4, no traceback (in-process, same entry as the script)
    from dmicro_hw.cli import _run, app

    monkeypatch.chdir(tmp_path)

    def fails(*argv: str) -> str:
        assert _run(app, ["export", *argv]) == CheckpointError.exit_code
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return " ".join(err.split())

    # a rig whose field size differs from the checkpoint's
    (tmp_path / "big.yaml").write_text(TINY_RIG.replace("BITS", "8").replace("32", "64"))
    assert "optics.field_size is 64" in fails(str(trained), "-c", "big.yaml")
    # a calibration measured on another rig
    cal = tmp_path / "cal"
    cal.mkdir()
    (cal / "calibration.json").write_text(json.dumps({"rig_id": "bench-B"}))
    msg = fails(str(trained), "-c", "rig.yaml", "--calibration", "cal")
    assert "calibration is for rig 'bench-B'" in msg
    assert "not found" in fails(str(tmp_path / "missing.pt"), "-c", "rig.yaml")


def test_bench_export_table_and_json(trained, tmp_path, monkeypatch):
    from dmicro_hw.cli import _run, app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rig.yaml").write_text(TINY_RIG.replace("BITS", "8"))
    argv = ["bench", "export", "--checkpoint", str(trained), "-c", "rig.yaml", "--bits", "6,8",
            "--n-test", "4", "--out", "b"]  # fmt: skip
    assert _run(app, argv) == 0
    res = json.loads((tmp_path / "b" / "bench_export.json").read_text())
    rows = res["rows"]
    assert [(r["mode"], r["bits"]) for r in rows] == [(None, None)] + [
        (m, b) for m in ("phase", "amplitude_phase") for b in (None, 6, 8)
    ]
    assert rows[0]["delta_psnr_db"] == 0.0
    assert all(r["corr_trained"] > 0.98 and math.isfinite(r["psnr_db"]) for r in rows)
    assert res["test_samples"] == 4 and res["slm"]["pixels"] == [128, 160]


def test_bench_export_on_a_hardware_aware_checkpoint(tmp_path, monkeypatch):
    """A checkpoint trained through the export (encoder.hardware_aware: the encoder holds the
    export as a registered module) is benchmarked too: the shipped sim-rig model, whose decoder
    was trained on the realised filter, scores its exported pattern at least as well as the
    float filter it never saw alone."""
    from dmicro_hw.cli import _run, app

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "export", "--checkpoint", str(root / "configs" / "assets" / "sim-rig.pt"),
            "-c", str(root / "configs" / "sim-rig.yaml"), "--bits", "8", "--modes", "phase",
            "--n-test", "6", "--out", "b"]  # fmt: skip
    assert _run(app, argv) == 0
    rows = json.loads((tmp_path / "b" / "bench_export.json").read_text())["rows"]
    assert [(r["mode"], r["bits"]) for r in rows] == [(None, None), ("phase", None), ("phase", 8)]
    assert rows[2]["corr_trained"] > 0.99 and rows[2]["psnr_db"] >= rows[0]["psnr_db"] - 0.2
