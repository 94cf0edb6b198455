"""``dmicro bench export``: reconstruction quality of the float filter vs its exported pattern.

For a trained LFF model (``--checkpoint``, or a small one trained here in a few minutes), the
learned filter is exported for the rig's SLM at several bit depths (default 6, 8, 10, 12) in the
``phase`` and ``amplitude_phase`` modes; the SLM model realises each pattern (LUT, fringing, fill
factor, area average, pupil) and the *checkpoint's own decoder* reconstructs held-out synthetic
cells from the frames the realised filter produces (sensor noise from a fixed seed, so every row
sees the same noise). One table + JSON: PSNR/SSIM on normalised phase, phase RMSE, ΔPSNR vs the
float filter, and the realised filter's correlation with the trained one and its light throughput.

Optics: field size, pixel size and compression come from the checkpoint; wavelength, focal length
and magnification (the scale filter sample → SLM pixels) from the rig config; the SLM (pixels,
pitch, fill factor, fringing, LUT) from the rig, with the bit depth and mode varied.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import typer

from dmicro_hw.commands._choices import Device, value
from dmicro_hw.safe_io import write_text_safely

DEFAULT_BITS = "6,8,10,12"


def _quick_train_config(seed: int):
    """A small LFF model: 64×64 cells, ×16 compression, U-Net (≈4 min, 2 CPU cores)."""
    from dmicro_hw.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "seed": seed,
            "device": "auto",
            "optics": {"field_size": 64, "compression": 16},
            "sensor": {"noise": True, "photons_per_pixel": 1000.0},
            "encoder": {"kind": "lff"},
            "decoder": {"kind": "unet", "base_channels": 16, "depth": 3},
            "data": {"kind": "synthetic", "n_train": 256, "n_val": 32, "n_test": 64, "seed": 0},
            "stages": [
                {"name": "optics", "epochs": 3, "lr": 2e-2, "batch_size": 16, "loss": "l1"},
                {"name": "decoder", "epochs": 6, "lr": 2e-3, "batch_size": 16, "loss": "l1"},
                {"name": "joint", "epochs": 2, "lr": 5e-4, "batch_size": 16, "loss": "ssim_l1"},
            ],
        }
    )


def _fixed_filter(h):
    """filter_transform (an nn.Module, as the encoder's slot may hold a registered one — e.g. a
    hardware-aware checkpoint's export-in-the-loop) that replaces the filter by a precomputed one.
    """
    from torch import nn

    class FixedFilter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("h", h)

        def forward(self, _ideal):
            return self.h

    return FixedFilter()


def run_export_bench(
    model,
    train_cfg,
    rig,
    test_set,
    bits: list[int],
    modes: list[str],
    device,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Evaluate the float filter and every (mode, bits) export; returns the JSON-able result."""
    import numpy as np
    import torch

    from dmicro_hw.export import (
        SLMCalibration,
        SLMExporter,
        filter_correlation,
        resample_lut,
        safe_polar_parts,
    )
    from dmicro_hw.training.trainer import evaluate

    enc = model.encoder
    optics = train_cfg.optics.model_copy(
        update={
            "wavelength_m": rig.optics.wavelength_m,
            "focal_length_m": rig.optics.focal_length_m,
            "magnification": rig.optics.magnification,
        }
    )
    with torch.no_grad():
        h = enc.filter().detach().to(torch.complex64).cpu()
    pupil = enc.filter.pupil.detach().cpu()
    _, ph = safe_polar_parts(h)
    targets = {"phase": torch.polar(torch.ones_like(ph), ph) * pupil, "amplitude_phase": h}
    rig_lut = None
    if rig.slm.lut is not None:
        from dmicro_hw.export import lut_table

        rig_lut = lut_table(rig.slm)

    saved = enc.filter_transform
    rows: list[dict[str, Any]] = []

    def score(label: str, mode: str | None, b: int | None, realised) -> None:
        t0 = time.perf_counter()
        enc.filter_transform = None if realised is None else _fixed_filter(realised.to(device))
        m = evaluate(model, test_set, device, batch_size=batch_size)
        hr = h if realised is None else realised
        row = {
            "label": label,
            "mode": mode,
            "bits": b,
            "psnr_db": m["psnr"],
            "ssim": m["ssim"],
            "rmse_rad": m["rmse_rad"],
            "corr_trained": filter_correlation(hr, h, pupil),
            "corr_target": filter_correlation(hr, targets[mode], pupil) if mode else 1.0,
            "throughput": float(hr.abs().square().sum() / h.abs().square().sum()),
            "eval_s": time.perf_counter() - t0,
        }
        rows.append(row)

    try:
        score("float filter (trained)", None, None, None)
        for mode in modes:
            for b in [None, *bits]:
                slm = rig.slm.model_copy(update={"bit_depth": b or 16, "mode": mode, "lut": None})
                cal = None
                if rig_lut is not None:
                    cal = SLMCalibration(lut_table=resample_lut(rig_lut, b or 16))
                ex = SLMExporter(optics, slm, cal, window=True)
                with torch.no_grad():
                    realised = ex.realise(ex.pattern(h, ste=False, rounding=b is not None))
                label = f"{mode}, {b}-bit" if b else f"{mode}, unquantised"
                score(label, mode, b, realised)
    finally:
        enc.filter_transform = saved
    ref = rows[0]["psnr_db"]
    for r in rows:
        r["delta_psnr_db"] = r["psnr_db"] - ref
    amp = h.abs()[pupil > 0]
    return {
        "rows": rows,
        "filter": {
            "field_size": int(h.shape[-1]),
            "amplitude_min": float(amp.min()),
            "amplitude_mean": float(amp.mean()),
            "phase_std_rad": float(ph[pupil > 0].std()),
        },
        "slm": {
            "pixels": list(rig.slm.pixels),
            "pitch_m": rig.slm.pitch_m,
            "fill_factor": rig.slm.fill_factor,
            "fringing_px": rig.slm.fringing_px,
            "phase_range_rad": rig.slm.phase_range_rad,
            "lut": "rig" if rig_lut is not None else "linear",
            "slm_pixels_per_filter_sample": optics.fourier_pitch_m / rig.slm.pitch_m,
        },
        "optics": optics.model_dump(mode="json"),
        "test_samples": len(test_set),
        "noise": bool(train_cfg.sensor.noise),
        "float_psnr_db": ref,
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("export")
    def bench_export(
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="trained LFF checkpoint; default: train a small one here"
        ),
        config: Path | None = typer.Option(
            None, "--config", "-c", help="rig.yaml (SLM + Fourier optics); default: built-in"
        ),
        bits: str = typer.Option(DEFAULT_BITS, "--bits", help="comma-separated SLM bit depths"),
        modes: str = typer.Option("phase,amplitude_phase", "--modes", help="export modes"),
        n_test: int = typer.Option(64, "--n-test", min=1, help="held-out synthetic cells"),
        out: Path = typer.Option(Path("runs/bench/export"), "--out", "-o", help="output folder"),
        device: Device = typer.Option(Device.auto, "--device", help="torch device"),
        seed: int = typer.Option(0, "--seed", help="training seed (when training here)"),
    ) -> None:
        """PSNR/SSIM of the float filter vs the exported SLM pattern at several bit depths."""
        import torch
        from rich.table import Table

        from dmicro_hw.config import RigConfig, load_rig_config
        from dmicro_hw.data import build_datasets
        from dmicro_hw.errors import CheckpointError, ConfigError
        from dmicro_hw.export import MODES
        from dmicro_hw.progress import make_console
        from dmicro_hw.training.checkpoint import build_model_from_checkpoint, save_checkpoint
        from dmicro_hw.training.progress import RichProgress
        from dmicro_hw.training.trainer import Trainer, resolve_device

        device = value(device)
        console = make_console()
        try:
            bit_list = [int(b) for b in bits.split(",") if b.strip()]
        except ValueError:
            raise ConfigError(f"--bits: comma-separated integers, got {bits!r}") from None
        if not bit_list or any(not 1 <= b <= 16 for b in bit_list):
            raise ConfigError(f"--bits: bit depths between 1 and 16, got {bits!r}")
        mode_list = [m.strip() for m in modes.split(",") if m.strip()]
        if not mode_list or any(m not in MODES for m in mode_list):
            raise ConfigError(f"--modes: from {', '.join(MODES)}, got {modes!r}")
        rig = load_rig_config(config) if config is not None else RigConfig()
        dev = resolve_device(device)
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
        out.mkdir(parents=True, exist_ok=True)
        t_train = 0.0
        if checkpoint is not None:
            model, tcfg = build_model_from_checkpoint(checkpoint, dev)
            source = str(checkpoint)
        else:
            tcfg = _quick_train_config(seed)
            console.print(
                "[bold]dmicro bench export[/]: training a small LFF model (64×64, ×16, "
                f"U-Net) on {dev} — pass --checkpoint to use your own"
            )
            t0 = time.perf_counter()
            trainer = Trainer(tcfg, out_dir=out, device=str(dev), save=False)
            trainer.progress = RichProgress(console)
            trainer.fit()
            trainer.load_best()
            t_train = time.perf_counter() - t0
            model = trainer.model.eval()
            checkpoint = save_checkpoint(out / "bench-model.pt", model, tcfg)
            source = f"trained here ({t_train:.0f} s) → {checkpoint}"
        if tcfg.encoder.kind != "lff":
            raise CheckpointError(f"{checkpoint}: encoder {tcfg.encoder.kind!r} has no filter")
        data = (
            tcfg.data.model_copy(update={"n_test": n_test})
            if tcfg.data.kind == "synthetic"
            else tcfg.data
        )
        _, _, test_set = build_datasets(data, tcfg.optics.field_size)
        res = run_export_bench(model.to(dev), tcfg, rig, test_set, bit_list, mode_list, dev)
        res.update(
            model=source,
            rig=str(config) if config else "built-in defaults",
            rig_id=rig.rig_id,
            device=str(dev),
            train_s=t_train,
            compression=tcfg.optics.compression,
        )
        s = res["slm"]
        table = Table(
            title=(
                f"export quality — {res['test_samples']} held-out cells, "
                f"{tcfg.optics.field_size}×{tcfg.optics.field_size} ×{tcfg.optics.compression}, "
                f"SLM {s['pixels'][0]}×{s['pixels'][1]} @ {s['pitch_m'] * 1e6:g} µm, "
                f"{s['slm_pixels_per_filter_sample']:.2f} px/sample, fill {s['fill_factor']}, "
                f"fringing {s['fringing_px']} px, LUT {s['lut']}"
            )
        )
        for col in (
            "filter",
            "bits",
            "PSNR (dB)",
            "ΔPSNR",
            "SSIM",
            "RMSE (rad)",
            "corr. H",
            "corr. target",
            "light",
        ):
            table.add_column(col, justify="left" if col == "filter" else "right")
        for r in res["rows"]:
            kind = {"phase": "phase", "amplitude_phase": "amp+phase"}.get(r["mode"], "float H")
            b = "–" if r["mode"] is None else ("∞" if r["bits"] is None else str(r["bits"]))
            table.add_row(
                kind,
                b,
                f"{r['psnr_db']:.2f}",
                f"{r['delta_psnr_db']:+.2f}",
                f"{r['ssim']:.4f}",
                f"{r['rmse_rad']:.4f}",
                f"{r['corr_trained']:.4f}",
                f"{r['corr_target']:.4f}",
                f"{r['throughput']:.3f}",
            )
        console.print(table)
        console.print(
            "float H: the trained filter; phase: arg H exported (amplitude dropped); amp+phase: "
            "double-phase checkerboard; bits ∞: no rounding. corr. H / corr. target: |⟨H_r, H⟩| "
            "normalised, against the trained H / the mode's target; light: Σ|H_r|² / Σ|H|²."
        )
        f = res["filter"]
        console.print(
            f"trained filter: |H| in [{f['amplitude_min']:.3f}, 1], mean {f['amplitude_mean']:.3f}"
            f"; phase std {f['phase_std_rad']:.3f} rad. Model: {source}"
        )
        path = out / "bench_export.json"
        write_text_safely(path, json.dumps(res, indent=2, default=_json_default))
        console.print(f"wrote {path}")


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)
