"""Decoder runtimes: the same trained decoder run by eager torch, an ahead-of-time compiled graph,
ONNX Runtime (float32 or int8) or, on a GPU, float16 / CUDA graphs.

Every runtime maps a batch of frames ``(B, h, w)`` float32 (the decoder module's input, e.g.
intensity-normalised camera frames) to its output ``(B, N, N)`` float32 (normalised phase, not
clamped), exactly as the torch module it was built from.

    eager        torch, float32, channels_last weights (1.2–2× over NCHW on CPU)
    compiled     torch.export → AOTInductor package (.pt2), compiled once (minutes), loaded after
    onnx         torch.onnx export (.onnx) → ONNX Runtime CPU, float32 (graph fusions: conv+act)
    onnx-int8    the .onnx statically quantised (QDQ, per-channel int8 weights, uint8
                 activations calibrated on sample frames) → ONNX Runtime
    cuda-fp16    torch on CUDA in float16, channels_last
    cuda-graph   cuda-fp16 captured once as a CUDA graph for ``max_batch`` (smaller batches padded)

Built artefacts are cached in a folder (next to the checkpoint, see :func:`default_cache_dir`)
under a key of the weights, the module's structure, the frame shape and the library versions,
so acquisition loads a graph instead of building one. Cache files are written atomically
(temporary file + rename) and read only if they are regular files (never through a symlink).
A runtime that cannot be built here (library missing, no GPU, export failure) raises
:class:`RuntimeUnavailable` with the reason.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmicro_hw.extras import missing_message

log = logging.getLogger(__name__)

CPU_RUNTIMES = ("eager", "compiled", "onnx", "onnx-int8")
CUDA_RUNTIMES = ("cuda-fp32", "cuda-fp16", "cuda-graph")
RUNTIMES = CPU_RUNTIMES + CUDA_RUNTIMES


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot be built on this machine; the message says why."""


@dataclass
class DecoderRuntime:
    """A callable decoder: ``(B, h, w)`` float32 tensor → ``(B, N, N)`` float32 tensor (CPU
    tensors in and out for CPU runtimes; tensors on the GPU for CUDA runtimes).

    Attributes:
        name: one of :data:`RUNTIMES`.
        fn: the callable.
        build_s: seconds spent building or loading it (export, compilation, session start).
        cached: whether it was loaded from the cache instead of built.
        artifact: the cached file, if any.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    build_s: float = 0.0
    cached: bool = False
    artifact: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


# ----------------------------------------------------------------------------- cache
def default_cache_dir(checkpoint: Path | str) -> Path:
    """``CKPT.runtimes/`` beside the checkpoint when that folder is writable, else
    ``$XDG_CACHE_HOME/dmicro-hw/runtimes`` (``~/.cache/…``)."""
    ck = Path(checkpoint)
    if os.access(ck.parent, os.W_OK):
        return ck.parent / f"{ck.stem}.runtimes"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dmicro-hw" / "runtimes"


def module_key(module: nn.Module, frame_shape: Sequence[int], extra: str = "") -> str:
    """Hex key of the module's weights and buffers, its structure, the frame shape (h, w), the
    torch version and ``extra`` (e.g. other library versions)."""
    h = hashlib.sha256()
    h.update(repr(module).encode())
    h.update(f"{tuple(frame_shape)}|{torch.__version__}|{extra}".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _regular_file(p: Path) -> bool:
    """An existing regular file that is not a symlink (cache entries are never followed)."""
    try:
        st = p.lstat()
    except FileNotFoundError:
        return False
    import stat

    return stat.S_ISREG(st.st_mode)


@contextlib.contextmanager
def _atomic_target(dest: Path):
    """Yield a temporary path in ``dest``'s folder; renamed onto ``dest`` on success."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------- builders
