"""Throughput of the simulated devices (``dmicro bench sim``): bench render, SimCamera rates.

Measures, for a field size N and compression k²: building the realised filter of a pattern; the
raw optics render (batched and single frames, no cache); ``VirtualBench.render`` on a cold and a
warm frame bank (noise included); the SimCamera not paced (cold bank and prefilled) and paced at
a target rate (achieved rate and frames lost). Timings only — never asserted in tests.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from dmicro_hw.config import CameraDeviceConfig, RigConfig
from dmicro_hw.simulators.bench import VirtualBench
from dmicro_hw.simulators.sim_camera import SimCamera
from dmicro_hw.simulators.sim_slm import SimSLM

SLM_PIXELS_PER_SAMPLE = 2.44


def rig_for(base: RigConfig, field_size: int, compression: int) -> RigConfig:
    """``base`` with an N×N field at ``compression`` and an SLM just large enough for the filter
    (≈2.4 SLM pixels per filter sample, as in configs/sim-rig.yaml)."""
    o = base.optics
    image_pitch = o.pixel_size_m * o.magnification
    f = SLM_PIXELS_PER_SAMPLE * base.slm.pitch_m * field_size * image_pitch / o.wavelength_m
    side = int(math.ceil((field_size * SLM_PIXELS_PER_SAMPLE + 32) / 16) * 16)
    data = base.model_dump()
    data["optics"].update(field_size=field_size, compression=compression, focal_length_m=f)
    data["slm"].update(pixels=(side, side), lut=None)
    return RigConfig.model_validate(data)


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def measure(
    rig: RigConfig,
    frames: int = 2000,
    paced_seconds: float = 1.0,
    paced_rate_hz: float | None = None,
) -> dict[str, Any]:
    """Measure one rig; returns a flat dict of rates (frames/s) and times (s)."""
    n, k = rig.optics.field_size, rig.optics.binning
    out: dict[str, Any] = {
        "field_size": n,
        "compression": rig.optics.compression,
        "frame_shape": [n // k, n // k],
        "slm_pixels": list(rig.slm.pixels),
    }
    levels = 2**rig.slm.bit_depth
    dtype = np.uint8 if rig.slm.bit_depth <= 8 else np.uint16
    pattern = np.random.default_rng(0).integers(0, levels, rig.slm.pixels).astype(dtype)

    bench = VirtualBench.from_rig(rig)
    t = time.perf_counter()
    h = bench._filter("throughput", pattern)
    out["filter_build_s"] = time.perf_counter() - t
    out["period_frames"] = bench.period_frames

    m = min(64, bench.period_frames) if bench.period_frames > 1 else 16
    phases = np.stack([bench.true_phase(i) for i in range(m)])
    b = min(bench.prefetch_frames, m)
    bench._electrons_batch(phases[:b], h)
    batches = m // b
    t = time.perf_counter()
    for i in range(batches):
        bench._electrons_batch(phases[i * b : (i + 1) * b], h)
    out["optics_batch"] = b
    out["optics_fps_batched"] = _rate(batches * b, time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(m):
        bench._electrons_batch(phases[i : i + 1], h)
    out["optics_fps_single"] = _rate(m, time.perf_counter() - t)

    bench.clear_caches()
    bench.display(pattern, "p")
    cold = min(frames, bench.period_frames) if bench.period_frames > 1 else frames
    t = time.perf_counter()
    for i in range(cold):
        bench.render(i, t=math.inf)
    out["render_fps_cold_bank"] = _rate(cold, time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(frames):
        bench.render(i, t=math.inf)
    out["render_fps_warm_bank"] = _rate(frames, time.perf_counter() - t)

    def camera(bench: VirtualBench, **options: Any) -> tuple[SimSLM, SimCamera]:
        section = CameraDeviceConfig(
            **{**rig.camera.model_dump(), "options": {"buffer_frames": 256, **options}}
        )
        cam = SimCamera(
            section,
            bench,
            frame_rate_hz=paced_rate_hz or rig.bench.frame_rate_hz,
            latency_s=rig.bench.latency_s,
        )
        return SimSLM(rig.slm, bench), cam

    for label, prefill in (("cold", False), ("prefilled", True)):
        fresh = VirtualBench.from_rig(rig)
        slm, cam = camera(fresh, paced=False, prefill=prefill)
        with slm, cam:
            slm.show(pattern)
            time.sleep(rig.slm.settle_time_s)
            t = time.perf_counter()
            cam.start()
            t_start = time.perf_counter() - t
            t = time.perf_counter()
            # cold: one period of the sample stream, every frame rendered on first use
            count = cold if not prefill else frames
            got = sum(1 for _ in cam.frames(max_frames=count))
            out[f"camera_unpaced_fps_{label}"] = _rate(got, time.perf_counter() - t)
            if prefill:
                out["camera_prefill_s"] = t_start

    fresh = VirtualBench.from_rig(rig)
    slm, cam = camera(fresh, paced=True, prefill=True)
    with slm, cam:
        slm.show(pattern)
        cam.start()
        want = int(paced_seconds * cam.frame_rate_hz)
        t = time.perf_counter()
        ids = [f.frame_id for f in cam.frames(max_frames=want)]
        dt = time.perf_counter() - t
    out["camera_paced_target_hz"] = cam.frame_rate_hz
    out["camera_paced_fps"] = _rate(len(ids), dt)
    out["camera_paced_lost"] = (ids[-1] + 1 - len(ids)) if ids else 0
    return out
