"""Calibration math on its own: LM fit through the bench model, noise model, LUT curve,
knife-edge DC location, aberration pre-compensation and camera-response folding.

Small fields (N = 32) and noise-free or lightly noisy frames; tolerances, never timings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmicro_hw.calibration import lut as L
from dmicro_hw.calibration import patterns as P
from dmicro_hw.calibration import registration as R
from dmicro_hw.calibration.adapt import compensated_filter, fold_camera_into_norm
from dmicro_hw.calibration.model_fit import (
    ForwardModel,
    Observation,
    decorrelating_map,
    fit,
    get_params,
    noise_model,
    probe_jackknife_sigma,
    set_params,
)
from dmicro_hw.config import OpticsConfig, RigConfig, SensorConfig, SLMModelConfig
from dmicro_hw.data.phantoms import phase_target
from dmicro_hw.optics.fourier4f import pupil_mask
from dmicro_hw.optics.system import Mismatch, PhysicalSystem

# 32-sample field, 2 SLM pixels per filter sample, 96×96 SLM (as in the optics tests)
OPTICS = OpticsConfig(field_size=32, compression=16, focal_length_m=0.01024)
SLM = SLMModelConfig(pixels=(96, 96), pitch_m=8e-6, bit_depth=8, fill_factor=0.95, fringing_px=0.5)
SENSOR = SensorConfig(photons_per_pixel=20000, gain_adu_per_e=0.05, offset_adu=20)
TARGET = phase_target(32, "resolution", 2.0)


def _observe(truth: PhysicalSystem, probes, n=8, seed=0) -> list[Observation]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    ph = torch.from_numpy(TARGET)[None]
    for p in probes:
        g = torch.as_tensor(p.grey.astype(np.float32))
        with torch.no_grad():
            inten = truth.intensity(ph, g)
            st = (
                torch.stack([truth.frame_from_intensity(inten, gen)[0] for _ in range(n)])
                .double()
                .numpy()
            )
        out.append(
            Observation(p.pattern_id, p.kind, p.grey, "t", st.mean(0), st.var(0, ddof=1), n, p.meta)
        )
    nm = noise_model([o.mean for o in out], [o.var for o in out])
    for o in out:
        o.var = nm.variance(o.mean)
    return out


def test_forward_model_matches_the_physical_system():
    s = PhysicalSystem(OPTICS, SENSOR, SLM, Mismatch.draw(31))
    probes = [P.ramp((96, 96), 10, 0.3, 8), P.disc((96, 96), (2, -3), 5, 90), P.flat((96, 96))]
    obs = [
        Observation(str(i), "x", g, "t", np.zeros((8, 8)), np.ones((8, 8)), 1)
        for i, g in enumerate(probes)
    ]
    fm = ForwardModel(s, {"t": TARGET}, obs)
    ref = torch.stack(
        [
            s(torch.from_numpy(TARGET)[None], torch.as_tensor(g).float(), noise=False)[0]
            for g in probes
        ]
    )
    assert torch.allclose(fm.frames().float(), ref, rtol=1e-4, atol=1e-3)


def test_lm_fit_recovers_placement_aberrations_and_camera_with_honest_sigmas():
    truth_mm = Mismatch.draw(41)
    truth = PhysicalSystem(OPTICS, SENSOR, SLM, truth_mm)
    dc = R.offset_to_dc(truth)
    probes = R.camera_probes((96, 96)) + R.placement_probes((96, 96), dc, 2.0)
    probes += R.ramp_probes((96, 96), 10.0, 8)
    obs = _observe(truth, probes)
    # start near the truth (what the registration steps deliver) with the nuisances perturbed
    start = Mismatch.from_dict(truth_mm.to_dict())
    start.slm_offset_px = (truth_mm.slm_offset_px[0] + 0.6, truth_mm.slm_offset_px[1] - 0.5)
    start.zernike_rad = {
        k: v * (0.8 if k in (4, 5) else 1.0) for k, v in truth_mm.zernike_rad.items()
    }
    start.camera_shift_px = (0.0, 0.0)
    start.camera_gain = 1.0
    model = PhysicalSystem(OPTICS, SENSOR, SLM, start)
    names = ["slm_offset_y", "slm_offset_x", "z4", "z5", "cam_shift_y", "cam_shift_x", "cam_gain"]
    res = fit(model, {"t": TARGET}, obs, names, max_iter=20)
    true = {
        "slm_offset_y": truth_mm.slm_offset_px[0],
        "slm_offset_x": truth_mm.slm_offset_px[1],
        "z4": truth_mm.zernike_rad[4],
        "z5": truth_mm.zernike_rad[5],
        "cam_shift_y": truth_mm.camera_shift_px[0],
        "cam_shift_x": truth_mm.camera_shift_px[1],
        "cam_gain": truth_mm.camera_gain,
    }
    assert res.chi2_dof < 2.0
    for n, v in true.items():
        err = abs(res.values[n] - v)
        assert err < 6 * res.sigma[n] + 1e-6, (n, res.values[n], v, res.sigma[n])
    assert abs(res.values["slm_offset_y"] - true["slm_offset_y"]) < 0.05
    assert abs(res.values["z4"] - true["z4"]) < 0.05 * abs(true["z4"])
    assert set(res.per_observation) == {p.pattern_id for p in probes}


def test_solver_variables_put_a_degenerate_valley_on_an_axis():
    """Two parameters seen almost only through their sum (SLM offset and tilt: the DC
    position): in the solver's variables the valley is an axis — the columns are orthogonal —
    and a bounded parameter keeps its bounds (it is never the one moved along the valley)."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((200, 3))
    jac = np.stack([base[:, 0], base[:, 0] + 0.02 * base[:, 1], base[:, 2]], 1)
    inf = np.full(3, np.inf)
    lo, hi = -inf, inf.copy()
    hi[1], lo[1] = 0.6, -0.6  # column 1 bounded (a tilt), column 0 free (an offset)
    a = decorrelating_map(jac, lo, hi)
    jz = jac @ a
    assert abs(jz[:, 0] @ jz[:, 1]) < 1e-9 * np.linalg.norm(jz[:, 0]) * np.linalg.norm(jz[:, 1])
    assert a[1, 1] == 1 and a[1, 0] == 0 and a[0, 1] != 0  # z_tilt = tilt; the offset follows
    assert np.array_equal(a[2], [0, 0, 1]) and np.array_equal(a[:, 2], [0, 0, 1])
    both = np.array([-1.0, -1.0, -np.inf]), np.array([1.0, 1.0, np.inf])
    assert np.array_equal(decorrelating_map(jac, *both), np.eye(3))  # two bounded: left alone
    assert np.array_equal(decorrelating_map(base, lo, hi), np.eye(3))  # nothing correlated


