"""Run inside the *peer* venv (scripts/install-optics-peers.sh), never imported by dmicro_hw:

    PEER_VENV/bin/python optics_peers_runner.py IN.npz OUT.npz

IN.npz: ``field`` (N, N) complex128, ``wavelength_m``, ``pitch_m``, ``distance_m``, ``rounds``,
``threads``. For every peer library that imports here, propagates the field by ``distance_m``
with its angular-spectrum propagator (2× zero padding where the library offers it), times it in
interleaved rounds (min per call) beside the two-FFT floor at (2N)² (torch, complex64), writes
each output (N, N) to OUT.npz under the peer's name and prints one JSON line:
``{"floor_ms": …, "peers": {name: {"status", "ms", "version", "method"}}}``.
Only numpy, torch and the peers are imported (the project is not installed in that venv).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from importlib import metadata

import numpy as np


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _pad(u: np.ndarray) -> tuple[np.ndarray, slice]:
    n = u.shape[-1]
    p = n // 2
    g = np.zeros((2 * n, 2 * n), dtype=u.dtype)
    g[p : p + n, p : p + n] = u
    return g, slice(p, p + n)


# --------------------------------------------------------------------------- adapters
# each: (field complex128 (N, N), wavelength, pitch, z) → (run() → output (N, N), method)


def odak_(u, wl, dx, z):
    import odak
    import torch

    # odak's zero_padding pads the spectrum (a 2N output), not the field: pad the field as a
    # user wanting a linear (non-circular) convolution would, and crop
    k = 2 * np.pi / wl
    n = u.shape[-1]
    p = n // 2
    f = torch.from_numpy(u.astype(np.complex64))
    fn = odak.learn.wave.band_limited_angular_spectrum

    def run():
        with torch.no_grad():
            g = torch.nn.functional.pad(f, (p, n - p, p, n - p))
            return fn(g, k, z, dx, wl, zero_padding=False)[p : p + n, p : p + n]

    return run, "odak band_limited_angular_spectrum on the field padded to 2N"


def svetlanna_(u, wl, dx, z):
    import svetlanna as sv
    import torch

    n = u.shape[-1]
    x = (torch.arange(n, dtype=torch.float32) - n // 2) * dx
    params = sv.SimulationParameters(x=x, y=x, wavelength=wl)
    fs = sv.elements.FreeSpace(
        params, distance=z, method="zpASM", total_paddings_x=n, total_paddings_y=n
    )
    w = sv.Wavefront(torch.from_numpy(u.astype(np.complex64)))

    def run():
        with torch.no_grad():
            return fs(w)

    return run, "svetlanna FreeSpace(method='zpASM'), padded to 2N"


def torchoptics_(u, wl, dx, z):
    import torch
    import torchoptics as to

    n = u.shape[-1]
    field = to.Field(torch.from_numpy(u.astype(np.complex64)), wavelength=wl, spacing=dx)

    def run():
        with torch.no_grad():
            out = field.propagate_to_z(z, propagation_method="ASM", asm_pad=(n // 2, n // 2))
            return out.data

    return run, "torchoptics Field.propagate_to_z(ASM, asm_pad N/2: 2N grid)"


def hcipy_(u, wl, dx, z):
    import hcipy

    n = u.shape[-1]
    grid = hcipy.make_uniform_grid([2 * n, 2 * n], [2 * n * dx, 2 * n * dx])
    prop = hcipy.AngularSpectrumPropagator(grid, z)
    g, sl = _pad(u)
    wf = hcipy.Wavefront(hcipy.Field(g.ravel(), grid), wl)

    def run():
        return prop.forward(wf).electric_field.shaped[sl, sl]

    return run, "hcipy.AngularSpectrumPropagator on a 2N grid"


def prysm_(u, wl, dx, z):
    from prysm.propagation import angular_spectrum

    n = u.shape[-1]
    p = n // 2

    # prysm units: wavelength µm, dx mm, z mm; Q = 2 pads the field to 2N (output 2N: crop)
    def run():
        return angular_spectrum(u, wl * 1e6, dx * 1e3, z * 1e3, Q=2)[p : p + n, p : p + n]

    return run, "prysm.propagation.angular_spectrum(Q=2): paraxial transfer function, e^-i"


def diffractsim_(u, wl, dx, z):
    import diffractsim as ds

    ds.set_backend("CPU")
    n = u.shape[-1]
    g, sl = _pad(u)
    field = ds.MonochromaticField(
        wavelength=wl, extent_x=2 * n * dx, extent_y=2 * n * dx, Nx=2 * n, Ny=2 * n
    )

    def run():
        field.E = g.copy()
        field.propagate(z)
        return field.E[sl, sl]

    return run, "diffractsim MonochromaticField.propagate on a 2N grid"


PEERS = {
    "odak": (odak_, "odak"),
    "svetlanna": (svetlanna_, "svetlanna"),
    "torchoptics": (torchoptics_, "torchoptics"),
    "hcipy": (hcipy_, "hcipy"),
    "prysm": (prysm_, "prysm"),
    "diffractsim": (diffractsim_, "diffractsim"),
}


def _as_numpy(y, n: int) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    if hasattr(y, "get"):  # cupy-like
        y = y.get()
    y = np.asarray(y)
    if hasattr(y, "data") and not isinstance(y, np.ndarray):
        y = np.asarray(y.data)
    y = np.squeeze(y)
    if y.shape != (n, n):
        raise ValueError(f"output shape {y.shape}, expected ({n}, {n})")
    return y.astype(np.complex128)


def main() -> None:
    inp, out = sys.argv[1], sys.argv[2]
    d = np.load(inp)
    u = d["field"]
    wl, dx, z = float(d["wavelength_m"]), float(d["pitch_m"]), float(d["distance_m"])
    rounds, threads = int(d["rounds"]), int(d["threads"])
    n = u.shape[-1]
    import torch

    torch.set_num_threads(threads)
    runs, report, outputs = {}, {}, {}
    # the floor: two FFTs of the (2N)² complex64 grid into preallocated outputs
    x = torch.zeros(2 * n, 2 * n, dtype=torch.complex64)
    x[:n, :n] = torch.from_numpy(u.astype(np.complex64))
    spec, res = torch.empty_like(x), torch.empty_like(x)

    def floor():
        torch.fft.fft2(x, out=spec)
        torch.fft.ifft2(spec, out=res)

    runs["floor"] = floor
    for name, (adapter, dist) in PEERS.items():
        entry = {"version": _version(dist), "method": None, "ms": None}
        try:
            run, method = adapter(u, wl, dx, z)
            entry["method"] = method
            outputs[name] = _as_numpy(run(), n)  # also the warm-up (kernels, plans)
            runs[name] = run
            bad = ~np.isfinite(outputs[name])
            entry["status"] = (
                f"non-finite output ({100 * bad.mean():.1f} % of pixels)" if bad.any() else "ok"
            )
        except ImportError as e:
            entry["status"] = f"not installed ({e.name or e})"
        except Exception as e:  # noqa: BLE001 - one peer's failure is its row, not the run's
            entry["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            traceback.print_exc(file=sys.stderr)
        report[name] = entry
    best = {k: float("inf") for k in runs}
    reps = {}
    for k, fn in runs.items():
        t0 = time.perf_counter()
        fn()
        reps[k] = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
    for _ in range(rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(reps[k]):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) * 1e3 / reps[k])
    for name in report:
        if name in runs:
            report[name]["ms"] = round(best[name], 4)
    np.savez(out, **outputs)
    print(json.dumps({"floor_ms": round(best["floor"], 4), "peers": report}))


if __name__ == "__main__":
    main()
