"""Soak test of the acquisition chain (issue 12): the simulated rig, run after run in ONE process,
each run with freshly drawn device faults (dropped, late and saturated frames, sometimes a
camera timeout), decoding live. After every run:

* zero delivered frames lost: every frame the camera delivered is committed to the store
  (``frames_written == frames_received``, no ring drops, ``dmicro verify`` finds nothing), and the
  store holds exactly the frame ids that arrived;
* the camera's own losses are accounted (``camera_dropped`` ≥ the injected drops it saw);
* memory and threads stay flat: RSS and thread count after the warm-up runs may not grow.

Usage: ``python scripts/soak.py --seconds 600`` (``scripts/soak.sh``); CI runs ~25 s of it
(``tests/e2e/test_soak.py``). Prints one line per run and a JSON summary; exit 1 on any violation.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so that RSS measures what
    is still allocated rather than what the allocator keeps for reuse."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def rss_mb() -> float:
    """Resident set size of this process, MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(
    rig_path: Path, out: Path, seconds: float, rng: random.Random, recon: bool = True
) -> dict:
    from dmicro_hw.acquisition.session import Session
    from dmicro_hw.commands.verify import verify_store
    from dmicro_hw.config import load_rig_config

    faults = {
        "drop_probability": rng.choice([0.0, 0.01, 0.05]),
        "late_probability": rng.choice([0.0, 0.01]),
        "late_s": 0.01,
        "saturate_probability": rng.choice([0.0, 0.02]),
        "seed": rng.randrange(1 << 30),
    }
    if rng.random() < 0.2:
        faults["timeout_at_frame"] = rng.randrange(50, 400)
    rate = rng.choice([200.0, 500.0, 1000.0])
    rig = load_rig_config(
        rig_path,
        {"bench": {"faults": faults, "frame_rate_hz": rate}, "acquisition": {"frames": None}},
    )
    with Session(rig, duration_s=seconds, out=out, score=False, recon=recon) as s:
        s.prepare()
        s.start().wait()
        summary = s.finish()
    rep = verify_store(out)
    from dmicro_hw.acquisition.store import RunReader

    ids = RunReader(out).records()["frame_id"]
    problems = []
    if summary["frames_written"] != summary["frames_received"]:
        problems.append(
            f"delivered frames lost: received {summary['frames_received']}, "
            f"written {summary['frames_written']}"
        )
    if summary["ring_dropped"]:
        problems.append(f"ring dropped {summary['ring_dropped']}")
    if not rep["ok"]:
        problems.append(f"verify: {rep['damaged_frames']} damaged, {rep['problems']}")
    if len(ids) != summary["frames_received"] or (len(ids) > 1 and (ids[1:] <= ids[:-1]).any()):
        problems.append("stored frame ids are not the delivered ones in order")
    gaps = int((ids[1:] - ids[:-1] - 1).sum()) if len(ids) > 1 else 0
    if summary["camera_dropped"] < gaps:
        problems.append(f"camera_dropped {summary['camera_dropped']} < id gaps {gaps}")
    return {
        "rate_hz": rate,
        "faults": faults,
        "received": summary["frames_received"],
        "written": summary["frames_written"],
        "camera_dropped": summary["camera_dropped"],
        "decoded": (summary.get("recon") or {}).get("decoded"),
        "saturated": summary["frames_saturated"],
        "stop": summary["stop_reason"],
        "errors": summary["errors"],
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="total soak time")
    ap.add_argument("--run-seconds", type=float, default=5.0, help="duration of each run")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "sim-rig.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup-runs", type=int, default=2, help="runs before memory is baselined")
    ap.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    ap.add_argument("--no-recon", action="store_true", help="raw capture only (faster runs)")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="dmicro-soak-"))
    runs, rss, threads = [], [], []
    t_end = time.monotonic() + a.seconds
    try:
        i = 0
        while time.monotonic() < t_end or i < a.warmup_runs + 2:
            out = tmp / f"run{i}"
            r = one_run(a.config, out, a.run_seconds, rng, recon=not a.no_recon)
            shutil.rmtree(out, ignore_errors=True)
            gc.collect()
            trim_heap()
            r["rss_mb"] = round(rss_mb(), 1)
            r["threads"] = threading.active_count()
            runs.append(r)
            rss.append(r["rss_mb"])
            threads.append(r["threads"])
            print(
                f"run {i:3d}: {r['rate_hz']:6.0f} Hz  received {r['received']:6d}  written "
                f"{r['written']:6d}  camera dropped {r['camera_dropped']:4d}  saturated "
                f"{r['saturated']:3d}  stop {r['stop']:<14s} rss {r['rss_mb']:7.1f} MiB  "
                f"threads {r['threads']}  {'; '.join(r['problems']) or 'ok'}",
                flush=True,
            )
            i += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = a.warmup_runs
    growth = max(rss[base:]) - rss[base] if len(rss) > base else 0.0
    problems = [p for r in runs for p in r["problems"]]
    if growth > a.max_rss_growth_mb:
        problems.append(f"RSS grew {growth:.1f} MiB after warm-up (> {a.max_rss_growth_mb})")
    if len(set(threads[base:])) > 1:
        problems.append(f"thread count changed after warm-up: {threads}")
    summary = {
        "runs": len(runs),
        "frames_received": sum(r["received"] for r in runs),
        "frames_written": sum(r["written"] for r in runs),
        "delivered_lost": sum(r["received"] - r["written"] for r in runs),
        "camera_dropped": sum(r["camera_dropped"] for r in runs),
        "runs_ended_by_fault": sum(1 for r in runs if r["errors"]),
        "rss_mb": rss,
        "rss_growth_after_warmup_mb": round(growth, 1),
        "threads": threads,
        "problems": problems,
        "ok": not problems,
    }
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rss_mb", "threads")}))
    if a.json:
        a.json.write_text(json.dumps({**summary, "per_run": runs}, indent=2) + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
