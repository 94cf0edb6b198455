"""Virtual bench: fast path = differentiable model, honest twin, true phase, hidden mismatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from dmicro_hw.config import (
    BenchConfig,
    CameraDeviceConfig,
    MismatchConfig,
    OpticsConfig,
    RigConfig,
    SLMDeviceConfig,
)
from dmicro_hw.errors import FrameShapeError
from dmicro_hw.optics.system import Mismatch, PhysicalSystem
from dmicro_hw.simulators.bench import (
    VirtualBench,
    bench_of,
    pattern_key,
    reveal_mismatch_for_scoring,
)
from dmicro_hw.simulators.sim_camera import SimCamera
from dmicro_hw.simulators.sim_slm import SimSLM

SLM_PX = 96


def small_rig(**bench: object) -> RigConfig:
    """32-px field, ×16, 96×96 SLM with 2 SLM pixels per filter sample."""
    return RigConfig(
        optics=OpticsConfig(field_size=32, compression=16, focal_length_m=0.01024),
        slm=SLMDeviceConfig(pixels=(SLM_PX, SLM_PX), settle_time_s=0.0),
        camera=CameraDeviceConfig(options={"paced": False}),
        bench=BenchConfig(**bench),
    )


def grey(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SLM_PX, SLM_PX)).astype(np.uint8)


def test_fast_render_matches_differentiable_model():
    bench = VirtualBench.from_rig(small_rig())
    g = grey(1)
    for fid in (0, 7, 33):
        fast = bench.render(fid, g, noise=False)
        ref = bench._system(
            torch.from_numpy(bench.true_phase(fid))[None],
            torch.from_numpy(g.astype(np.float32)),
            noise=False,
        )[0].numpy()
        assert fast.shape == (8, 8) and fast.dtype == np.float32
        np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-3)


def test_honest_twin_patterns_and_frames():
    bench = VirtualBench.from_rig(small_rig())
    a, b = grey(1), grey(2)
    fa = bench.render(5, a, noise=False)
    assert not np.allclose(fa, bench.render(5, b, noise=False))  # other pattern → other frame
    np.testing.assert_array_equal(fa, bench.render(5, a, noise=False))  # deterministic
    assert not np.allclose(fa, bench.render(6, a, noise=False))  # the sample moved
    noisy = [bench.render(5, a, noise=True) for _ in range(2)]
    assert not np.array_equal(noisy[0], noisy[1])  # fresh noise per capture
    assert abs(float(noisy[0].mean() - fa.mean())) < 0.2 * float(fa.mean()) + 2


def test_true_phase_stream_is_recomputable_and_periodic():
    b1 = VirtualBench.from_rig(small_rig(flow_px_per_frame=1.5, seed=3))
    b2 = VirtualBench.from_rig(small_rig(flow_px_per_frame=1.5, seed=3))
    fid = next(i for i in range(b1.period_frames) if b1.true_phase(i).max() > 1.0)  # has cells
    p = b1.true_phase(fid)
    assert p.shape == (32, 32) and p.dtype == np.float32
    np.testing.assert_array_equal(p, b2.true_phase(fid))
    assert 0 <= p.min() and p.max() <= np.pi + 1e-5
    assert not np.allclose(p, b1.true_phase(fid + 1))
    np.testing.assert_allclose(b1.true_phase(fid + b1.period_frames), p, atol=1e-6)
    # cells flow to +x: after 2 frames at 1.5 px/frame the content moved by 3 px
    np.testing.assert_allclose(b1.true_phase(fid + 2)[:, 3:], p[:, :-3], atol=1e-5)
    other = VirtualBench.from_rig(small_rig(flow_px_per_frame=1.5, seed=4))
    assert not np.allclose(other.true_phase(fid), p)


def test_static_sample_target_and_set_sample():
    bench = VirtualBench.from_rig(small_rig(sample="target"))
    np.testing.assert_array_equal(bench.true_phase(0), bench.true_phase(99))
    assert bench.period_frames == 1
    cells = VirtualBench.from_rig(small_rig())
    target = np.zeros((32, 32), np.float32)
    target[8:24, 8:24] = 1.0
    before = cells.render(0, grey(1), noise=False)
    cells.set_sample(target)
    np.testing.assert_array_equal(cells.true_phase(5), target)
    after = cells.render(0, grey(1), noise=False)
    assert not np.allclose(before, after)
    with pytest.raises(FrameShapeError, match="32, 32"):
        cells.set_sample(np.zeros((16, 16)))
    cells.reset_sample()
    np.testing.assert_allclose(cells.render(0, grey(1), noise=False), before)


def test_hidden_mismatch_drawn_from_seed_and_revealed_only_explicitly():
    bench = VirtualBench.from_rig(small_rig(mismatch=MismatchConfig(seed=7)))
    m = reveal_mismatch_for_scoring(bench)
    assert m == Mismatch.draw(7, 1.0)
    assert "lut_gamma" not in repr(bench)
    flat = VirtualBench.from_rig(small_rig(mismatch=MismatchConfig(enabled=False)))
    assert reveal_mismatch_for_scoring(flat) == Mismatch()
    g = grey(1)
    assert not np.allclose(bench.render(0, g, noise=False), flat.render(0, g, noise=False))


def _public_objects(root: object, depth: int = 4) -> list[object]:
    """Everything reachable from ``root`` through public attributes and containers."""
    seen, out, todo = set(), [], [(root, 0)]
    while todo:
        obj, d = todo.pop()
        if id(obj) in seen or d > depth:
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, dict):
            children = list(obj.values()) + list(obj.keys())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = list(obj)
        elif isinstance(obj, (str, bytes, int, float, bool, type(None), np.ndarray, BaseModel)):
            children = []  # leaves (config models are the user's own rig.yaml)
        else:
            names = [n for n in dir(obj) if not n.startswith("_")]
            children = []
            for n in names:
                try:
                    v = getattr(obj, n)
                except Exception:
                    continue
                if not callable(v) or isinstance(v, (dict, list)):
                    children.append(v)
        todo.extend((c, d + 1) for c in children)
    return out


def test_mismatch_not_reachable_from_sim_devices():
    rig = small_rig(mismatch=MismatchConfig(seed=11))
    bench = VirtualBench.from_rig(rig)
    slm = SimSLM.from_config(rig.slm, rig, bench=bench)
    cam = SimCamera.from_config(rig.camera, rig, bench=bench)
    try:
        cam.open()
        next(cam.frames(max_frames=1))
        for dev in (slm, cam):
            for obj in _public_objects(dev):
                assert not isinstance(
                    obj, (Mismatch, PhysicalSystem, VirtualBench, torch.nn.Module)
                )
        secret = reveal_mismatch_for_scoring(bench_of(cam)).lut_gamma
        for info in (cam.info(), slm.info()):
            assert all(v != secret for v in info.values() if isinstance(v, float))
    finally:
        cam.close()
        slm.close()


def test_bench_handed_to_the_devices_and_pattern_key():
    rig = small_rig()
    bench = VirtualBench.from_rig(rig)
    slm = SimSLM.from_config(rig.slm, rig, bench=bench)
    cam = SimCamera.from_config(rig.camera, rig, bench=bench)
    assert bench_of(slm) is bench_of(cam) is bench
    # built alone, each device has a private bench: nothing is shared through a registry
    alone = SimSLM.from_config(rig.slm, rig), SimCamera.from_config(rig.camera, rig)
    assert bench_of(alone[0]) is not bench_of(alone[1])
    assert bench not in (bench_of(alone[0]), bench_of(alone[1]))
    a = grey(1)
    assert pattern_key(a) == pattern_key(a.copy()) != pattern_key(grey(2))
    assert len(pattern_key(a)) == 16
    with pytest.raises(TypeError):
        bench_of(object())


def test_prefill_fills_one_period_and_caches_filters():
    bench = VirtualBench.from_rig(small_rig(flow_px_per_frame=4.0))
    bench.display(grey(1))
    n = bench.prefill(t=float("inf"))
    assert n == bench.period_frames == 8 * 32 // 4
    rendered = bench.stats["rendered"]
    for fid in range(3 * bench.period_frames):
        bench.render(fid, noise=False, t=float("inf"))
    assert bench.stats["rendered"] == rendered  # all from the bank
    assert bench.stats["filters_built"] == 1
