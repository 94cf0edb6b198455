"""Export path, step by step: resample/place, encode, wrap, inverse LUT, quantise, realise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dmicro_hw.config import OpticsConfig, RigConfig, SLMDeviceConfig, SLMModelConfig, TrainConfig
from dmicro_hw.errors import CheckpointError, ConfigError
from dmicro_hw.export import (
    SLMCalibration,
    SLMExporter,
    check_calibration_for_rig,
    checkerboard,
    encode_phase_only,
    export_filter,
    export_in_the_loop,
    filter_correlation,
    inverse_lut,
    load_slm_calibration,
    lut_table,
    pattern_array,
    quantise,
    resample_to_slm,
    seam_phase_offset,
    slm_pixel_coords,
    training_filter_transform,
    wrap_phase,
)
from dmicro_hw.optics.fourier4f import LFFEncoder, pupil_mask
from dmicro_hw.optics.slm import PhaseResponse, SLMGeometry, SLMModel, gaussian_blur

TWO_PI = 2 * math.pi
# 32-sample field, ≈2.3 SLM pixels per filter sample on a 112×120 SLM (non-integer on purpose).
OPTICS = OpticsConfig(field_size=32, compression=16, focal_length_m=0.0117)
SLM = SLMModelConfig(pixels=(112, 120), pitch_m=8e-6, bit_depth=8, fill_factor=1.0)
CAL = SLMCalibration(offset_px=(2.3, -1.6), rotation_rad=0.03, scale=1.01)


def smooth_filter(n: int, seed: int, amplitude: bool = True, corr: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    phase = gaussian_blur(torch.randn(n, n, generator=g), corr) * 4 * corr
    amp = torch.ones(n, n)
    if amplitude:
        amp = torch.sigmoid(gaussian_blur(torch.randn(n, n, generator=g), corr) * 3 * corr)
    return torch.polar(amp, phase) * pupil_mask(n)


# ------------------------------------------------------------------ 1. resample and place
def test_slm_pixel_coords_are_the_inverse_placement():
    geom = SLMGeometry.from_configs(OPTICS, SLM, **CAL.placement())
    coords = slm_pixel_coords(geom)
    assert coords.shape == (112, 120, 2) and coords.dtype == torch.float64
    # mapping back lands on the pixel centres
    rc = geom.filter_to_slm(coords)
    rr, cc = torch.meshgrid(torch.arange(112.0), torch.arange(120.0), indexing="ij")
    assert torch.allclose(rc, torch.stack([rr, cc], -1).double(), atol=1e-9)
    # a window is the same map on a sub-range
    win = slm_pixel_coords(geom, rows=(10, 20), cols=(30, 45))
    assert torch.allclose(win, coords[10:20, 30:45])
    # nominal placement: the SLM centre pixel sees the DC sample, one sample = ratio pixels
    nominal = slm_pixel_coords(SLMGeometry.from_configs(OPTICS, SLM))
    assert torch.allclose(nominal[56, 60], torch.tensor([16.0, 16.0], dtype=torch.float64))
    ratio = OPTICS.fourier_pitch_m / SLM.pitch_m
    assert float(nominal[56, 61, 1] - nominal[56, 60, 1]) == pytest.approx(1 / ratio)


def test_resample_nearest_bilinear_and_outside():
    h = smooth_filter(32, 0)
    ij = torch.tensor([[[16.0, 16.0], [3.4, 7.6], [20.5, 9.0], [-3.0, 5.0]]], dtype=torch.float64)
    near = resample_to_slm(h, ij, "nearest")[0]
    assert near.dtype == torch.complex64
    assert torch.allclose(near[0], h[16, 16]) and torch.allclose(near[1], h[3, 8])
    assert float(near[3].abs()) == 0.0  # outside the filter grid: nothing
    bil = resample_to_slm(h, ij, "bilinear")[0]
    assert torch.allclose(bil[2], 0.5 * (h[20, 9] + h[21, 9]), atol=1e-6)
    with pytest.raises(ValueError, match="sampling"):
        resample_to_slm(h, ij, "cubic")


# ------------------------------------------------------------------ 2. amplitude encoding
def test_encode_phase_mode_keeps_arg_and_handles_zero():
    z = torch.tensor([[2.0 * np.exp(1j * 0.7), 0.0, -1.0]], dtype=torch.complex64)
    phase = encode_phase_only(z, "phase")
    assert phase[0, 0] == pytest.approx(0.7, abs=1e-6)
    assert float(phase[0, 1]) == 0.0
    assert abs(float(phase[0, 2])) == pytest.approx(math.pi, abs=1e-6)


def test_double_phase_pairs_average_to_the_complex_target():
    z = torch.polar(torch.rand(6, 8) * 0.999, torch.rand(6, 8) * 6 - 3)
    zz = z.repeat_interleave(2, dim=1)  # each value on two neighbouring pixels
    phase = encode_phase_only(zz, "amplitude_phase")
    pair_mean = torch.polar(torch.ones_like(phase), phase).reshape(6, 8, 2).mean(-1)
    assert torch.allclose(pair_mean, z, atol=1e-5)
    # the sign follows absolute SLM pixel parity, so windows agree with the full pattern
    full = encode_phase_only(zz, "amplitude_phase", origin=(0, 0))
    win = encode_phase_only(zz[1:, 3:], "amplitude_phase", origin=(1, 3))
    assert torch.allclose(full[1:, 3:], win)
    assert checkerboard((2, 2)).tolist() == [[1.0, -1.0], [-1.0, 1.0]]
    with pytest.raises(ValueError, match="mode"):
        encode_phase_only(zz, "amplitude")


# ------------------------------------------------------------------ 3. wrap
def test_wrap_phase_range_identity_and_gradient():
    x = torch.tensor([-7.0, -1e-9, 0.0, 3.0, TWO_PI, 20.0], dtype=torch.float32, requires_grad=True)
    w = wrap_phase(x)
    assert float(w.detach().min()) >= 0 and float(w.detach().max()) < TWO_PI
    assert torch.allclose(torch.polar(torch.ones(6), w), torch.polar(torch.ones(6), x), atol=1e-5)
    w.sum().backward()
    assert torch.allclose(x.grad, torch.ones(6))


# ------------------------------------------------------------------ 4. inverse LUT
def test_inverse_lut_linear_gamma_and_short_range():
    table = torch.as_tensor(lut_table(SLM))  # linear, 256 levels over 2π
    phi = torch.tensor([0.0, math.pi, 1.0, TWO_PI - 0.02, TWO_PI - 1e-3], dtype=torch.float64)
    g = inverse_lut(phi, table)
    assert g[0] == 0 and g[1] == pytest.approx(128.0, abs=1e-4)
    assert g[2] == pytest.approx(256 / TWO_PI, abs=1e-4)
    # beyond the last level (2π·255/256) the cyclically nearer end is taken: 255, or 0 (≡ 2π)
    assert g[3] == 255 and g[4] == 0
    # gamma response: φ(g(φ)) = φ
    resp = PhaseResponse(8, gamma=1.7)
    gt = resp.as_table().double()
    phi = torch.linspace(0.01, float(gt[-1]) - 0.01, 50, dtype=torch.float64)
    assert torch.allclose(resp(inverse_lut(phi, gt)).double(), phi, atol=1e-4)
    # 1.8π SLM: a phase in the gap goes to the cyclically nearer end
    short = torch.as_tensor(lut_table(SLM.model_copy(update={"phase_range_rad": 1.8 * math.pi})))
    gap = torch.tensor([1.82 * math.pi, 1.98 * math.pi], dtype=torch.float64)
    assert inverse_lut(gap, short).tolist() == [255.0, 0.0]


def test_inverse_lut_uses_the_table_relative_to_its_first_entry_and_has_gradient():
    table = torch.linspace(0.4, 0.4 + TWO_PI * 255 / 256, 256, dtype=torch.float64)
    phi = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    g = inverse_lut(phi, table)
    assert g.tolist() == pytest.approx([0.5 * 256 / TWO_PI, 2.0 * 256 / TWO_PI], abs=1e-3)
    g.sum().backward()
    assert torch.allclose(phi.grad, torch.full((2,), 256 / TWO_PI, dtype=torch.float64))


def test_lut_table_validation(tmp_path):
    noisy = np.linspace(0, TWO_PI, 256) + np.random.default_rng(0).normal(0, 0.005, 256)
    fixed = lut_table(SLM, SLMCalibration(lut_table=noisy))
    assert np.all(np.diff(fixed) >= 0)
    with pytest.raises(CheckpointError, match="256"):
        lut_table(SLM, SLMCalibration(lut_table=np.zeros(10)))
    with pytest.raises(CheckpointError, match="increase"):
        lut_table(SLM, SLMCalibration(lut_table=np.linspace(6, 0, 256)))
    bad = tmp_path / "lut.npy"
    np.save(bad, np.linspace(0, 6, 100))
    with pytest.raises(ConfigError, match="slm.lut"):
        lut_table(SLM.model_copy(update={"lut": bad}))


# ------------------------------------------------------------------ 5. quantise
def test_quantise_rounds_clamps_and_passes_gradient_straight_through():
    g = torch.tensor([-3.0, 0.4, 0.6, 62.5, 100.0], requires_grad=True)
    q = quantise(g, 6)
    assert q.tolist() == [0.0, 0.0, 1.0, 62.0, 63.0]  # round half to even, clamped to 2^6 − 1
    q.sum().backward()
    assert g.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert pattern_array(torch.tensor([[3.0, 255.0]]), 8).dtype == np.uint8
    deep = pattern_array(torch.tensor([[3.0, 4095.0, 5000.0]]), 12)
    assert deep.dtype == np.uint16 and deep.tolist() == [[3, 4095, 4095]]


# ------------------------------------------------------------------ whole path + realisation
@pytest.mark.parametrize("mode", ["phase", "amplitude_phase"])
def test_realised_filter_of_the_export_matches_with_the_independent_slm_model(mode):
    """Export with a calibrated placement, realise with a separately built SLMModel."""
    h = smooth_filter(32, 1, amplitude=(mode == "amplitude_phase"))
    rig = RigConfig(optics=OPTICS, slm=SLMDeviceConfig(**SLM.model_dump()))
    grey, realised, meta = export_filter(h, rig, CAL, mode=mode)
    assert grey.shape == (112, 120) and grey.dtype == np.uint8
    geom = SLMGeometry.from_configs(OPTICS, SLM, **CAL.placement())
    model = SLMModel(OPTICS, SLM, geom, PhaseResponse(8))
    pupil = pupil_mask(32)
    independent = model(torch.from_numpy(grey.astype(np.float32))) * pupil
    assert filter_correlation(independent, realised, pupil) > 0.9999
    assert filter_correlation(independent, h, pupil) > 0.99
    assert meta["quality"]["filter_correlation"] > 0.99
    assert meta["quality"]["coverage"] == 1.0


def test_window_in_the_loop_equals_full_export_and_is_differentiable():
    h = smooth_filter(32, 2)
    full = SLMExporter(OPTICS, SLM, CAL, mode="amplitude_phase")
    win = SLMExporter(OPTICS, SLM, CAL, mode="amplitude_phase", window=True)
    assert win.shape[0] < 112 and win.shape[1] < 120
    p_full = full.pattern(h)
    p_win = win.pattern(h)
    assert torch.equal(p_full[win.rows[0] : win.rows[1], win.cols[0] : win.cols[1]], p_win)
    assert torch.allclose(full(h), win(h), atol=1e-5)
    hp = h.clone().requires_grad_(True)
    out = export_in_the_loop(hp, win)
    (out - h).abs().square().sum().backward()
    assert torch.isfinite(hp.grad).all() and float(hp.grad.abs().sum()) > 0


def test_nearest_with_double_phase_beats_the_alternatives_numerically():
    """The documented choice: nearest resampling + checkerboard, measured through SLMModel."""
    h = smooth_filter(32, 3, corr=1.0)
    pupil = pupil_mask(32)
    scores = {
        s: filter_correlation(SLMExporter(OPTICS, SLM, CAL, "amplitude_phase", s)(h), h, pupil)
        for s in ("nearest", "bilinear")
    }
    assert scores["nearest"] > 0.985 and scores["nearest"] > scores["bilinear"] + 0.004
    dropped = filter_correlation(SLMExporter(OPTICS, SLM, CAL, "phase")(h), h, pupil)
    assert scores["nearest"] > dropped  # encoding the amplitude helps an amplitude filter


def test_training_transform_plugs_into_the_lff_encoder_and_keeps_checkpoints_clean():
    cfg = TrainConfig(optics=OPTICS, slm=SLM)
    enc = LFFEncoder(OPTICS, filter_transform=training_filter_transform(cfg))
    assert set(enc.state_dict()) == set(LFFEncoder(OPTICS).state_dict())
    frame = enc(torch.rand(1, 32, 32))
    frame.mean().backward()
    assert enc.filter.phase.grad is not None and float(enc.filter.phase.grad.abs().sum()) > 0
    with pytest.raises(ConfigError, match="slm"):
        training_filter_transform(TrainConfig(optics=OPTICS))


# ------------------------------------------------------------------ calibration bundle
def test_load_slm_calibration_section_lut_and_mismatch_fallback(tmp_path):
    b = tmp_path / "cal"
    b.mkdir()
    (b / "calibration.json").write_text(
        json.dumps(
            {
                "rig_id": "bench-A",
                "wavelength_m": 632.8e-9,
                "slm": {"offset_px": [1.5, -2], "rotation_rad": 0.01, "scale": 1.02},
                "other": {"ignored": True},
            }
        )
    )
    np.save(b / "lut.npy", np.linspace(0, 6.2, 256))
    cal = load_slm_calibration(b)
    assert cal.offset_px == (1.5, -2.0) and cal.rotation_rad == 0.01 and cal.scale == 1.02
    assert cal.lut_table.shape == (256,) and cal.rig_id == "bench-A" and len(cal.sha256) == 64
    np.save(b / "lut.npy", np.linspace(0, 6.1, 256))
    assert load_slm_calibration(b).sha256 != cal.sha256  # the LUT is part of the hash
    rig = RigConfig(rig_id="bench-A")
    check_calibration_for_rig(cal, rig)
    with pytest.raises(CheckpointError, match="rig 'bench-A'"):
        check_calibration_for_rig(cal, RigConfig(rig_id="other"))
    with pytest.raises(CheckpointError, match="532.0 nm"):
        check_calibration_for_rig(cal, RigConfig(rig_id="bench-A", optics={"wavelength_m": 532e-9}))

    m = tmp_path / "mm"
    m.mkdir()
    (m / "calibration.json").write_text(
        json.dumps({"mismatch": {"slm_offset_px": [3, 4], "lut_gamma": 1.2, "lut_scale": 0.95}})
    )
    cal2 = load_slm_calibration(m / "calibration.json")
    assert cal2.offset_px == (3.0, 4.0)
    table = lut_table(SLM, cal2)
    expected = PhaseResponse(8, gamma=1.2, scale=0.95).as_table().double().numpy()
    assert np.allclose(table, expected)

    (m / "calibration.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_slm_calibration(m)
    (m / "calibration.json").write_text(json.dumps({"slm": {"offset_px": [1]}}))
    with pytest.raises(CheckpointError, match="slm.offset_px"):
        load_slm_calibration(m)
    with pytest.raises(CheckpointError, match="missing: calibration bundle not found"):
        load_slm_calibration(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: not a calibration bundle"):
        load_slm_calibration(tmp_path / "empty")


def test_fringing_guard_keeps_double_phase_pairs_unwrapped():
    """With crosstalk, a ± pair split across the 0/2π wrap would average to the opposite phase."""
    slm = SLM.model_copy(update={"fringing_px": 0.5})
    # phase_offset=0: keep arg H = 0.2 next to the wrap (the global offset would move it away)
    ex = SLMExporter(OPTICS, slm, mode="amplitude_phase", window=True, phase_offset=0.0)
    assert ex.checkerboard_gain < 0.5 and ex.pair_range is not None
    pupil = pupil_mask(32)
    h = torch.polar(torch.full((32, 32), 0.7), torch.full((32, 32), 0.2)) * pupil
    guarded = ex(h)[16, 16]
    assert abs(float(guarded.angle()) - 0.2) < 0.1
    field = resample_to_slm(h, ex.coords)
    naive = encode_phase_only(field, "amplitude_phase", (ex.rows[0], ex.cols[0]))
    flipped = ex.realise(quantise(inverse_lut(wrap_phase(naive), ex.table), 8))[16, 16]
    assert abs(abs(float(flipped.angle()) - 0.2) - math.pi) < 0.3  # what the guard prevents
    # without fringing the pairs wrap freely (full amplitude range)
    assert SLMExporter(OPTICS, SLM, mode="amplitude_phase").pair_range is None


def test_seam_offset_moves_the_phase_wrap_away_from_a_filter_clustered_at_zero():
    """A mild learned filter (phase ≈ 0 ± 0.2) must not straddle the SLM's 0/2π wrap."""
    g = torch.Generator().manual_seed(4)
    pupil = pupil_mask(32)
    h = torch.polar(torch.ones(32, 32), 0.2 * torch.randn(32, 32, generator=g)) * pupil
    psi = seam_phase_offset(h)
    shifted = wrap_phase((h * torch.polar(torch.ones(()), torch.tensor(psi))).angle())[pupil > 0]
    assert float(shifted.min()) > 1.0 and float(shifted.max()) < TWO_PI - 1.0
    # a LUT that reaches only 1.5π: the phases land inside its range
    short = seam_phase_offset(h, 1.5 * math.pi)
    inside = wrap_phase((h * torch.polar(torch.ones(()), torch.tensor(short))).angle())
    assert float(inside[pupil > 0].max()) < 1.5 * math.pi
    # with crosstalk the offset is what keeps the realised filter right
    slm = SLM.model_copy(update={"fringing_px": 0.5})
    auto = SLMExporter(OPTICS, slm, window=True)
    none = SLMExporter(OPTICS, slm, window=True, phase_offset=0.0)
    c_auto = filter_correlation(auto(h), h, pupil)
    c_none = filter_correlation(none(h), h, pupil)
    assert c_auto > 0.99 and c_auto > c_none + 0.02
    top = float(auto.table[-1] - auto.table[0])
    assert auto.last_phase_offset == pytest.approx(seam_phase_offset(h, top))
