"""End to end on a small simulated rig: ``dmicro calibrate`` through SimSLM/SimCamera recovers a
hidden mismatch (seeds never used while tuning), writes a bundle the export reads, refuses a
bundle of another rig or wavelength, and the drift check tells a stable rig from a changed one.

The rig is the sim rig shrunk to a 64-sample field (16×16 camera frames) and a 192×192 SLM at
2 SLM pixels per filter sample. Tolerances are the issue's targets; no timings.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmicro_hw.calibration import scoring as S
from dmicro_hw.calibration.bundle import load_bundle
from dmicro_hw.calibration.sequence import CalibrationOptions, run_calibration
from dmicro_hw.config import load_rig_config
from dmicro_hw.errors import CheckpointError, ConfigError
from dmicro_hw.rig import open_rig
from dmicro_hw.simulators.bench import VirtualBench, reveal_mismatch_for_scoring

ROOT = Path(__file__).resolve().parents[2]
TEST_SEEDS = (21, 22)  # never used while tuning the calibration


def small_rig_yaml(tmp: Path, seed: int, rig_id: str = "sim-rig-small") -> Path:
    data = yaml.safe_load((ROOT / "configs" / "sim-rig.yaml").read_text())
    data["rig_id"] = rig_id
    for key in ("checkpoint", "pattern", "calibration"):  # the shipped assets are for N = 128
        data.pop(key, None)
    data["optics"].update(field_size=64, focal_length_m=0.02048, compression=16)
    data["slm"].update(pixels=[192, 192], settle_time_s=0.002)
    data["camera"]["options"] = {"paced": False}
    data["bench"]["mismatch"]["seed"] = seed
    data["bench"]["frame_rate_hz"] = 5000
    p = tmp / f"rig-{rig_id}-{seed}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@contextlib.contextmanager
def rig_devices(rig):
    """SLM and camera of ``rig`` on one shared virtual bench (the rig seam), closed after."""
    with contextlib.ExitStack() as stack:
        r = open_rig(rig, stack)
        yield r.slm, r.camera


def truth_of(rig_path: Path):
    rig = load_rig_config(rig_path)
    return rig, reveal_mismatch_for_scoring(VirtualBench.from_rig(rig))  # scoring only


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cal")
    cfg = small_rig_yaml(tmp, TEST_SEEDS[0])
    out = tmp / "bundle"
    r = subprocess.run(
        [
            str(Path(sys.executable).with_name("dmicro")),
            "calibrate",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--frames",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return cfg, out, r.stdout


def test_cli_calibrate_writes_a_bundle_with_plots_and_uncertainties(cli_bundle):
    cfg, out, stdout = cli_bundle
    for f in (
        "calibration.json",
        "lut.npy",
        "lut_sigma.npy",
        "frames.npz",
        "probes.npz",
        "target.npy",
        "lut.png",
        "registration.png",
        "residuals.png",
    ):
        assert (out / f).is_file(), f
    data = json.loads((out / "calibration.json").read_text())
    assert data["rig_id"] == "sim-rig-small" and data["wavelength_m"] == pytest.approx(632.8e-9)
    assert len(data["frames_sha256"]) == 64 and data["n_patterns"] > 40
    for name in ("slm_offset_y", "slm_rotation", "z4", "lut_gamma", "cam_shift_x", "cam_gain"):
        p = data["parameters"][name]
        assert p["sigma"] is not None and 0 < p["sigma"] < 0.1, (name, p)
    per = data["fits"]["joint"]["per_observation"]
    assert {"flat", "edge000", "ramp000", "lens+1"} <= set(per)
    assert all(v["rms_noise_units"] < 2.0 for v in per.values())
    assert "bundle:" in stdout and "registration" in stdout
    assert "SLM response across the pupil" in stdout  # the pupil zones, read and reported
    # the frames hash is the hash of frames.npz's content in capture order
    with np.load(out / "frames.npz") as z:
        assert len(z["pattern_ids"]) == data["n_patterns"]


def test_recovery_meets_the_targets_for_unseen_seeds(cli_bundle, tmp_path):
    cfg, out, _ = cli_bundle
    rig, truth = truth_of(cfg)
    sc = S.score_bundle(rig, out, truth)
    assert all(sc["meets"].values()), sc["errors"]
    # second seed, in process, fewer frames
    cfg2 = small_rig_yaml(tmp_path, TEST_SEEDS[1])
    rig2 = load_rig_config(cfg2)
    with rig_devices(rig2) as (slm, cam):
        run_calibration(
            rig2,
            slm,
            cam,
            ["registration", "lut", "fit"],
            tmp_path / "b2",
            CalibrationOptions(frames_per_pattern=6),
        )
    _, truth2 = truth_of(cfg2)
    sc2 = S.score_bundle(rig2, tmp_path / "b2", truth2)
    assert all(sc2["meets"].values()), sc2["errors"]


def test_export_reads_the_bundle_and_foreign_bundles_are_refused(cli_bundle, tmp_path):
    from dmicro_hw.export import check_calibration_for_rig, load_slm_calibration

    cfg, out, _ = cli_bundle
    rig = load_rig_config(cfg)
    cal = load_slm_calibration(out)
    check_calibration_for_rig(cal, rig)
    b = load_bundle(out, rig)
    assert cal.offset_px == pytest.approx(
        (b.value("dc_on_slm_y"), b.value("dc_on_slm_x")), abs=1e-9
    )
    assert cal.lut_table.shape == (256,) and np.all(np.diff(cal.lut_table) >= 0)
    other = rig.model_copy(update={"rig_id": "other-bench"})
    with pytest.raises(CheckpointError, match="rig 'sim-rig-small'.*other-bench"):
        load_bundle(out, other)
    red = rig.model_copy(update={"optics": rig.optics.model_copy(update={"wavelength_m": 532e-9})})
    with pytest.raises(CheckpointError, match="632.8 nm.*532.0 nm"):
        load_bundle(out, red)
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_drift_check_stable_rig_no_changed_rig_yes(cli_bundle, tmp_path):
    cfg, out, _ = cli_bundle
    rig = load_rig_config(cfg)
    prev = load_bundle(out, rig)
    with rig_devices(rig) as (slm, cam):
        res = run_calibration(rig, slm, cam, ["drift"], None, CalibrationOptions(8), previous=prev)
    assert res.drift.recalibrate is False, res.drift.reasons
    # the same rig id with another mismatch (an SLM knocked out of place, refocused optics)
    changed = load_rig_config(small_rig_yaml(tmp_path, 23))
    with rig_devices(changed) as (slm, cam):
        res = run_calibration(
            changed, slm, cam, ["drift"], None, CalibrationOptions(8), previous=prev
        )
    assert res.drift.recalibrate is True and res.drift.reasons
    assert "recalibrate: yes" in res.drift.summary()


def test_steps_resolution_and_errors():
    from dmicro_hw.calibration.sequence import resolve_steps

    steps, notes = resolve_steps(["fit", "lut"], have_previous=False, have_checkpoint=False)
    assert steps == ["registration", "lut", "fit"] and notes
    steps, notes = resolve_steps(["lut"], have_previous=True, have_checkpoint=False)
    assert steps == ["lut"] and not notes
    with pytest.raises(ConfigError, match="unknown step 'focus'"):
        resolve_steps(["focus"], False, False)
    with pytest.raises(ConfigError, match="needs a trained checkpoint"):
        resolve_steps(["adapt"], True, False)
    with pytest.raises(ConfigError, match="drift: needs a calibration bundle"):
        resolve_steps(["drift"], False, False)


def test_an_adapted_checkpoint_is_not_adapted_twice(tmp_path):
    """The shipped sim rig's decoder is calibration-adapted (its filter pre-compensates that
    bench's aberrations): adapting it again would compensate twice, so it is refused, while
    the trained checkpoint beside it is accepted as the source."""
    from dmicro_hw.calibration.adapt import adapt_checkpoint, is_adapted

    rig = load_rig_config(ROOT / "configs" / "sim-rig.yaml")
    bundle = load_bundle(rig.calibration, rig)
    assert is_adapted(rig.checkpoint)
    with pytest.raises(CheckpointError, match="already adapted to a calibration"):
        adapt_checkpoint(rig.checkpoint, rig, bundle, tmp_path / "again.pt", steps=1)
    assert not (tmp_path / "again.pt").exists()
    assert not is_adapted(ROOT / "configs" / "assets" / "sim-rig.pt")


def test_bench_calibration_cli_scores_recovery_and_writes_json(tmp_path, monkeypatch):
    """`dmicro bench calibration --no-psnr` on the small rig: one row per seed, scored against
    the hidden truth, targets met, JSON written; a non-sim rig is refused in one line."""
    from dmicro_hw.cli import _run, app

    monkeypatch.chdir(tmp_path)
    cfg = small_rig_yaml(tmp_path, TEST_SEEDS[1])
    argv = ["bench", "calibration", "-c", str(cfg), "--seeds", str(TEST_SEEDS[1]),
            "--no-psnr", "--frames", "4", "--out", "bc"]  # fmt: skip
    assert _run(app, argv) == 0
    res = json.loads((tmp_path / "bc" / "bench_calibration.json").read_text())
    level = res["levels"]["none"]
    assert res["seeds"] == [TEST_SEEDS[1]] and level["all_recovery_targets_met"] is True
    (row,) = level["rows"]
    assert set(row["meets"]) == set(S.TARGETS) and "psnr_after" not in row
    assert row["errors"]["dc_err_px"] < S.TARGETS["dc_err_px"]
    assert row["diagnostics"]["chi2_dof"] == row["chi2_dof"]
    real = yaml.safe_load(cfg.read_text())
    real["camera"] = {"backend": "genicam"}
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(real))
    argv = ["bench", "calibration", "-c", "real.yaml", "--no-psnr", "--out", "bc2"]
    assert _run(app, argv) == ConfigError.exit_code