def test_probe_jackknife_sigma_agrees_with_gauss_newton_and_sees_model_error():
    """Independent noise: the leave-one-probe-out σ agrees with the Gauss–Newton one. A model
    error that one probe carries (a residual pattern along one parameter's column in that probe
    only): the jackknife σ of that parameter grows well beyond the χ²/dof-scaled σ."""
    rng = np.random.default_rng(1)
    n_obs, pix, n_par = 40, 60, 3
    jac = rng.standard_normal((n_obs * pix, n_par))
    cov = np.linalg.inv(jac.T @ jac)
    r = rng.standard_normal(n_obs * pix)
    r -= jac @ (cov @ (jac.T @ r))  # residuals at the optimum are orthogonal to J
    gn = np.sqrt(np.diag(cov) * (r @ r) / (r.size - n_par))
    jk = probe_jackknife_sigma(jac, r, n_obs)
    assert jk == pytest.approx(gn, rel=0.3)
    biased = r.copy()
    biased[:pix] += 3.0 * jac[:pix, 0]  # probe 0 pulls parameter 0 its own way
    biased -= jac @ (cov @ (jac.T @ biased))
    gn_b = np.sqrt(np.diag(cov) * max(1.0, (biased @ biased) / (r.size - n_par)))
    jk_b = probe_jackknife_sigma(jac, biased, n_obs)
    assert jk_b[0] > 2 * gn_b[0] and jk_b[1] < 2 * gn_b[1]
    assert not probe_jackknife_sigma(jac[:120], r[:120], 2).any()  # two probes: no estimate


def test_noise_model_photon_transfer_line():
    rng = np.random.default_rng(0)
    means, variances = [], []
    for level in (100.0, 400.0, 900.0, 1600.0):
        mean_e = np.full((16, 16), level) * rng.uniform(0.8, 1.2, (16, 16))
        st = rng.poisson(mean_e, size=(32, 16, 16)) * 0.1 + 10.0
        means.append(st.mean(0))
        variances.append(st.var(0, ddof=1))
    nm = noise_model(means, variances)
    assert nm.slope == pytest.approx(0.1, rel=0.1)  # ADU per e⁻
    assert nm.dark == pytest.approx(10.0, abs=15)


