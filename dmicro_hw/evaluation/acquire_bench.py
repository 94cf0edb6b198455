"""Measurements behind ``dmicro bench acquire`` (no assertions: figures for a table and JSON).

* raw capture: the real pipeline (SimCamera → ring → Zarr writer, no decoding) streaming N frames,
  paced at the target rate and unpaced (as fast as the host takes them); sustained frame rate and
  frames lost (camera-side gaps + ring drops). The bench shows a static target, so the figures
  are those of the acquisition path, not of the optics simulation.
* decode: the live :class:`~dmicro_hw.acquisition.reconstruct.Reconstructor` on probe frames at
  each compression: frames/s at the live batch size and per-batch latency p50/p99, on the CPU
  with the live thread count (and on CUDA where present).
* live: a paced stream at the target decode rate with reconstruction on — does the decoder keep
  up (nothing skipped) and with which end-to-end latency.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.pipeline import Acquisition, AcquisitionOptions
from dmicro_hw.config import DecoderConfig, RigConfig, TrainConfig

log = logging.getLogger(__name__)


def live_threads() -> int:
    """Torch CPU threads the live decoder uses: all cores but one (≥ 1)."""
    return max(1, (os.cpu_count() or 2) - 1)


def rig_variant(
    rig: RigConfig,
    compression: int,
    *,
    rate_hz: float,
    paced: bool,
    static: bool = True,
) -> RigConfig:
    """``rig`` at another compression with a simulated camera at ``rate_hz`` (prefilled bank)."""
    d = rig.model_dump()
    d["optics"]["compression"] = compression
    d["camera"] = {
        "backend": "sim",
        "pixel_format": rig.camera.pixel_format if rig.camera.backend == "sim" else "Mono12",
        "fetch_timeout_s": 2.0,
        "options": {"paced": paced, "prefill": True, "buffer_frames": 256},
    }
    d["slm"]["backend"] = "sim"
    d["trigger"] = {"backend": "none"}
    d["bench"]["frame_rate_hz"] = rate_hz
    d["bench"]["latency_s"] = 0.0
    d["bench"]["faults"] = {}
    if static:
        d["bench"]["sample"] = "target"
        d["bench"]["flow_px_per_frame"] = 0.0
    d["checkpoint"] = d["pattern"] = d["calibration"] = None
    return RigConfig.model_validate(d)


def _run(rig: RigConfig, frames: int, out: Path, recon: Any = None) -> dict[str, Any]:
    from dmicro_hw.drivers.base import open_device

    opt = AcquisitionOptions(
        out=out,
        frames=frames,
        ring_frames=rig.acquisition.ring_frames,
        chunk_frames=rig.acquisition.chunk_frames,
        recon_batch=rig.acquisition.recon_batch,
        frame_interval_s=1.0 / rig.bench.frame_rate_hz,
        raw_pixel_m=rig.optics.pixel_size_m * rig.optics.binning,
        adc_bits=rig.sensor.bit_depth,
        drain_s=30.0,
    )
    with open_device("camera", rig.camera, rig) as cam:
        acq = Acquisition(cam, opt, recon=recon)
        acq.start()
        acq.wait()
        return acq.shutdown()


def measure_capture(
    rig: RigConfig, compression: int, frames: int, rate_hz: float, paced: bool, workdir: Path
) -> dict[str, Any]:
    """Raw capture (no decoding): sustained fps and frames lost."""
    r = rig_variant(rig, compression, rate_hz=rate_hz, paced=paced)
    out = workdir / f"capture-{compression}-{'paced' if paced else 'free'}.zarr"
    s = _run(r, frames, out)
    shutil.rmtree(out, ignore_errors=True)
    lost = int(s["camera_dropped"]) + int(s["ring_dropped"])
    n = r.optics.field_size // r.optics.binning
    return {
        "compression": compression,
        "frame_shape": [n, n],
        "paced": paced,
        "target_hz": rate_hz if paced else None,
        "frames": int(s["frames_written"]),
        "sustained_fps": s["device_fps"] or s["mean_fps"],
        "host_fps": s["mean_fps"],
        "lost": lost,
        "producer_wait_s": s["producer_wait_s"],
        "writer_s": s["writer"]["write_s"],
        "writer_commits": s["writer"]["commits"],
    }


def decoder_config(rig: RigConfig) -> tuple[DecoderConfig, str]:
    """The decoder of the rig's checkpoint (else the default U-Net) and where it came from."""
    if rig.checkpoint is not None and Path(rig.checkpoint).is_file():
        from dmicro_hw.training.checkpoint import checkpoint_config

        return checkpoint_config(rig.checkpoint).decoder, str(rig.checkpoint)
    return DecoderConfig(), "default DecoderConfig"


def build_reconstructor(
    rig: RigConfig,
    compression: int,
    decoder: DecoderConfig,
    device: str,
    batch: int,
    threads: int | None,
) -> Any:
    """An untrained model of the given decoder architecture (speed does not depend on weights)."""
    from dmicro_hw.acquisition.reconstruct import Reconstructor
    from dmicro_hw.training.model import DMicroModel

    optics = rig.optics.model_copy(update={"compression": compression})
    cfg = TrainConfig(optics=optics, sensor=rig.sensor, decoder=decoder)
    model = DMicroModel.from_config(cfg)
    return Reconstructor(model, rig.sensor, device=device, max_batch=batch, threads=threads)


