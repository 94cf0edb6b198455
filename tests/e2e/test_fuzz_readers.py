"""Hypothesis fuzzing of everything that reads user files (issue 12): the config loader, the run
store reader and ``dmicro verify``, the pattern loader and the calibration bundle readers. No
input may produce anything but the reader's own one-line error (no traceback, no hang).
Example counts are small to keep CI fast; the strategies aim at the structure each reader
expects (near misses find more than random bytes)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmicro_hw.errors import CheckpointError, ConfigError, DataError

FUZZ = settings(
    # DMICRO_FUZZ_EXAMPLES=2000 for a long local run; CI keeps it short
    max_examples=int(os.environ.get("DMICRO_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
KEYS = st.sampled_from(
    [
        "optics",
        "sensor",
        "camera",
        "bench",
        "acquisition",
        "field_size",
        "compression",
        "photons_per_pixel",
        "phase_max_rad",
        "frames",
        "duration_s",
        "backend",
        "out",
        "checkpoint",
        "pixels",
        "faults",
        "wavelength_m",
        "rig_id",
    ]
)
trees = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(KEYS | st.text(max_size=6), kids, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(tree=st.dictionaries(KEYS, trees, max_size=6))
def test_config_loader_structured(tree):
    from dmicro_hw.config import load_rig_config

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "rig.yaml"
        p.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
        try:
            load_rig_config(p)
        except ConfigError as e:
            assert "\n" not in str(e).strip() or str(e).startswith(str(p))


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_config_loader_raw_text(text):
    from dmicro_hw.config import load_rig_config, load_train_config

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.yaml"
        p.write_text(text, encoding="utf-8", errors="surrogateescape")
        for load in (load_rig_config, load_train_config):
            try:
                load(p)
            except ConfigError:
                pass


# ------------------------------------------------------------------------------ run store
@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from dmicro_hw.acquisition.writer import RunWriter

    d = tmp_path_factory.mktemp("store") / "run.zarr"
    w = RunWriter(d, frame_shape=(4, 4), dtype="uint16", chunk_frames=4, phase_size=8)
    rng = np.random.default_rng(0)
    n = 20
    w.append(
        rng.integers(0, 4096, (n, 4, 4), dtype=np.uint16),
        {
            "frame_id": np.arange(n),
            "device_time": np.arange(n) * 1000,
            "host_time": np.full(n, 1.7e9),
            "exposure_s": np.full(n, 1e-3),
            "pattern_index": np.zeros(n, np.int32),
        },
    )
    w.append_phase(rng.random((n, 8, 8), dtype=np.float32), np.ones(n, np.uint8))
    w.finalize()
    return d


@FUZZ
@given(
    pick=st.integers(0, 10**6),
    op=st.sampled_from(["flip", "truncate", "delete", "replace", "json"]),
    where=st.integers(0, 10**6),
    junk=st.binary(min_size=0, max_size=64),
)
def test_store_reader_and_verify_never_crash(small_store, pick, op, where, junk):
    from dmicro_hw.acquisition.store import RunReader
    from dmicro_hw.commands.verify import verify_store

    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "run.zarr"
        shutil.copytree(small_store, store)
        files = sorted(p for p in store.rglob("*") if p.is_file())
        f = files[pick % len(files)]
        data = bytearray(f.read_bytes())
        if op == "flip" and data:
            data[where % len(data)] ^= 0xFF
            f.write_bytes(bytes(data))
        elif op == "truncate":
            f.write_bytes(bytes(data[: where % (len(data) + 1)]))
        elif op == "delete":
            f.unlink()
        elif op == "replace":
            f.write_bytes(junk)
        else:
            f.write_text(json.dumps({"zarr_format": 3, "node_type": "array", "shape": [-1]}))
        try:
            rep = verify_store(store)
            r = RunReader(store)
            if rep["ok"]:
                assert len(r.raw_frames()) == r.committed
                r.records()
        except DataError:
            pass


# ------------------------------------------------------------------------------ pattern / bundle
@pytest.fixture(scope="module")
def pattern_dir(tmp_path_factory):
    from dmicro_hw.export import sha256_file, sha256_pattern

    d = tmp_path_factory.mktemp("pattern")
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.save(d / "pattern.npy", grey, allow_pickle=False)
    side = {
        "format": "dmicro-hw-slm-pattern",
        "format_version": 1,
        "files": {"npy": "pattern.npy"},
        "sha256": {"npy": sha256_file(d / "pattern.npy"), "pattern": sha256_pattern(grey)},
        "shape": [8, 8],
        "dtype": "uint8",
        "bit_depth": 8,
        "wavelength_m": 6.328e-7,
    }
    from dmicro_hw import export

    side["format"] = export.PATTERN_FORMAT
    side["format_version"] = export.PATTERN_FORMAT_VERSION
    (d / "pattern.json").write_text(json.dumps(side))
    export.load_pattern(d)  # the unfuzzed pattern loads
    return d


@FUZZ
@given(key=st.sampled_from(["files", "sha256", "shape", "dtype", "bit_depth", "format"]), v=trees)
def test_pattern_loader_never_crashes(pattern_dir, key, v):
    from dmicro_hw.export import load_pattern

    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "p"
        shutil.copytree(pattern_dir, dst)
        side = json.loads((dst / "pattern.json").read_text())
        side[key] = v
        (dst / "pattern.json").write_text(json.dumps(side))
        try:
            load_pattern(dst)
        except CheckpointError:
            pass


@FUZZ
@given(npy=st.binary(max_size=200))
def test_pattern_npy_bytes_never_crash(pattern_dir, npy):
    from dmicro_hw.export import load_pattern, sha256_file

    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "p"
        shutil.copytree(pattern_dir, dst)
        (dst / "pattern.npy").write_bytes(b"\x93NUMPY" + npy)
        side = json.loads((dst / "pattern.json").read_text())
        side["sha256"]["npy"] = sha256_file(dst / "pattern.npy")  # hashes match: parse it
        (dst / "pattern.json").write_text(json.dumps(side))
        try:
            load_pattern(dst)
        except CheckpointError:
            pass


BUNDLE = Path(__file__).resolve().parents[2] / "configs" / "assets" / "sim-rig-calibration"


@FUZZ
@given(
    section=st.sampled_from(["mismatch", "slm", "parameters", "camera", "rig_id", "wavelength_m"]),
    key=st.text(max_size=20) | st.sampled_from(["camera_gain", "lut_gamma", "zernike_rad"]),
    v=trees,
)
def test_bundle_readers_never_crash(section, key, v):
    from dmicro_hw.calibration.bundle import load_bundle
    from dmicro_hw.config import RigConfig
    from dmicro_hw.export import load_slm_calibration

    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "b"
        dst.mkdir()
        data = json.loads((BUNDLE / "calibration.json").read_text())
        if isinstance(data.get(section), dict):
            data[section][key] = v
        else:
            data[section] = v
        (dst / "calibration.json").write_text(json.dumps(data))
        for read in (load_bundle, load_slm_calibration):
            try:
                read(dst)
            except CheckpointError:
                pass
        try:
            load_bundle(dst, RigConfig())
        except CheckpointError:
            pass