def test_lut_curve_power_law_and_monotone_fallback():
    bits = 8
    g = np.arange(16, 256, 16)
    true = L.parametric_table(0.8, 1.05, bits, 2 * math.pi)
    lv = [L.LevelPhase(int(x), float(np.mod(true[x], 2 * math.pi)), 0.01, 1.0) for x in g]
    f = L.fit_lut(lv, bits)
    assert f.method == "parametric"
    assert f.gamma == pytest.approx(0.8, abs=0.01) and f.scale == pytest.approx(1.05, abs=0.01)
    assert L.lut_error_rms(f.table, true) < 0.01
    assert np.all(np.diff(f.table) >= 0) and f.table_sigma.max() < 0.05
    # an S-shaped response is no power law: the monotone PCHIP is used, still accurate
    x = np.arange(256) / 256
    s_curve = 2 * math.pi * (x + 0.08 * np.sin(2 * math.pi * x))
    lv = [L.LevelPhase(int(k), float(np.mod(s_curve[k], 2 * math.pi)), 0.005, 1.0) for k in g]
    f2 = L.fit_lut(lv, bits)
    assert f2.method == "monotone_pchip"
    assert L.lut_error_rms(f2.table, s_curve) < 0.05
    assert np.all(np.diff(f2.table) >= 0)
    assert np.allclose(L.isotonic(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4)), [1, 2.5, 2.5, 4])


def test_level_phase_measurement_reads_the_lut_through_the_optics():
    truth_mm = Mismatch.draw(43)
    truth = PhysicalSystem(OPTICS, SENSOR, SLM, truth_mm)
    dc = R.offset_to_dc(truth)
    probes = L.lut_probes((96, 96), dc, 3.0, 8, n_levels=4)
    obs = _observe(truth, probes, n=4)
    model = PhysicalSystem(OPTICS, SENSOR, SLM, truth_mm)  # registration known
    levels = L.measure_level_phases(model, {"t": TARGET}, obs)
    ref = truth.slm.response.as_table().numpy()
    for lv in levels:
        d = (lv.phase_rad - ref[lv.grey] + math.pi) % (2 * math.pi) - math.pi
        assert abs(d) < 0.03, (lv.grey, lv.phase_rad, ref[lv.grey])
        assert 0 < lv.sigma_rad < 0.03


def test_pupil_zones_read_the_response_away_from_the_dc():
    """Sectors of the pupil (outside the DC), read through the optics, give the response
    relative to a reference curve: 1.03 everywhere when the SLM responds 3 % more than it."""
    truth_mm = Mismatch.draw(43)
    truth_mm.lut_scale = 1.03
    truth = PhysicalSystem(OPTICS, SENSOR, SLM, truth_mm)
    dc = R.offset_to_dc(truth)
    ref = L.parametric_table(truth_mm.lut_gamma, 1.0, 8, 2 * math.pi)
    greys = L.zone_greys(ref, 2 * math.pi)
    assert len(greys) == len(L.ZONE_PHASE_FRACTIONS)
    probes = L.zone_probes((96, 96), dc, (6.0, 14.0, 32.0), greys)
    # the zones tile the annulus: every pixel in it belongs to exactly one zone
    masks = [(p.grey > 0).astype(int) for p in probes if p.meta["grey"] == greys[0]]
    r, c = P.slm_coords((96, 96))
    ring = (np.hypot(r - dc[0], c - dc[1]) >= 6.0) & (np.hypot(r - dc[0], c - dc[1]) < 32.0)
    assert len(masks) == 2 * L.ZONES and np.array_equal(sum(masks), ring.astype(int))
    assert [p.meta["pixels"] for p in probes[:: len(greys)]] == [int(m.sum()) for m in masks]
    obs = _observe(truth, probes, n=4)
    model = PhysicalSystem(OPTICS, SENSOR, SLM, truth_mm)
    start = [float(ref[p.meta["grey"]]) for p in probes]
    levels = L.measure_level_phases(model, {"t": TARGET}, obs, start=start)
    z = L.zone_response(obs, levels, ref)
    assert z is not None and len(z.scales) == 2 * L.ZONES
    for s, sg in zip(z.scales, z.sigmas):
        assert s == pytest.approx(1.03, abs=max(4 * sg, 0.004)), (z.scales, z.sigmas)
    assert z.mean == pytest.approx(1.03, abs=0.004) and 0 < z.sem < 0.01
    assert L.ZoneResponse.from_dict(z.to_dict()) == z


