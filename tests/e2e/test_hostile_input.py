"""Hostile and careless input (issue 12): every case is one clear line, a non-zero exit, nothing
run and nothing lost — checked through the real CLI in a subprocess where it matters.

Cases: non-finite numbers in every config model and on the command line, a YAML alias bomb, a
config path that is a folder, --out that is a file / under a file / in /proc / read-only, a
symlink planted where run.json goes, two processes racing for one --out, a pattern of the wrong
dtype or range, a calibration bundle with NaN parameters (drift check), a .cti whose constructor
must never run, disk full during a run (real tmpfs where the machine allows mounting it, else a
failing write), device-side loss counters and saturated frames in the run accounting.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pytest

from dmicro_hw import config as cfgmod
from dmicro_hw.acquisition.store import RunReader
from dmicro_hw.errors import CheckpointError, ConfigError, DeviceError
from tests.acquisition.test_acquisition_cli import acquire_cmd, assets, env, rig_for  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
RIG = "configs/sim-rig.yaml"


def run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, env=env(), timeout=timeout, cwd=str(ROOT)
    )


def dmicro(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-c", "from dmicro_hw.cli import main; main()", *args], timeout)


def one_line(p) -> str:
    err = p.stderr.strip()
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------ config numbers
def _float_fields(model: type) -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        union = typing.get_origin(ann) in (typing.Union, types.UnionType)
        if ann is float or (union and float in typing.get_args(ann)):
            out.append(name)
    return out


MODELS = [
    m
    for m in vars(cfgmod).values()
    if isinstance(m, type) and issubclass(m, cfgmod.StrictModel) and m is not cfgmod.StrictModel
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_float_of_every_config_model_refuses_nan_and_inf(model):
    fields = _float_fields(model)
    for name in fields:
        for bad in (math.inf, -math.inf, math.nan):
            with pytest.raises(ConfigError, match=rf"{name}: Input should be a finite number"):
                cfgmod.validate(model, {name: bad}, "x.yaml")


@pytest.mark.parametrize(
    "key,section",
    [
        ("photons_per_pixel", "sensor"),
        ("phase_max_rad", "bench"),
        ("flow_px_per_frame", "bench"),
    ],
)
def test_non_finite_yaml_values_are_refused_by_the_cli(assets, tmp_path, key, section, cli):  # noqa: F811
    rig = rig_for(assets, tmp_path)
    text = rig.read_text() + "\n# hostile\n"
    import yaml

    d = yaml.safe_load(text)
    d.setdefault(section, {})[key] = float("inf")
    rig.write_text(yaml.safe_dump(d).replace(".inf", ".inf"))
    p = cli("acquire", "--config", rig, "-n", "4", "-o", tmp_path / "o")
    assert p.returncode == 2
    assert f"{section}.{key}: Input should be a finite number" in one_line(p)
    assert not (tmp_path / "o").exists()


def test_duration_inf_and_alias_bomb_and_config_folder(assets, tmp_path, cli):  # noqa: F811
    rig = rig_for(assets, tmp_path)
    p = cli("acquire", "--config", rig, "--duration", "inf")
    assert p.returncode == 2 and "--duration must be a finite number" in one_line(p)
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    bomb.write_text("\n".join(lines) + "\n")
    p = run_cli(acquire_cmd("--config", str(bomb)), timeout=30)
    assert p.returncode == 2 and "expanding YAML aliases" in one_line(p)
    p = cli("acquire", "--config", tmp_path)
    assert p.returncode == 2 and "is a folder, not a config file" in one_line(p)


# ------------------------------------------------------------------------------ output paths
def test_out_that_cannot_be_written_is_refused_before_anything_runs(assets, tmp_path, cli):  # noqa: F811
    rig = rig_for(assets, tmp_path)
    f = tmp_path / "a-file"
    f.write_text("precious")
    for out, words in (
        (f, "exists and is not a folder"),
        (f / "sub", "is not a folder"),
        (Path("/proc/dmicro-run"), "cannot create folder"),
    ):
        p = cli("acquire", "--config", rig, "-n", "4", "--no-recon", "-o", out)
        assert p.returncode == 2, p.stderr
        assert words in p.stderr.strip().splitlines()[-1] and "Traceback" not in p.stderr
    assert f.read_text() == "precious"


def _try_mount_tmpfs(path: Path, size: str, ro: bool = False) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    )
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_out_on_a_read_only_file_system(tmp_path, assets, cli):  # noqa: F811
    mnt = tmp_path / "ro"
    if not _try_mount_tmpfs(mnt, "1m", ro=True):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        rig = rig_for(assets, tmp_path)
        p = cli("acquire", "--config", rig, "-n", "4", "-o", mnt / "run")
        assert p.returncode == 2 and "read-only file system" in one_line(p)
    finally:
        _umount(mnt)


def test_run_json_never_follows_a_planted_symlink(assets, tmp_path, cli):  # noqa: F811
    rig = rig_for(assets, tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "run.json").symlink_to(victim)
    (out / "run.json.tmp").symlink_to(victim)
    p = cli("acquire", "--config", rig, "-n", "8", "--no-recon", "-o", out)
    assert p.returncode == 0, p.stderr
    assert victim.read_text() == "precious"
    assert not (out / "run.json").is_symlink()
    assert json.loads((out / "run.json").read_text())["frames_written"] == 8


def test_two_sessions_racing_for_one_out(assets, tmp_path):  # noqa: F811
    from dmicro_hw.acquisition.session import Session
    from dmicro_hw.config import load_rig_config

    rig = load_rig_config(rig_for(assets, tmp_path))
    out = tmp_path / "shared"
    a = Session(rig, frames=4, out=out, recon=False)
    b = Session(rig, frames=4, out=out, recon=False)  # both passed the "exists?" check
    a._claim_output()
    with pytest.raises(ConfigError, match="already holds a run .run.zarr; another process"):
        b._claim_output()
    with a:
        pass
    assert not out.exists()  # nothing recorded: the claimed, empty folders are removed


# ------------------------------------------------------------------------------ assets
def _forge_pattern(src: Path, dst: Path, grey: np.ndarray) -> Path:
    from dmicro_hw.export import sha256_file, sha256_pattern

    shutil.copytree(src, dst)
    side = json.loads((dst / "pattern.json").read_text())
    np.save(dst / side["files"]["npy"], grey, allow_pickle=False)
    (dst / side["files"]["png"]).unlink(missing_ok=True)
    side["files"].pop("png", None)
    side["sha256"]["npy"] = sha256_file(dst / side["files"]["npy"])
    side["sha256"]["pattern"] = sha256_pattern(grey)
    side["dtype"], side["shape"] = str(grey.dtype), list(grey.shape)
    (dst / "pattern.json").write_text(json.dumps(side))
    return dst


def test_patterns_of_wrong_dtype_or_range_are_refused_naming_the_file(assets, tmp_path, cli):  # noqa: F811
    from dmicro_hw.config import load_rig_config
    from dmicro_hw.export import load_pattern

    good = load_pattern(assets / "pattern")
    rig = load_rig_config(rig_for(assets, tmp_path))
    nan = good.grey.astype(np.float32)
    nan[0, 0] = np.nan
    too_high = good.grey.astype(np.uint16)
    too_high[0, 0] = 4000  # the test SLM is 8-bit
    for i, (grey, words) in enumerate(((nan, "uint8/uint16 array"), (too_high, "grey level 4000"))):
        d = _forge_pattern(assets / "pattern", tmp_path / f"bad{i}", grey)
        with pytest.raises(CheckpointError, match=words) as e:
            load_pattern(d, rig)
        assert str(d) in str(e.value)
    # through the CLI: one line naming the file, before any device opens, no run folder left
    rig_p = rig_for(assets, tmp_path, name="bad.yaml")
    rig_p.write_text(rig_p.read_text().replace(str(assets / "pattern"), str(tmp_path / "bad0")))
    out = tmp_path / "never"
    p = cli("acquire", "--config", rig_p, "-n", "4", "-o", out)
    assert p.returncode == 4 and str(tmp_path / "bad0") in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


def test_drift_check_on_a_bundle_with_nan_parameters_says_recalibrate(tmp_path, cli):
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "configs" / "assets" / "sim-rig-calibration", bundle)
    cal = bundle / "calibration.json"
    d = json.loads(cal.read_text())
    d["mismatch"]["camera_gain"] = float("nan")
    cal.write_text(json.dumps(d))  # Python writes the JSON extension NaN
    p = cli("calibrate", "-c", ROOT / RIG, "--steps", "drift", "--bundle", bundle)
    assert p.returncode == 4 and "recalibrate" in one_line(p) and "NaN" in p.stderr
    d["mismatch"]["camera_gain"] = "fast"  # a wrongly typed field
    cal.write_text(json.dumps(d))
    from dmicro_hw.calibration.bundle import load_bundle

    with pytest.raises(CheckpointError, match="mismatch.camera_gain must be a finite number"):
        load_bundle(bundle)


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
def test_cti_is_inspected_without_running_it(tmp_path):
    from dmicro_hw.drivers.genicam_camera import check_producer

    marker = tmp_path / "constructor-ran"
    src = tmp_path / "evil.c"
    src.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void boom(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
        "int not_gentl(void) { return 1; }\n"
    )
    lib = tmp_path / "evil.cti"
    r = subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cc failed: {r.stderr[:200]!r}")
    with pytest.raises(DeviceError, match="is not a GenTL producer .no GCInitLib"):
        check_producer(lib)
    assert not marker.exists(), "the rejected library's constructor ran"
    # truncated and foreign files are one line too
    (tmp_path / "cut.cti").write_bytes(lib.read_bytes()[:200])
    with pytest.raises(DeviceError, match="not a loadable GenTL producer"):
        check_producer(tmp_path / "cut.cti")
    (tmp_path / "win.cti").write_bytes(b"MZ" + b"\0" * 100)
    with pytest.raises(DeviceError, match="Windows DLL"):
        check_producer(tmp_path / "win.cti")


# ------------------------------------------------------------------------------ accounting
def _check_disk_full_run(out: Path, p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 3, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    # stderr also carries the periodic progress lines (stdout is not a terminal here)
    lines = p.stderr.strip().splitlines()
    assert "No space left on device" in lines[-1] and lines[-1].startswith("error:")
    assert not [x for x in lines[:-1] if x.startswith(("error", "ERROR", "WARNING"))], lines
    run = json.loads((out / "run.json").read_text())  # written from the reserve
    assert run["frames_written"] > 0 and run["errors"]
    assert run["frames_unwritten"] == run["frames_received"] - run["frames_written"]
    r = RunReader(out)
    assert r.committed == run["frames_written"]
    r.raw_frames()  # every committed frame intact (checksums verified)
    r.records()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_disk_full_on_a_real_tmpfs(assets, tmp_path):  # noqa: F811
    mnt = tmp_path / "small"
    if not _try_mount_tmpfs(mnt, "768k"):
        pytest.skip("cannot mount a tmpfs here (needs root); see the failing-write test")
    try:
        rig = rig_for(assets, tmp_path)
        out = mnt / "run"
        p = run_cli(acquire_cmd("--config", str(rig), "-n", "20000", "-o", str(out)), timeout=180)
        _check_disk_full_run(out, p)
        assert dmicro("verify", str(out)).returncode == 0
    finally:
        _umount(mnt)


def test_write_error_mid_run_stops_cleanly(assets, tmp_path, monkeypatch):  # noqa: F811
    """Any write error (here: ENOSPC injected into zarr's local store after 60 writes)."""
    from zarr.storage import LocalStore

    from dmicro_hw.acquisition.session import Session
    from dmicro_hw.config import load_rig_config

    calls = {"n": 0}
    real_set = LocalStore.set

    async def failing_set(self, key, value):
        calls["n"] += 1
        if calls["n"] > 60 and "/c/" in key:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", failing_set)
    rig = load_rig_config(rig_for(assets, tmp_path))
    out = tmp_path / "run"
    with Session(rig, frames=3000, out=out, recon=True, score=False) as s:
        s.prepare()
        s.start().wait()
        summary = s.finish()
    monkeypatch.setattr(LocalStore, "set", real_set)
    assert summary["stop_reason"] == "storage error" and summary["errors"]
    assert 0 < summary["frames_written"] < summary["frames_received"]
    assert summary["frames_unwritten"] == summary["frames_received"] - summary["frames_written"]
    assert json.loads((out / "run.json").read_text())["frames_unwritten"] > 0
    r = RunReader(out)
    assert r.committed == summary["frames_written"] and len(r.raw_frames()) == r.committed


def test_device_loss_counters_and_saturation_are_counted(assets, tmp_path, cli):  # noqa: F811
    cam = (
        "{backend: sim, pixel_format: Mono12, fetch_timeout_s: 2.0, "
        "options: {paced: true, prefill: false, buffer_frames: 2}}"
    )
    rig = rig_for(assets, tmp_path, camera=cam, rate=20000.0)
    text = rig.read_text().replace(
        "frame_rate_hz: 20000.0}", "frame_rate_hz: 20000.0, faults: {saturate_probability: 0.2}}"
    )
    rig.write_text(text)
    out = tmp_path / "run"
    p = cli("acquire", "--config", rig, "-n", "300", "--no-recon", "-o", out)
    assert p.returncode == 0, p.stdout + p.stderr
    run = json.loads((out / "run.json").read_text())
    dev = run["camera_counters"]["lost_buffer_overflow"]
    assert dev > 0 and run["camera_lost_device"] == dev
    assert run["camera_dropped"] == max(dev, run["camera_dropped_gaps"])
    rec = RunReader(out).records()
    full = 16 * 16
    n_sat = int((rec["saturated_px"] == full).sum())
    assert n_sat > 0 and run["frames_saturated"] >= n_sat
    assert "frames with saturated pixels" in p.stdout


def test_export_out_that_is_a_file_and_planted_symlinks(assets, tmp_path, cli):  # noqa: F811
    rig = rig_for(assets, tmp_path)
    f = tmp_path / "a-file"
    f.write_text("precious")
    p = cli("export", assets / "model.pt", "--config", rig, "--out", f)
    assert p.returncode == 2 and "exists and is not a folder" in one_line(p)
    out = tmp_path / "pattern"
    out.mkdir()
    for name in ("pattern.npy", "pattern.png", "pattern.json", "pattern.json.tmp"):
        (out / name).symlink_to(f)
    p = cli("export", assets / "model.pt", "--config", rig, "--out", out)
    assert p.returncode == 0, p.stderr
    assert f.read_text() == "precious"
    assert not any((out / n).is_symlink() for n in ("pattern.npy", "pattern.png", "pattern.json"))


def test_late_frames_are_flagged_per_frame_and_trigger_counters_reported(assets, tmp_path, cli):  # noqa: F811
    rig = rig_for(assets, tmp_path, rate=200.0, trigger="sim", mode="triggered")
    text = rig.read_text().replace(
        "frame_rate_hz: 200.0}",
        "frame_rate_hz: 200.0, faults: {late_probability: 0.15, late_s: 0.2, seed: 3}}",
    )
    rig.write_text(text)
    out = tmp_path / "run"
    p = cli("acquire", "--config", rig, "-n", "60", "--no-recon", "-o", out)
    assert p.returncode == 0, p.stdout + p.stderr
    run = json.loads((out / "run.json").read_text())
    injected = run["camera_counters"]["faults"]["late"]
    delay = RunReader(out).records()["delivery_delay_s"]
    assert injected > 0 and np.isfinite(delay).all() and (delay >= 0).all()
    assert run["frames_late"] == int((delay > 0.05).sum()) >= injected
    assert run["trigger_counters"]["requests"] > 0 and "retries" in run["trigger_counters"]
