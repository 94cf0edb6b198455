"""Reconstruction: raw camera frames (ADU) → phase in radians, live (worker thread) or offline.

    raw ADU (B, h, w) ─ undo calibrated camera gain/offset ─ Sensor.normalise (rig.sensor)
      ─ decoder (standardised with the checkpoint's fixed statistics) ─ × phase_max_rad
      → phase (B, N, N) float32 radians

On CUDA the batch goes through a pinned host buffer with non-blocking copies, and the decoder runs
under autocast (bfloat16/float16) only if a self-check at start-up shows it keeps the normalised
phase within ``autocast_tol`` of float32; otherwise it stays in float32. On the CPU the decoder
runs in the fastest :mod:`runtime <dmicro_hw.models.runtime>` that keeps the normalised phase of
a sample batch within ``runtime_tol`` of eager float32 (``runtime="auto"``: ONNX Runtime, or a
compiled graph already built by ``dmicro bench decoders``; eager, channels_last, otherwise — the
reason is logged and in :meth:`Reconstructor.info`).

:class:`ReconWorker` is the live consumer: it reads the frame ring as a *lossy* consumer, so a slow
decoder never holds the camera or the raw writer back; frames it could not reach are stored with
``recon_status = skipped`` and can be decoded later with ``dmicro reconstruct``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.ring_buffer import FrameRing
from dmicro_hw.acquisition.store import RECON_ERROR, RECON_OK, RECON_SKIPPED
from dmicro_hw.acquisition.writer import RunWriter
from dmicro_hw.errors import CheckpointError, ConfigError, FrameShapeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineOptions:
    """Physics-consistent refinement of decoded phase (``acquisition.refine``).

    iterations: at most this many gradient steps per batch (0: score only, no refinement).
    prior_weight: weight λ of the pull towards the decoder's output.
    """

    iterations: int = 0
    prior_weight: float = 1.0


def decode_status(phase: np.ndarray) -> np.ndarray:
    """recon_status of decoded frames: ok, or error where the output is not finite (those
    frames' phase is set to NaN in place)."""
    bad = ~np.isfinite(phase.reshape(phase.shape[0], -1)).all(axis=1)
    phase[bad] = np.nan
    return np.where(bad, RECON_ERROR, RECON_OK).astype(np.uint8)


def pick_device(requested: str = "auto") -> str:
    """'auto' → 'cuda' when available, else 'cpu'; 'cuda' without CUDA is a ConfigError."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("acquisition.recon_device: 'cuda' requested but CUDA is not available")
    return requested


class Reconstructor:
    """Decode raw ADU batches into phase (radians) with a trained model.

    Args:
        model: a :class:`~dmicro_hw.training.model.DMicroModel` (``decode``, ``encoder``).
        sensor_cfg: the rig's :class:`~dmicro_hw.config.SensorConfig` (ADU → intensity units).
        device: 'auto' | 'cpu' | 'cuda'.
        camera_gain, camera_offset_adu: calibrated camera response raw' = gain·raw + offset
            (1, 0 without a calibration bundle); undone before normalising.
        max_batch: largest batch (pinned buffers are sized for it).
        autocast: 'auto' (use it if accurate), 'off', or 'on' (CUDA only).
        autocast_tol: largest allowed |Δ| of the normalised phase (fraction of phase_max).
        runtime: CPU decoder runtime: 'eager', 'auto' (fastest accurate one, see the module
            docstring) or one name of :data:`dmicro_hw.models.runtime.CPU_RUNTIMES` (still
            checked against eager on a sample batch; eager with a logged reason if it fails).
        runtime_tol: largest allowed |Δ| of the normalised phase for a non-eager runtime.
        runtime_cache: folder of built graphs (None: ONNX is exported to a temporary folder,
            nothing is reused).
    """

    def __init__(
        self,
        model: Any,
        sensor_cfg: Any,
        *,
        device: str = "auto",
        camera_gain: float = 1.0,
        camera_offset_adu: float = 0.0,
        max_batch: int = 8,
        autocast: str = "auto",
        autocast_tol: float = 2e-3,
        threads: int | None = None,
        runtime: str = "eager",
        runtime_tol: float = 2e-3,
        runtime_cache: Path | str | None = None,
    ) -> None:
        import torch

        from dmicro_hw.optics.sensor import ADUMap

        self.device = pick_device(device)
        if threads and self.device == "cpu":
            torch.set_num_threads(int(threads))
        self.model = model.to(self.device).eval()
        enc = model.encoder
        self.field_size = int(enc.field_size)
        self.binning = int(enc.binning)
        self.compression = int(enc.compression)
        self.input_shape = (self.field_size // self.binning, self.field_size // self.binning)
        self.phase_max_rad = float(model.phase_max_rad)
        self.pixel_size_m = float(enc.optics.pixel_size_m)
        # pixels → decoder input: the one ADU map, fused into a·pixel + b
        self.adu_map = ADUMap.from_sensor(sensor_cfg, camera_gain, camera_offset_adu)
        self._scale, self._shift = self.adu_map.affine()
        self.pixel_scale = 1.0
        self.max_batch = int(max_batch)
        self.autocast_dtype: Any = None
        self._pinned_in = None
        self._pinned_out = None
        self._stream = None
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed frame size: pick the fastest kernels
            h, w = self.input_shape
            n = self.field_size
            self._pinned_in = torch.empty((self.max_batch, h, w), dtype=torch.float32).pin_memory()
            self._pinned_out = torch.empty((self.max_batch, n, n), dtype=torch.float32).pin_memory()
            self._stream = torch.cuda.Stream()
            if autocast != "off":
                self.autocast_dtype = self._choose_autocast(autocast == "on", autocast_tol)
        self.autocast_error: float | None = getattr(self, "autocast_error", None)
        self.measurement: Any = None
        self.refine = RefineOptions()
        self.runtime: Any = None  # a DecoderRuntime replacing model.decode (CPU only)
        self.runtime_report: dict[str, Any] = {"selected": "eager", "reason": "requested"}
        if self.device == "cpu" and runtime != "eager":
            self._choose_runtime(runtime, runtime_tol, runtime_cache)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Path | str,
        rig: Any,
        *,
        camera_gain: float = 1.0,
        camera_offset_adu: float = 0.0,
        **kwargs: Any,
    ) -> Reconstructor:
        """Build from a ``dmicro train`` checkpoint for the rig's sensor and optics."""
        from dmicro_hw.training.checkpoint import build_model_from_checkpoint

        model, train_cfg = build_model_from_checkpoint(checkpoint, device="cpu")
        o = rig.optics
        if (train_cfg.optics.field_size, train_cfg.optics.compression) != (
            o.field_size,
            o.compression,
        ):
            raise CheckpointError(
                f"{checkpoint}: trained for field_size {train_cfg.optics.field_size} ×"
                f"{train_cfg.optics.compression}, but the rig has optics.field_size "
                f"{o.field_size} ×{o.compression}"
            )
        from dmicro_hw.models.runtime import default_cache_dir

        kwargs.setdefault("runtime", "auto")
        kwargs.setdefault("runtime_cache", default_cache_dir(checkpoint))
        rec = cls(
            model,
            rig.sensor,
            camera_gain=camera_gain,
            camera_offset_adu=camera_offset_adu,
            **kwargs,
        )
        rec.train_cfg = train_cfg
        return rec

    def set_pixel_scale(self, scale: float) -> None:
        """Pixel values = ADC values × ``scale`` (e.g. 16 for a 12-bit ADC sent as Mono16,
        1/16 for Mono8); decoding divides it out."""
        self.pixel_scale = float(scale)
        self.adu_map = self.adu_map.with_pixel_scale(self.pixel_scale)
        self._scale, self._shift = self.adu_map.affine()

    # ------------------------------------------------------------------ decoding
    def check_frame_shape(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != self.input_shape:
            raise FrameShapeError(
                f"camera frames are {tuple(shape)} but the decoder expects {self.input_shape} "
                f"(field {self.field_size}, ×{self.compression}); set camera width/height/binning "
                "to match or run with --no-recon"
            )

    def _decode_tensor(self, x: Any) -> Any:
        """x: (B, h, w) float32 ADU on self.device → normalised phase (B, N, N) in [0, 1]."""
        import torch

        x = x * self._scale + self._shift
        if self.runtime is not None:
            y = self.runtime(x)
        elif self.autocast_dtype is not None:
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                y = self.model.decode(x)
            y = y.float()
        else:
            y = self.model.decode(x)
        return y.clamp_(0.0, 1.0)  # as training's metrics and denormalise_phase do

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Decode raw ADU (n, h, w) → phase (n, N, N) float32 radians (any n; split by
        ``max_batch``)."""
        return self.decode(raw)[0]

    def set_measurement(self, measurement: Any, refine: RefineOptions | None = None) -> None:
        """Check every decoded frame against the measurement (χ²/dof, see
        :mod:`dmicro_hw.optics.measurement`) and optionally refine the phase through it."""
        self.measurement = measurement.to(self.device).eval() if measurement is not None else None
        self.refine = refine or RefineOptions()

    def decode(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw ADU (n, h, w) → (phase (n, N, N) float32 rad, χ²/dof (n,) float32 or None).

        χ²/dof is computed when a measurement model is set (:meth:`set_measurement`); with
        ``refine.iterations`` > 0 the returned phase is the refined one and χ²/dof is its own.
        """
        n = raw.shape[0]
        out = np.empty((n, self.field_size, self.field_size), dtype=np.float32)
        chi2 = np.empty(n, dtype=np.float32) if self.measurement is not None else None
        for s in range(0, n, self.max_batch):
            e = min(n, s + self.max_batch)
            out[s:e] = self._decode_batch(raw[s:e])
            if chi2 is not None:
                chi2[s:e] = self._check(raw[s:e], out[s:e])
        return out, chi2

    def _check(self, raw: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """χ²/dof (n,) of decoded ``phase`` (n, N, N) against the raw frames it came from; with
        refinement on, ``phase`` is first refined in place."""
        import torch

        from dmicro_hw.optics.measurement import refine

        adc = torch.from_numpy(np.asarray(raw, dtype=np.float32) / self.pixel_scale)
        phi = torch.from_numpy(phase)
        adc, phi = adc.to(self.device), phi.to(self.device)
        r = self.refine
        if r.iterations > 0:
            res = refine(
                self.measurement,
                adc,
                phi,
                iterations=r.iterations,
                prior_weight=r.prior_weight,
                phase_max_rad=self.phase_max_rad,
            )
            phase[...] = res.phase.cpu().numpy()
            return res.chi2_after.cpu().numpy()
        with torch.no_grad():
            return self.measurement.chi2(phi, adc).cpu().numpy()

    def _decode_batch(self, raw: np.ndarray) -> np.ndarray:
        import torch

        b = raw.shape[0]
        with torch.inference_mode():
            if self.device == "cuda":
                pin_in = self._pinned_in[:b]
                pin_in.numpy()[...] = raw  # host-side cast into pinned memory
                with torch.cuda.stream(self._stream):
                    x = pin_in.to("cuda", non_blocking=True)
                    y = self._decode_tensor(x) * self.phase_max_rad
                    pin_out = self._pinned_out[:b]
                    pin_out.copy_(y, non_blocking=True)
                self._stream.synchronize()
                return pin_out.numpy().copy()
            x = torch.from_numpy(np.asarray(raw, dtype=np.float32))
            return (self._decode_tensor(x) * self.phase_max_rad).numpy()

    def warmup(self, n: int = 2) -> None:
        """Run a few batches so first-frame latency does not include lazy initialisation."""
        raw = self._probe_frames(min(self.max_batch, 4))
        for _ in range(n):
            self(raw)

    def _probe_frames(self, b: int) -> np.ndarray:
        """Plausible raw frames: the model's own encoder on smooth random phase, in ADU."""
        import torch

        g = torch.Generator().manual_seed(0)
        n = self.field_size
        coarse = torch.rand((b, 1, 8, 8), generator=g)
        phase = torch.nn.functional.interpolate(coarse, size=(n, n), mode="bicubic")[:, 0]
        phase = phase.clamp(0, 1) * self.phase_max_rad
        with torch.no_grad():
            enc = self.model.encoder.to("cpu")
            inten = enc(phase)
            self.model.to(self.device)
        # intensity → ADU through the affine map's inverse
        adu = (inten.numpy() - self._shift) / self._scale
        return adu.astype(np.float32)

    def _choose_runtime(self, runtime: str, tol: float, cache: Path | str | None) -> None:
        """Pick the CPU decoder runtime (see the module docstring); eager on any failure."""
        import torch

        from dmicro_hw.models.runtime import CPU_RUNTIMES, Standardised, select_runtime

        if runtime != "auto" and runtime not in CPU_RUNTIMES:
            raise ConfigError(
                f"decoder runtime must be 'auto' or one of {list(CPU_RUNTIMES)}, got {runtime!r}"
            )
        candidates = ["onnx", "compiled"] if runtime == "auto" else [runtime]
        net = Standardised(self.model.decoder, self.model.frame_mean, self.model.frame_std)
        raw = self._probe_frames(min(self.max_batch, 4))
        sample = torch.from_numpy(raw) * self._scale + self._shift
        try:
            sel = select_runtime(
                net,
                sample,
                candidates,
                tol=tol,
                cache_dir=cache,
                threads=torch.get_num_threads(),
                max_batch=self.max_batch,
                build_if_missing=("onnx",) if runtime == "auto" else (runtime,),
            )
        except Exception as e:  # noqa: BLE001 - a faster runtime is optional, decoding is not
            log.info("decoder runtime: eager (selection failed: %s: %s)", type(e).__name__, e)
            self.runtime_report = {"selected": "eager", "reason": f"selection failed: {e}"}
            return
        if sel.runtime.name != "eager":
            self.runtime = sel.runtime
        else:  # the module itself, now with channels_last weights
            self.model.decoder.to(memory_format=torch.channels_last)
        self.runtime_report = {
            "selected": sel.runtime.name,
            "reason": sel.reason,
            "candidates": sel.report,
        }

    def _choose_autocast(self, force: bool, tol: float) -> Any:
        import torch

        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        raw = self._probe_frames(min(self.max_batch, 4))
        with torch.inference_mode():
            x = torch.from_numpy(raw).to("cuda")
            ref = self._decode_tensor(x)
            self.autocast_dtype = dtype
            try:
                low = self._decode_tensor(x)
                err = float((low - ref).abs().max())
            except RuntimeError as e:  # op without low-precision kernel
                log.info("autocast unavailable (%s); using float32", e)
                self.autocast_dtype = None
                return None
        self.autocast_error = err
        if force or err <= tol:
            log.info("autocast %s on: max |Δ| %.2e of normalised phase", dtype, err)
            return dtype
        log.info("autocast %s off: max |Δ| %.2e > %.1e", dtype, err, tol)
        return None

    def info(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "autocast": str(self.autocast_dtype).replace("torch.", "")
            if self.autocast_dtype
            else "off",
            "autocast_max_error": self.autocast_error,
            "field_size": self.field_size,
            "compression": self.compression,
            "input_shape": list(self.input_shape),
            "phase_max_rad": self.phase_max_rad,
            "max_batch": self.max_batch,
            "consistency": self.measurement is not None,
            "measurement_model": type(self.measurement).__name__ if self.measurement else None,
            "refine_iterations": self.refine.iterations,
            "refine_prior_weight": self.refine.prior_weight,
            "pixel_scale": self.pixel_scale,
            "decoder_runtime": self.runtime_report.get("selected", "eager"),
            "decoder_runtime_reason": self.runtime_report.get("reason"),
        }


class ReconWorker(threading.Thread):
    """Lossy ring consumer: decode batches, append phase + status to the run store in t order.

    ``stop_after(deadline_s)`` bounds the drain at the end of a run: frames not decoded by then
    are stored as skipped.
    """

    def __init__(
        self,
        ring: FrameRing,
        writer: RunWriter,
        recon: Reconstructor,
        consumer: str = "recon",
        batch: int = 8,
        on_phase: Any = None,
    ) -> None:
        super().__init__(name="dmicro-recon", daemon=True)
        self.ring = ring
        self.writer = writer
        self.recon = recon
        self.consumer = consumer
        self.batch = int(batch)
        self.on_phase = on_phase  # callback(frame_ids, phase) for the live preview
        self.next_seq = ring.published
        ring.add_consumer(consumer, lossy=True)
        self.decoded = 0
        self.skipped = 0
        self.errors = 0
        self.batch_ms: list[float] = []
        self.latency_ms: list[float] = []
        self._deadline: float | None = None
        self.error: BaseException | None = None

    def stop_after(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def _skip(self, n: int) -> None:
        if n > 0:
            self.writer.append_phase(None, np.full(n, RECON_SKIPPED, dtype=np.uint8))
            self.skipped += n

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - reported by the pipeline
            log.info("reconstruction worker stopped: %s: %s", type(e).__name__, e)
            log.debug("reconstruction worker failure", exc_info=True)
            self.error = e
        finally:
            try:
                # whatever was never reached (deadline, failure) is marked skipped
                self._skip(self.ring.published - self.next_seq)
                self.writer.flush_phase()
            except Exception as e:  # noqa: BLE001
                log.info("could not flush phase: %s", e)
                self.error = self.error or e

    def _loop(self) -> None:
        while True:
            if self._deadline is not None and time.monotonic() > self._deadline:
                return
            b = self.ring.get(self.consumer, self.batch, timeout=0.05)
            if b is None:
                if self.ring.finished(self.consumer):
                    return
                continue
            self._skip(b.seq0 - self.next_seq)
            t0 = time.perf_counter()
            chi2 = None
            try:
                phase, chi2 = self.recon.decode(b.data)
                status = decode_status(phase)
                self.errors += int((status == RECON_ERROR).sum())
                if chi2 is not None:  # no consistency figure for a frame whose phase is NaN
                    chi2 = np.where(status == RECON_OK, chi2, np.nan).astype(np.float32)
            except Exception as e:  # noqa: BLE001 - a decode failure must not stop acquisition
                log.error("decoding frames %d..%d failed: %s", b.seq0, b.seq0 + b.n - 1, e)
                log.debug("decode failure", exc_info=True)
                phase = None
                status = np.full(b.n, RECON_ERROR, dtype=np.uint8)
                self.errors += b.n
            t1 = time.perf_counter()
            self.writer.append_phase(phase, status, chi2)
            self.next_seq = b.seq0 + b.n
            if phase is not None:
                self.decoded += int((status == RECON_OK).sum())
                self.batch_ms.append((t1 - t0) * 1e3)
                self.latency_ms.extend(((t1 - b.records["recv_time"]) * 1e3).tolist())
                if self.on_phase is not None:
                    self.on_phase(b.records["frame_id"], phase)