def test_zone_response_unwraps_and_reports_the_spread():
    table = np.linspace(0, 2 * math.pi, 256, endpoint=False)
    scales = {0: 1.02, 1: 0.99, 2: 1.00, 3: 0.97}
    obs, levels = [], []
    for q, s in scales.items():
        for g in (77, 141, 205):  # 0.3 … 0.8 of the range
            meta = {"grey": g, "zone": q, "pixels": 100}
            o = Observation(f"z{q}_{g}", "lut_zone", None, "t", None, None, 1, meta)
            obs.append(o)  # measured phases come back wrapped to [0, 2π)
            levels.append(L.LevelPhase(g, float(np.mod(s * table[g], 2 * math.pi)), 1e-3, 1.0))
    z = L.zone_response(obs, levels, table)
    assert z.scales == pytest.approx(list(scales.values()), abs=1e-9)
    assert z.mean == pytest.approx(0.995) and z.spread == pytest.approx(
        np.std([*scales.values()], ddof=1)
    )
    assert z.sem == pytest.approx(z.spread / 2, rel=0.01)
    assert z.uncertainty == pytest.approx(math.hypot(z.spread, z.sem))
    for o in obs[9:]:  # zone 3 covers three times the SLM pixels: it weighs three times
        o.meta = {**o.meta, "pixels": 300}
    z3 = L.zone_response(obs, levels, table)
    assert z3.mean == pytest.approx((1.02 + 0.99 + 1.00 + 3 * 0.97) / 6)
    assert L.zone_response(obs[:3], levels[:3], table) is None  # one zone: no mean to speak of
    assert L.ZoneResponse.from_dict({"scales": [1.0]}) is None
    assert L.ZoneResponse.from_dict({**z.to_dict(), "mean_scale": float("nan")}) is None


def test_knife_edge_locates_the_dc_within_a_pixel():
    truth_mm = Mismatch.draw(47)
    truth = PhysicalSystem(OPTICS, SENSOR, SLM, truth_mm)
    dc = R.offset_to_dc(truth)
    obs = _observe(truth, R.knife_edge_probes((96, 96), 10.0, 1.2, 128), n=2)
    found = R.locate_dc(obs)
    assert abs(found["dy"] - dc[0]) < 1.5 and abs(found["dx"] - dc[1]) < 1.5
    # offset ↔ DC conversion round-trips
    model = PhysicalSystem(OPTICS, SENSOR, SLM, truth_mm)
    off = R.dc_to_offset(model, dc)
    assert off == pytest.approx(truth_mm.slm_offset_px, abs=1e-9)


def test_patterns_phase_to_grey_and_shapes():
    ph = np.array([0.0, math.pi, 2 * math.pi - 1e-3, -0.1])
    assert list(P.phase_to_grey(ph, 8)) == [0, 128, 0, 252]
    lut = np.linspace(0, 2 * math.pi, 256, endpoint=False)
    assert list(P.phase_to_grey(ph, 8, lut)) == [0, 128, 0, 252]
    e = P.edge((8, 8), 0.0, 0.0, 7)
    assert e[:, 4:].min() == 7 and e[:, :4].max() == 0
    d = P.disc((9, 9), (0, 0), 1.0, 5)
    assert d.sum() == 5 * 5


def test_aberration_precompensation_and_camera_folding():
    mm = Mismatch(zernike_rad={4: 0.4, 5: -0.2, 7: 0.1})
    s = PhysicalSystem(OPTICS, SENSOR, SLM, mm)
    rng = torch.Generator().manual_seed(0)
    h = torch.polar(torch.ones(32, 32), torch.rand(32, 32, generator=rng) * 6)
    realised = compensated_filter(h, s) * s.pupil_function()
    inside = pupil_mask(32) > 0
    assert torch.allclose(realised[inside], h[inside], atol=1e-4)
    # folding gain/offset into the decoder standardisation == undoing them on the frame
    rig = RigConfig(sensor=SENSOR)
    adu = torch.rand(4, 8, 8) * 1000 + 20
    gain, off = 1.07, 3.5
    unit = SENSOR.gain_adu_per_e * SENSOR.photons_per_pixel
    m0, s0 = 0.7, 0.2
    m1, s1 = fold_camera_into_norm(m0, s0, gain, off, rig)
    x_ref = ((adu - SENSOR.offset_adu) / unit - m0) / s0
    x_fold = (((gain * adu + off) - SENSOR.offset_adu) / unit - m1) / s1
    assert torch.allclose(x_ref, x_fold, atol=1e-4)


def test_parameter_get_set_round_trip():
    s = PhysicalSystem(OPTICS, SENSOR, SLM, Mismatch.draw(5))
    names = ["slm_offset_x", "z4", "tilt_y", "cam_gain", "lut_gamma"]
    vals = get_params(s, names)
    set_params(s, {k: v + 0.01 for k, v in vals.items()})
    after = get_params(s, names)
    assert all(after[k] == pytest.approx(vals[k] + 0.01, abs=1e-6) for k in names)
