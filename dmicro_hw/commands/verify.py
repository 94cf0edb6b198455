"""``dmicro verify RUN``: check a run store end to end (read only).

Opens the store as every reader does (counters and required arrays must be sane), reads every
chunk of every per-frame array inside the committed ranges (CRC32C checksums, missing chunks),
checks that frames marked decoded have finite phase, and names the damaged frames. Exit 0 when the
store is intact, 5 (DataError) with one line naming the damaged frames otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer


def verify_store(run: Path | str) -> dict[str, Any]:
    """Scan ``run`` and return the report (``ok`` False when any frame is damaged)."""
    from dmicro_hw.acquisition.integrity import frame_ranges
    from dmicro_hw.acquisition.store import RECON_OK, RECON_STATUS_NAMES, RunReader

    r = RunReader(run)
    dmg = r.damage()
    frames: dict[int, str] = dmg["frames"]
    phase: dict[int, str] = dict(dmg["phase"])
    recs, _ = r.records_checked()
    status = r.recon_status()
    np_ = r.phase_committed
    if r.has_phase and np_:
        unknown = np.nonzero(~np.isin(status, list(RECON_STATUS_NAMES)))[0]
        for i in unknown:
            phase.setdefault(int(i), f"recon_status {int(status[i])} is not a known code")
        ok = np.nonzero(status == RECON_OK)[0]
        arr = r.array("phase")
        c = int(arr.chunks[0])
        for k in range(-(-np_ // c)):
            sel = ok[(ok >= k * c) & (ok < (k + 1) * c)]
            if not len(sel) or any(int(i) in phase for i in sel):
                continue
            block = np.asarray(arr[k * c : min(np_, (k + 1) * c)])
            for i in sel:
                if not np.isfinite(block[int(i) - k * c]).all():
                    phase.setdefault(int(i), "marked ok but its phase is not finite")
    fid = recs.get("frame_id", np.zeros(0, np.int64))
    good_fid = np.array([i not in frames for i in range(len(fid))], dtype=bool)
    steps = np.diff(fid[good_fid]) if good_fid.sum() > 1 else np.zeros(0, np.int64)
    sat = recs.get("saturated_px")
    n_chunks = -(-r.committed // r.chunk_frames)
    report: dict[str, Any] = {
        "store": str(r.path),
        "complete": bool(r.attrs.get("complete", False)),
        "checksums": "crc32c on every chunk" if r.checksummed else "none (older store)",
        "committed": r.committed,
        "phase_committed": np_,
        "raw_chunks": n_chunks,
        "damaged_frames": len(frames),
        "damaged_frame_indices": frame_ranges(list(frames)),
        "damaged_frame_ids": [int(fid[i]) for i in sorted(frames) if fid[i] >= 0][:1000],
        "damage": {str(i): frames[i] for i in sorted(frames)[:1000]},
        "damaged_phase": len(phase),
        "damaged_phase_indices": frame_ranges(list(phase)),
        "phase_damage": {str(i): phase[i] for i in sorted(phase)[:1000]},
        "frames_lost_before": int(recs["dropped_before"][good_fid].sum())
        if "dropped_before" in recs
        else None,
        "frame_id_resets": int((steps <= 0).sum()),
        "frames_saturated": int((sat[good_fid] > 0).sum()) if sat is not None else None,
        "recon_status": {
            RECON_STATUS_NAMES.get(int(k), str(int(k))): int((status == k).sum())
            for k in np.unique(status)
        },
        "problems": dmg["problems"],
    }
    report["ok"] = not frames and not phase and not dmg["problems"]
    return report


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        run: Path = typer.Argument(..., help="run folder or its run.zarr"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    ) -> None:
        """Check a stored run end to end: checksums, missing chunks, counters; name damaged
        frames (exit 5 when any)."""
        from rich.console import Console
        from rich.table import Table

        from dmicro_hw.errors import DataError

        rep = verify_store(run)
        console = Console()
        if as_json:
            typer.echo(json.dumps(rep, indent=2))
        else:
            t = Table(title=f"verify {rep['store']}")
            t.add_column("check")
            t.add_column("result", justify="right")
            for k in (
                "complete",
                "checksums",
                "committed",
                "phase_committed",
                "raw_chunks",
                "damaged_frames",
                "damaged_phase",
                "frames_lost_before",
                "frame_id_resets",
                "frames_saturated",
            ):
                t.add_row(k.replace("_", " "), str(rep[k]))
            for k, v in rep["recon_status"].items():
                t.add_row(f"recon_status {k}", str(v))
            console.print(t)
        if not rep["ok"]:
            parts = []
            if rep["damaged_frames"]:
                first = next(iter(rep["damage"].values()))
                parts.append(
                    f"{rep['damaged_frames']} damaged frames: {rep['damaged_frame_indices']} "
                    f"({first})"
                )
            if rep["damaged_phase"]:
                first = next(iter(rep["phase_damage"].values()))
                parts.append(
                    f"{rep['damaged_phase']} frames with damaged phase: "
                    f"{rep['damaged_phase_indices']} ({first}; `dmicro reconstruct --force` "
                    "decodes them again)"
                )
            parts.extend(rep["problems"])
            raise DataError(f"{rep['store']}: " + "; ".join(parts))
        if not as_json:
            console.print(f"[green]ok[/]: {rep['committed']} frames intact")
