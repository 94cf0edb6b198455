"""Known-object validation with beads: the projected-sphere model (pixel-area exact), the seeded
bead generator, the least-squares bead fit (recovers index and radius of exact spheres, honest
uncertainties on noise), the virtual bench's bead sample (``bench.sample: beads``, config checks),
and the real ``dmicro-acquire`` → ``dmicro validate beads`` CLI in subprocesses, with its errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmicro_hw.config import load_rig_config
from dmicro_hw.data.beads import generate_beads, peak_phase_rad, sphere_phase
from dmicro_hw.errors import ConfigError
from dmicro_hw.evaluation.beads import detect_beads, fit_beads, summarize_fits

ROOT = Path(__file__).resolve().parents[2]
LAM, PX = 632.8e-9, 316.4e-9  # the sim rig's wavelength and object-plane pixel
N_MED, N_BEAD = 1.555, 1.59


def sphere_volume_phase(radius_m: float, delta_n: float) -> float:
    """∫ φ dA of a sphere (rad·m²): (2π/λ)·Δn·(4/3)πR³."""
    return 2 * math.pi / LAM * delta_n * 4 / 3 * math.pi * radius_m**3


# --------------------------------------------------------------------------------------------
# sphere model
# --------------------------------------------------------------------------------------------


def test_sphere_phase_is_the_pixel_area_mean_of_the_projected_sphere():
    yy, xx = np.ogrid[0:32, 0:32]
    cy, cx, r, dn = 15.3, 16.71, 2.0e-6, 0.035
    phi = sphere_phase(yy, xx, cy, cx, r, dn, LAM, PX)
    # volume: Σ φ · pixel area equals the sphere's integrated phase
    assert phi.sum() * PX * PX == pytest.approx(sphere_volume_phase(r, dn), rel=2e-4)
    # brute-force area average (128×128 points per pixel)
    b = 128
    off = (np.arange(b) + 0.5) / b - 0.5
    y = (np.arange(32)[:, None] + off).ravel()
    r2 = (y[:, None] - cy) ** 2 + (y[None, :] - cx) ** 2
    thick = 2 * np.sqrt(np.clip((r / PX) ** 2 - r2, 0, None)) * PX
    ref = (2 * math.pi / LAM * dn * thick).reshape(32, b, 32, b).mean(axis=(1, 3))
    assert np.abs(phi - ref).max() < 3e-3 and np.sqrt(((phi - ref) ** 2).mean()) < 2e-4
    # zero outside the sphere, the peak on its axis, sign follows Δn
    far = np.hypot(np.arange(32)[:, None] - cy, np.arange(32)[None, :] - cx) > r / PX + 1
    assert (phi[far] == 0).all()
    centre = sphere_phase(cy, cx, cy, cx, r, dn, LAM, PX, supersample=64)
    # the pixel centred on the axis: peak · mean of sqrt(1 − ρ²) ≈ peak · (1 − ⟨r²⟩/2R²), ⟨r²⟩ = 1/6
    r_px = r / PX
    expect = peak_phase_rad(r, dn, LAM) * (1 - 1 / (12 * r_px**2))
    assert centre == pytest.approx(expect, rel=1e-5)
    np.testing.assert_allclose(sphere_phase(yy, xx, cy, cx, r, -dn, LAM, PX), -phi)


def test_sphere_phase_refuses_nonpositive_lengths():
    with pytest.raises(ValueError, match="radius_m"):
        sphere_phase(0, 0, 0, 0, -1e-6, 0.03, LAM, PX)


# --------------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------------


def beads(n=6, **kw):
    args = dict(
        pixel_size_m=PX,
        wavelength_m=LAM,
        index=N_BEAD,
        medium_index=N_MED,
        radius_m=(1.8e-6, 2.4e-6),
        count=(2, 5),
        margin_px=5,
        seed=3,
    )
    args.update(kw)
    return generate_beads(n, 96, **args)


def test_generator_is_reproducible_per_sample():
    a, pa = beads()
    b, pb = beads()
    np.testing.assert_array_equal(a, b)
    assert pa == pb
    c, pc = beads(n=2, start=4)  # samples 4 and 5 on their own
    np.testing.assert_array_equal(c, a[4:])
    assert pc == pa[4:]
    d, _ = beads(seed=4)
    assert not np.array_equal(d, a)
    e, _ = beads(stream=1)
    assert not np.array_equal(e, a)


def test_generator_beads_disjoint_inside_margin_and_exact():
    gap, margin = 3.0, 5.0
    phase, params = beads(n=8, gap_px=gap, margin_px=margin)
    assert phase.dtype == np.float32 and phase.shape == (8, 96, 96)
    assert sum(len(p) for p in params) >= 16
    yy, xx = np.ogrid[0:96, 0:96]
    for img, ps in zip(phase, params):
        model = np.zeros(img.shape)
        for i, b in enumerate(ps):
            r = b.radius_m / PX
            assert 1.8e-6 <= b.radius_m <= 2.4e-6 and b.index == N_BEAD
            assert b.medium_index == N_MED
            assert min(b.cy, b.cx) - r >= margin - 0.5 - 1e-9
            assert max(b.cy, b.cx) + r <= 96 - 0.5 - margin + 1e-9
            for o in ps[i + 1 :]:
                assert math.hypot(b.cy - o.cy, b.cx - o.cx) >= r + o.radius_m / PX + gap
            model += sphere_phase(yy, xx, b.cy, b.cx, b.radius_m, b.delta_n, LAM, PX)
        np.testing.assert_allclose(img, model, atol=1e-5)  # the field is exactly the beads
        assert img.min() == 0.0 and img.max() <= math.pi


def test_generator_refuses_a_bead_stronger_than_phase_max():
    # peak 4π·3 µm·0.1/632.8 nm = 5.958 rad
    with pytest.raises(ValueError, match=r"= 5\.958 rad exceeds phase_max_rad 3\.142"):
        beads(radius_m=3e-6, index=N_MED + 0.1)
    beads(n=1, radius_m=3e-6, index=N_MED + 0.1, phase_max_rad=2 * math.pi, margin_px=1)
    with pytest.raises(ValueError, match="must differ from medium_index"):
        beads(index=N_MED)
    with pytest.raises(ValueError, match="does not fit"):
        beads(radius_m=14e-6, index=N_MED + 0.005)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def nearest(params, f):
    return min(params, key=lambda b: math.hypot(b.cy - f.cy_px, b.cx - f.cx_px))


def test_fit_recovers_index_and_radius_of_exact_spheres():
    phase, params = beads(n=6, gap_px=2.0)
    fits_all = []
    for img, ps in zip(phase, params):
        fits = fit_beads(img + 0.3, wavelength_m=LAM, pixel_size_m=PX, medium_index=N_MED)
        assert len(fits) == len(ps)  # every bead found, nothing else
        for f in fits:
            b = nearest(ps, f)
            assert f.ok, f.reason
            assert abs(f.index - b.index) < 1e-6
            assert f.radius_m == pytest.approx(b.radius_m, rel=1e-5)
            assert abs(f.cy_px - b.cy) < 1e-3 and abs(f.cx_px - b.cx) < 1e-3
            assert f.offset_rad == pytest.approx(0.3, abs=1e-5)
            assert f.residual_rms_rad < 1e-5
        fits_all += fits
    s = summarize_fits(fits_all, given_index=N_BEAD, given_radius_m=2.1e-6)
    assert s["count"] == len(fits_all) and s["rejected"] == 0
    assert abs(s["index_median"] - N_BEAD) < 1e-6 and s["index_error_median"] < 1e-6
    assert 1.8e-6 < s["radius_median_m"] < 2.4e-6


def test_fit_on_noise_recovers_truth_within_its_uncertainty():
    phase, params = beads(n=10, gap_px=2.0, seed=11)
    rng = np.random.default_rng(0)
    sigma = 0.03  # rad, white
    z, errs = [], []
    for img, ps in zip(phase, params):
        noisy = img + sigma * rng.standard_normal(img.shape)
        fits = fit_beads(noisy, wavelength_m=LAM, pixel_size_m=PX, medium_index=N_MED)
        assert len(fits) == len(ps)
        for f in fits:
            b = nearest(ps, f)
            assert f.ok, f.reason
            errs.append((abs(f.index - b.index), abs(f.radius_m / b.radius_m - 1)))
            z += [(f.index - b.index) / f.index_sigma, (f.radius_m - b.radius_m) / f.radius_sigma_m]
            assert f.residual_rms_rad == pytest.approx(sigma, rel=0.2)
    e = np.array(errs)
    assert e[:, 0].max() < 1.5e-3 and np.median(e[:, 0]) < 3e-4  # index
    assert e[:, 1].max() < 0.01  # radius, relative
    z = np.abs(np.array(z))
    assert len(z) >= 60
    assert np.mean(z < 2) > 0.88 and np.mean(z < 1) > 0.55  # ≈ Gaussian coverage (95 %, 68 %)
    assert z.max() < 4.5


def test_detection_drops_border_and_tiny_objects_and_follows_polarity():
    img = np.zeros((64, 64))
    yy, xx = np.ogrid[0:64, 0:64]
    img += sphere_phase(yy, xx, 32, 32, 2e-6, 0.035, LAM, PX)
    img += sphere_phase(yy, xx, 3, 40, 2e-6, 0.035, LAM, PX)  # cut by the top border
    img[50, 10] = 1.0  # one hot pixel
    _, cands, bg, _ = detect_beads(img)
    assert [(round(c.cy), round(c.cx)) for c in cands] == [(32, 32)]
    assert bg == 0.0
    fits = fit_beads(-img, wavelength_m=LAM, pixel_size_m=PX, medium_index=N_MED, polarity=-1)
    assert len(fits) == 1 and fits[0].ok and fits[0].index == pytest.approx(N_MED - 0.035)
    assert fit_beads(np.zeros((32, 32)), wavelength_m=LAM, pixel_size_m=PX, medium_index=1) == []


# --------------------------------------------------------------------------------------------
# config + virtual bench
# --------------------------------------------------------------------------------------------


def sim_rig(**beads_kw):
    return load_rig_config(
        ROOT / "configs" / "sim-rig.yaml", {"bench": {"sample": "beads", "beads": beads_kw}}
    )


def test_config_refuses_a_bead_stronger_than_phase_max():
    with pytest.raises(ConfigError) as e:
        sim_rig(radius_m=5e-6)
    msg = str(e.value)
    assert "bench.beads" in msg and "3.823 rad" in msg and "bench.phase_max_rad 3.142" in msg
    assert "optics.wavelength_m" in msg and "radius_spread" in msg
    with pytest.raises(ConfigError, match="Δn = 0"):
        sim_rig(index=N_MED)
    with pytest.raises(ConfigError, match="bench.beads.index"):
        sim_rig(index=float("nan"))
    with pytest.raises(ConfigError, match="optics.field_size"):
        sim_rig(radius_m=2e-5, index=1.556)
    with pytest.raises(ConfigError, match="bench.beads.radius_spreadd: unknown key"):
        sim_rig(radius_spreadd=0.1)
    # a negative contrast is allowed; a strong bead section is fine while the sample is cells
    assert sim_rig(index=1.52).bench.beads.delta_n < 0
    load_rig_config(ROOT / "configs" / "sim-rig.yaml", {"bench": {"beads": {"radius_m": 5e-6}}})


def test_bench_bead_sample_frames_and_truth():
    from dmicro_hw.config import bench_bead_margin_px
    from dmicro_hw.simulators.bench import VirtualBench

    rig = sim_rig()
    bench = VirtualBench.from_rig(rig, strip_tiles=4)
    n = rig.optics.field_size
    margin = bench_bead_margin_px(n)
    assert margin > n // 16
    for tile in bench._bead_tiles_truth:  # no bead in the faded tile edges
        assert len(tile) == rig.bench.beads.count
        for b in tile:
            r = b.radius_m / rig.optics.pixel_size_m
            assert b.cx - r >= margin - 0.5 and b.cx + r <= n - 0.5 - margin
    seen = 0
    for fid in (0, 7, 20):
        phase = bench.true_phase(fid)
        truth = bench.true_beads(fid)
        fits = [
            f
            for f in fit_beads(phase, wavelength_m=LAM, pixel_size_m=PX, medium_index=N_MED)
            if f.ok
        ]
        assert len(fits) == len(truth) > 0
        for f in fits:
            b = nearest(truth, f)
            assert abs(f.cx_px - b.cx) < 1e-3 and abs(f.index - N_BEAD) < 1e-6
        seen += len(fits)
        frame = bench.render(fid, np.zeros(bench.slm_shape, np.uint8), noise=True)
        assert frame.shape == bench.frame_shape and np.isfinite(frame).all()
    assert seen >= 4
    assert 0 < bench.true_phase(0).max() <= rig.bench.phase_max_rad


# --------------------------------------------------------------------------------------------
# the real CLI: dmicro-acquire with bench.sample beads → dmicro validate beads
# --------------------------------------------------------------------------------------------


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="160")
    return e


def cli(*args: str, entry: str = "main", timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", f"from dmicro_hw.cli import {entry}; {entry}()", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def bead_rig(tmp_path_factory) -> Path:
    """configs/sim-rig.yaml with bench.sample: beads (asset paths made absolute)."""
    d = tmp_path_factory.mktemp("bead-rig")
    src = ROOT / "configs" / "sim-rig.yaml"
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    for key in ("checkpoint", "calibration", "pattern"):
        data[key] = str((src.parent / data[key]).resolve())
    data["bench"]["sample"] = "beads"
    data["acquisition"]["out"] = str(d / "runs")
    p = d / "beads-rig.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def bead_run(bead_rig) -> Path:
    out = bead_rig.parent / "run"
    p = cli("--config", str(bead_rig), "--frames", "60", "--out", str(out), entry="acquire_main")
    assert p.returncode == 0, p.stdout + p.stderr
    return out


@pytest.mark.slow
def test_cli_validate_beads_on_a_simulated_bead_run(bead_run):
    p = cli("validate", "beads", str(bead_run), "--frames", "24")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "found / expected" in p.stdout and "index: median |error|" in p.stdout
    rep = json.loads((bead_run / "beads.json").read_text())
    assert (bead_run / "beads.png").stat().st_size > 10_000
    par = rep["parameters"]
    assert par["given_index"] == N_BEAD and par["medium_index"] == N_MED
    assert par["wavelength_m"] == LAM and par["from"]["medium_index"].endswith("bench.beads")
    assert rep["kind"] == "run" and rep["images"] == 24
    s, tr, ref = rep["summary"], rep["truth"], rep["reference_true_phase"]
    assert s["count"] > 0 and math.isfinite(s["index_median"]) and s["radius_median_m"] > 0
    assert math.isfinite(s["index_error_median"]) and math.isfinite(s["radius_error_median_rel"])
    assert tr["expected"] > 24 and tr["found"] + tr["lost"] == tr["expected"]
    # the fit itself is exact on the bench's true phase of the same frames (a reference);
    # the decoder's accuracy (s, tr) is reported, not asserted
    assert ref["truth_found"] == ref["truth_expected"] == tr["expected"]
    assert ref["truth_index_error_median"] < 1e-5 and ref["truth_radius_error_median_rel"] < 1e-4
    assert all(len(b) > 10 for b in rep["beads"]) and rep["beads"][0]["source"].startswith("frame")


@pytest.mark.slow
def test_cli_validate_beads_errors_on_runs(bead_rig, tmp_path):
    raw_only = tmp_path / "raw-only"
    p = cli("--config", str(bead_rig), "--frames", "8", "--no-recon", "--out", str(raw_only),
            entry="acquire_main")  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    p = cli("validate", "beads", str(raw_only))
    assert p.returncode == 5 and "no phase in this run" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (raw_only / "beads.json").exists()
    p = cli("validate", "beads", str(tmp_path / "nope"))
    assert p.returncode == 5 and "nope: not found" in p.stderr


def test_cli_validate_beads_on_a_folder_of_phase_maps(tmp_path):
    phase, params = beads(n=3, gap_px=2.0, seed=5)
    rng = np.random.default_rng(1)
    maps = tmp_path / "maps"
    maps.mkdir()
    for i, img in enumerate(phase):
        np.save(maps / f"beads{i}.npy", img + 0.01 * rng.standard_normal(img.shape))
    # wavelength/pixel from a rig config, medium and bead index from flags
    out = tmp_path / "report"
    p = cli(
        "validate", "beads", str(maps), "--config", str(ROOT / "configs" / "sim-rig.yaml"),
        "--medium-index", str(N_MED), "--index", str(N_BEAD), "--out", str(out),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads((out / "beads.json").read_text())
    assert rep["kind"] == "folder" and rep["images"] == 3 and rep["truth"] is None
    assert rep["summary"]["count"] == sum(len(ps) for ps in params)
    assert rep["summary"]["index_error_median"] < 2e-4
    assert rep["parameters"]["from"]["pixel_size_m"].endswith("optics.pixel_size_m")
    assert (out / "beads.png").is_file()

    # bad inputs: one line each, exit ≠ 0
    empty = tmp_path / "empty"
    empty.mkdir()
    flat = tmp_path / "flat"
    flat.mkdir()
    np.save(flat / "flat.npy", 0.01 * rng.standard_normal((64, 64)))
    flags = ["--wavelength-m", str(LAM), "--pixel-size-m", str(PX), "--medium-index", "1.555"]
    cases = [
        ([str(tmp_path / "missing")], 5, "missing: not found"),
        ([str(empty), *flags], 5, "no data files"),
        ([str(flat), *flags], 5, "no beads found in 1 phase maps"),
        ([str(maps), "--wavelength-m", str(LAM)], 2, "--pixel-size-m, --medium-index unknown"),
        ([str(maps), *flags, "--wavelength-m", "-1"], 2, "--wavelength-m must be finite and > 0"),
    ]
    for args, rc, msg in cases:
        p = cli("validate", "beads", *args, "--out", str(tmp_path / "bad"))
        assert p.returncode == rc and msg in p.stderr, (args, p.returncode, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "bad").exists()