def measure_decode(
    rig: RigConfig,
    compression: int,
    decoder: DecoderConfig,
    device: str,
    batch: int,
    threads: int | None,
    seconds: float = 2.0,
) -> dict[str, Any]:
    """Decode throughput (frames/s) and per-batch latency (ms) on probe frames."""
    import torch

    rec = build_reconstructor(rig, compression, decoder, device, batch, threads)
    raw = rec._probe_frames(batch)
    if raw.shape[0] < batch:
        raw = np.concatenate([raw] * (batch // raw.shape[0] + 1))[:batch]
    rec.warmup(3)
    lat: list[float] = []
    t_end = time.perf_counter() + seconds
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() < t_end or len(lat) < 5:
        t = time.perf_counter()
        rec(raw)
        lat.append((time.perf_counter() - t) * 1e3)
        n += batch
    dt = time.perf_counter() - t0
    return {
        "compression": compression,
        "device": rec.device,
        "threads": torch.get_num_threads() if rec.device == "cpu" else None,
        "autocast": rec.info()["autocast"],
        "batch": batch,
        "frame_shape": list(rec.input_shape),
        "field_size": rec.field_size,
        "decode_fps": round(n / dt, 1),
        "batch_ms_p50": round(float(np.percentile(lat, 50)), 3),
        "batch_ms_p99": round(float(np.percentile(lat, 99)), 3),
    }


def measure_live(
    rig: RigConfig,
    compression: int,
    decoder: DecoderConfig,
    rate_hz: float,
    frames: int,
    device: str,
    workdir: Path,
) -> dict[str, Any]:
    """A paced stream with live decoding: did the decoder keep up?"""
    r = rig_variant(rig, compression, rate_hz=rate_hz, paced=True)
    rec = build_reconstructor(
        r, compression, decoder, device, r.acquisition.recon_batch, live_threads()
    )
    if r.acquisition.consistency:  # as a live run does by default (the encoder as the model)
        from dmicro_hw.acquisition.consistency import measurement_for_rig

        rec.set_measurement(measurement_for_rig(r, rec.model))
    rec.warmup()
    out = workdir / f"live-{compression}.zarr"
    s = _run(r, frames, out, recon=rec)
    shutil.rmtree(out, ignore_errors=True)
    re = s["recon"] or {}
    return {
        "compression": compression,
        "rate_hz": rate_hz,
        "frames": s["frames_written"],
        "sustained_fps": s["device_fps"] or s["mean_fps"],
        "lost": int(s["camera_dropped"]) + int(s["ring_dropped"]),
        "decoded": re.get("decoded"),
        "skipped": re.get("skipped"),
        "latency_ms_p50": re.get("latency_ms_p50"),
        "latency_ms_p99": re.get("latency_ms_p99"),
        "device": re.get("device"),
        "consistency": bool(r.acquisition.consistency),
    }


def run_benchmark(
    rig: RigConfig,
    *,
    compressions: tuple[int, ...] = (16, 64, 256),
    capture_frames: int = 3000,
    capture_rate_hz: float = 1000.0,
    live_rate_hz: float = 100.0,
    live_compression: int = 64,
    live_frames: int = 300,
    devices: tuple[str, ...] = ("cpu", "cuda"),
    threads: int | None = None,
    decode_seconds: float = 2.0,
    progress: Any = None,
) -> dict[str, Any]:
    """All measurements; returns a JSON-able dict (rows for the table)."""
    import torch

    say = progress or (lambda msg: None)
    threads = threads or live_threads()
    dec_cfg, dec_src = decoder_config(rig)
    devs = [d for d in devices if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    work = Path(tempfile.mkdtemp(prefix="dmicro-bench-acq-"))
    res: dict[str, Any] = {
        "field_size": rig.optics.field_size,
        "decoder": dec_cfg.model_dump(),
        "decoder_from": dec_src,
        "cpu_count": os.cpu_count(),
        "torch_threads_live": threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "capture": [],
        "decode": [],
        "live": [],
    }
    try:
        torch.set_num_threads(threads)
        for c in compressions:
            for paced in (True, False):
                say(f"raw capture ×{c} {'paced' if paced else 'unpaced'} …")
                res["capture"].append(
                    measure_capture(rig, c, capture_frames, capture_rate_hz, paced, work)
                )
        for dev in devs:
            for c in compressions:
                for b in sorted({1, rig.acquisition.recon_batch}):
                    say(f"decode ×{c} on {dev}, batch {b} …")
                    res["decode"].append(
                        measure_decode(rig, c, dec_cfg, dev, b, threads, decode_seconds)
                    )
        for dev in devs:
            say(f"live ×{live_compression} at {live_rate_hz:g} fps, decoding on {dev} …")
            res["live"].append(
                measure_live(rig, live_compression, dec_cfg, live_rate_hz, live_frames, dev, work)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res