def _eager(module: nn.Module, **_: Any) -> DecoderRuntime:
    mod = module.to(memory_format=torch.channels_last).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return mod(x)

    return DecoderRuntime("eager", fn)


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export ``module`` to ONNX with a dynamic batch axis (TorchScript exporter: ~1 s; the
    torch.export-based one when that is the only one left)."""
    try:
        import onnx  # noqa: F401  (the int8 step and ONNX Runtime both need it)
    except ImportError as e:
        raise RuntimeUnavailable(missing_message("onnx", "the onnx runtime")) from e
    kwargs = dict(input_names=["frames"], output_names=["phase"], opset_version=17)
    with _atomic_target(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamic_axes={"frames": {0: "batch"}, "phase": {0: "batch"}},
                dynamo=False,
                **kwargs,
            )
        except Exception as legacy_error:  # noqa: BLE001 - try the other exporter
            log.debug("TorchScript ONNX export failed (%s); trying torch.export", legacy_error)
            try:
                batch = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(
                    module,
                    (example,),
                    str(tmp),
                    dynamic_shapes=({0: batch},),
                    dynamo=True,
                    **kwargs,
                )
            except Exception as e:  # noqa: BLE001
                raise RuntimeUnavailable(f"ONNX export failed: {e}") from e


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting between batches: the camera, writer and scorer share these cores
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_fn(sess: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    name = sess.get_inputs()[0].name

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(sess.run(None, {name: x})[0])

    return fn


def _ort_version() -> str:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeUnavailable(missing_message("onnxruntime", "the onnx runtime")) from e
    return ort.__version__


def _onnx(module: nn.Module, example: torch.Tensor, path: Path, threads: int, **_: Any):
    t0 = time.perf_counter()
    cached = _regular_file(path)
    if not cached:
        _onnx_export(module, example, path)
    sess = _ort_session(path, threads)
    return DecoderRuntime("onnx", _ort_fn(sess), time.perf_counter() - t0, cached, path)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs one root-logger line per tensor; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _FrameReader:
    """ONNX Runtime calibration reader over sample frames (B, h, w), one small batch at a time."""

    def __init__(self, name: str, frames: np.ndarray, batch: int = 4) -> None:
        self._items = iter(
            [{name: frames[s : s + batch]} for s in range(0, frames.shape[0], batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _onnx_int8(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    threads: int,
    calibration: torch.Tensor | None = None,
    **_: Any,
) -> DecoderRuntime:
    if calibration is None:
        raise RuntimeUnavailable("onnx-int8 needs calibration frames")
    calib = calibration.detach().to("cpu", torch.float32).contiguous().numpy()
    t0 = time.perf_counter()
    cached = _regular_file(path)
    if not cached:
        try:
            from onnxruntime.quantization import (
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_static,
            )
            from onnxruntime.quantization.shape_inference import quant_pre_process
        except ImportError as e:
            raise RuntimeUnavailable(f"onnxruntime.quantization is unavailable: {e}") from e
        with tempfile.TemporaryDirectory() as td:
            fp32, pre = Path(td) / "fp32.onnx", Path(td) / "pre.onnx"
            _onnx_export(module, example, fp32)
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            with _atomic_target(path) as tmp, _quiet_root_logger():
                quantize_static(
                    str(pre),
                    str(tmp),
                    _FrameReader("frames", calib),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
    sess = _ort_session(path, threads)
    return DecoderRuntime("onnx-int8", _ort_fn(sess), time.perf_counter() - t0, cached, path)


def _compiled(
    module: nn.Module, example: torch.Tensor, path: Path, max_batch: int = 64, **_: Any
) -> DecoderRuntime:
    """torch.export + AOTInductor: a C++/OpenMP shared library packaged as .pt2 (needs a C++
    compiler once, to build it; loading it later compiles nothing)."""
    t0 = time.perf_counter()
    cached = _regular_file(path)
    try:
        from torch._inductor import aoti_compile_and_package, aoti_load_package
    except ImportError as e:
        raise RuntimeUnavailable(f"this torch has no AOTInductor: {e}") from e
    if not cached:
        mod = copy.deepcopy(module).to(memory_format=torch.channels_last).eval()
        try:
            batch = torch.export.Dim("batch", min=1, max=max(2, int(max_batch)))
            with torch.no_grad():
                ep = torch.export.export(mod, (example,), dynamic_shapes=({0: batch},))
                with _atomic_target(path) as tmp:
                    aoti_compile_and_package(ep, package_path=str(tmp))
        except RuntimeUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - compiler missing, unsupported op, …
            raise RuntimeUnavailable(f"AOTInductor compilation failed: {e}") from e
    runner = aoti_load_package(str(path))

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > max_batch:
            return torch.cat([fn(c) for c in x.split(max_batch)])
        with torch.inference_mode():
            return runner(x.contiguous())

    return DecoderRuntime("compiled", fn, time.perf_counter() - t0, cached, path)


def _need_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeUnavailable("no CUDA device")


def _cuda(module: nn.Module, dtype: torch.dtype, name: str) -> DecoderRuntime:
    _need_cuda()
    mod = copy.deepcopy(module).to("cuda", dtype).to(memory_format=torch.channels_last).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return mod(x.to("cuda", dtype, non_blocking=True)).float()

    return DecoderRuntime(name, fn)


def _cuda_fp32(module: nn.Module, **_: Any) -> DecoderRuntime:
    return _cuda(module, torch.float32, "cuda-fp32")


def _cuda_fp16(module: nn.Module, **_: Any) -> DecoderRuntime:
    return _cuda(module, torch.float16, "cuda-fp16")


def _cuda_graph(module: nn.Module, example: torch.Tensor, max_batch: int = 64, **_):
    """float16 decoder captured as one CUDA graph at ``max_batch`` (launch overhead paid once);
    smaller batches are padded into the static input."""
    _need_cuda()
    t0 = time.perf_counter()
    mod = copy.deepcopy(module).to("cuda", torch.float16).to(memory_format=torch.channels_last)
    mod.eval()
    static_in = torch.zeros((max_batch, *example.shape[1:]), device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up (cuDNN autotuning) outside the capture
                mod(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = mod(static_in)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > max_batch:
            return torch.cat([fn(c) for c in x.split(max_batch)])
        b = x.shape[0]
        static_in[:b].copy_(x, non_blocking=True)
        graph.replay()
        return static_out[:b].float()

    return DecoderRuntime("cuda-graph", fn, time.perf_counter() - t0)


def artifact_path(
    name: str,
    module: nn.Module,
    frame_shape: Sequence[int],
    cache_dir: Path | str,
    *,
    max_batch: int = 64,
    calibration: torch.Tensor | None = None,
) -> Path | None:
    """The cache file of runtime ``name`` for this module (None: the runtime keeps nothing).

    The name carries :func:`module_key` plus what else changes the artefact: the ONNX Runtime
    version, the int8 calibration frames, the compiled graph's largest batch."""
    if name not in ("compiled", "onnx", "onnx-int8"):
        return None
    cache = Path(cache_dir)
    if name == "compiled":
        return cache / f"decoder-{module_key(module, frame_shape)}-b{int(max_batch)}.pt2"
    key = module_key(module, frame_shape, extra=_ort_version())
    if name == "onnx":
        return cache / f"decoder-{key}.onnx"
    if calibration is None:
        raise RuntimeUnavailable("onnx-int8 needs calibration frames")
    calib = calibration.detach().to("cpu", torch.float32).contiguous().numpy()
    return cache / f"decoder-{key}-{hashlib.sha256(calib.tobytes()).hexdigest()[:8]}-int8.onnx"


class Standardised(nn.Module):
    """``decoder((x − mean) / std)``: a decoder with its fixed input standardisation, as one
    module to export (:meth:`DMicroModel.decode` without the encoder around it)."""

    def __init__(self, decoder: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer("mean", mean.detach().clone().reshape(()))
        self.register_buffer("std", std.detach().clone().reshape(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder((x - self.mean) / self.std)


_BUILDERS: dict[str, Callable[..., DecoderRuntime]] = {
    "eager": _eager,
    "compiled": _compiled,
    "onnx": _onnx,
    "onnx-int8": _onnx_int8,
    "cuda-fp32": _cuda_fp32,
    "cuda-fp16": _cuda_fp16,
    "cuda-graph": _cuda_graph,
}


def build_runtime(
    name: str,
    module: nn.Module,
    frame_shape: Sequence[int],
    *,
    cache_dir: Path | str | None = None,
    threads: int | None = None,
    max_batch: int = 64,
    calibration: torch.Tensor | None = None,
) -> DecoderRuntime:
    """Build (or load from ``cache_dir``) the runtime ``name`` for ``module``.

    Args:
        module: float32 CPU module, ``(B, h, w)`` → ``(B, N, N)``; not modified (a copy is
            converted where a runtime needs it).
        frame_shape: (h, w) of the input frames.
        cache_dir: where built graphs are kept (a temporary folder when None: nothing reused).
        threads: CPU threads for ONNX Runtime (default: torch's).
        max_batch: largest batch for the compiled graph and the CUDA graph.
        calibration: sample frames (n, h, w) for int8 calibration.

    Raises:
        RuntimeUnavailable: with the reason this runtime cannot run here.
        ValueError: unknown name.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown decoder runtime {name!r}; one of {list(RUNTIMES)}")
    module = module.eval()
    example = torch.zeros((2, *frame_shape), dtype=torch.float32)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dmicro-rt-"))
        cache = Path(cache_dir)
        kw = dict(
            example=example,
            cache=cache,
            threads=threads or torch.get_num_threads(),
            max_batch=int(max_batch),
            calibration=calibration,
        )
        kw["path"] = artifact_path(
            name, module, frame_shape, cache, max_batch=max_batch, calibration=calibration
        )
        rt = _BUILDERS[name](module if name != "eager" else copy.deepcopy(module), **kw)
    if not rt.build_s:
        rt.build_s = time.perf_counter() - t0
    log.debug("decoder runtime %s ready in %.2f s (cached: %s)", name, rt.build_s, rt.cached)
    return rt


# ----------------------------------------------------------------------------- selection
@dataclass
class Selection:
    """Outcome of :func:`select_runtime`: the runtime chosen and, per candidate, why it was or
    was not (``{name: {"max_abs_err", "batch_ms", "status"}}``)."""

    runtime: DecoderRuntime
    report: dict[str, dict[str, Any]]
    reason: str


def _time_call(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, reps: int) -> float:
    fn(x)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def select_runtime(
    module: nn.Module,
    sample: torch.Tensor,
    candidates: Sequence[str],
    *,
    tol: float = 2e-3,
    cache_dir: Path | str | None = None,
    threads: int | None = None,
    max_batch: int = 64,
    reps: int = 3,
    build_if_missing: Sequence[str] = ("onnx",),
) -> Selection:
    """The fastest runtime among ``candidates`` whose output on ``sample`` (n, h, w) stays within
    ``tol`` (max |Δ|, output units: normalised phase) of eager float32; eager otherwise.

    Candidates other than ``build_if_missing`` are used only when already in the cache (an
    AOTInductor build takes minutes, not something to do when acquisition starts); build them
    with ``dmicro bench decoders``. Every decision is logged with its reason.
    """
    sample = sample.detach().to("cpu", torch.float32)
    eager = build_runtime("eager", module, sample.shape[1:])
    with torch.inference_mode():
        ref = eager(sample)
    report: dict[str, dict[str, Any]] = {
        "eager": {"status": "reference", "max_abs_err": 0.0, "batch_ms": None}
    }
    best, best_ms = eager, None
    ok: list[tuple[str, DecoderRuntime]] = []
    for name in candidates:
        if name == "eager" or name in report:
            continue
        try:
            if name not in build_if_missing:
                path = (
                    artifact_path(
                        name,
                        module,
                        sample.shape[1:],
                        cache_dir,
                        max_batch=max_batch,
                        calibration=sample,
                    )
                    if cache_dir is not None
                    else None
                )
                if path is not None and not _regular_file(path):
                    report[name] = {"status": "not built (`dmicro bench decoders` builds it)"}
                    continue
            rt = build_runtime(
                name,
                module,
                sample.shape[1:],
                cache_dir=cache_dir,
                threads=threads,
                max_batch=max_batch,
                calibration=sample,
            )
        except RuntimeUnavailable as e:
            report[name] = {"status": f"unavailable: {e}"}
            log.info("decoder runtime %s unavailable: %s", name, e)
            continue
        with torch.inference_mode():
            out = rt(sample).to("cpu", torch.float32)
        err = float((out - ref).abs().max()) if out.shape == ref.shape else float("inf")
        if not np.isfinite(err) or err > tol:
            status = f"rejected: max |Δ| {err:.2e} > {tol:.1e}"
            report[name] = {"status": status, "max_abs_err": err}
            log.info("decoder runtime %s rejected: max |Δ| %.2e > tol %.1e", name, err, tol)
            continue
        report[name] = {"status": "ok", "max_abs_err": err}
        ok.append((name, rt))
    if not ok:
        why = "; ".join(f"{n} {r['status']}" for n, r in report.items() if n != "eager")
        reason = f"eager: {why or 'no other runtime requested'}"
        log.info("decoder runtime: %s", reason)
        return Selection(eager, report, reason)
    # time the survivors and eager, interleaved, on the sample batch
    times = {"eager": _time_call(eager, sample, reps)}
    for name, rt in ok:
        times[name] = _time_call(rt, sample, reps)
    for name, ms in times.items():
        report[name]["batch_ms"] = round(ms, 3)
    for name, rt in ok:
        if best_ms is None or times[name] < best_ms:
            best, best_ms = rt, times[name]
    if best_ms is None or times["eager"] <= best_ms:
        best = eager
    reason = (
        f"{best.name}: fastest within max |Δ| {tol:.1e} of eager "
        f"({times[best.name]:.1f} ms / {sample.shape[0]} frames)"
    )
    log.info("decoder runtime %s", reason)
    return Selection(best, report, reason)
