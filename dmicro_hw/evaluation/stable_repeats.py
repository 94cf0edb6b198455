"""Repeat a benchmark until its figures are stable, recording the machine's load each time.

A benchmark on a shared machine moves with the load; one run says little.
:func:`repeat_until_stable` runs it again until the last ``window`` runs agree — for every
figure, (max − min) / |median| ≤ ``tol`` over the window — or until ``max_repeats`` runs, and
reports each figure's median and spread over that window, so a README number can be reproduced
(or seen not to be).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmicro_hw.evaluation.machine_load import LoadMeter

log = logging.getLogger(__name__)


@dataclass
class StableResult:
    """Every run's result and load, and the figures over the last ``window`` runs."""

    runs: list[Any]
    loads: list[dict[str, Any]]
    stable: bool
    window: int
    tol: float
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "repeats": len(self.runs),
            "stable": self.stable,
            "window": self.window,
            "tolerance": self.tol,
            "figures": self.figures,
            "loads": self.loads,
        }


def spread(values: list[float]) -> float:
    """(max − min) / |median| (0 for identical values; inf when the median is 0 and they
    differ)."""
    v = np.asarray(values, dtype=float)
    lo, hi, med = float(v.min()), float(v.max()), float(np.median(v))
    if hi == lo:
        return 0.0
    return (hi - lo) / abs(med) if med else math.inf


def _figures(per_run: list[dict[str, float]], window: int) -> dict[str, dict[str, Any]]:
    last = per_run[-window:]
    out = {}
    for name in last[-1]:
        vals = [float(f[name]) for f in last if name in f and f[name] is not None]
        if not vals:
            continue
        out[name] = {
            "median": float(np.median(vals)),
            "spread": round(spread(vals), 4),
            "values": vals,
        }
    return out


def repeat_until_stable(
    run: Callable[[int], Any],
    figures: Callable[[Any], dict[str, float]],
    *,
    min_repeats: int = 3,
    max_repeats: int = 6,
    window: int = 3,
    tol: float = 0.1,
    on_repeat: Callable[[int, dict[str, Any], bool], None] | None = None,
) -> StableResult:
    """Call ``run(i)`` (i = 0, 1, …) until stable (module docstring) or ``max_repeats`` runs.

    Args:
        figures: the numbers of one run that must agree, by name (None values are skipped).
        min_repeats: runs before stability is judged (≥ ``window`` makes the judgement real).
        window: how many last runs must agree (1: the first run is taken as stable).
        on_repeat: called after each run with (i, its load, stable so far).
    """
    if not 1 <= window <= max_repeats or min_repeats > max_repeats:
        raise ValueError("need 1 ≤ window ≤ max_repeats and min_repeats ≤ max_repeats")
    runs: list[Any] = []
    loads: list[dict[str, Any]] = []
    per_run: list[dict[str, float]] = []
    stable = False
    for i in range(max_repeats):
        meter = LoadMeter()
        res = run(i)
        loads.append(meter.stop())
        runs.append(res)
        per_run.append(figures(res))
        if len(runs) >= max(min_repeats, window):
            figs = _figures(per_run, window)
            stable = all(f["spread"] <= tol for f in figs.values())
        if on_repeat is not None:
            on_repeat(i, loads[-1], stable)
        if stable:
            break
    if not stable:
        log.info("figures not stable within %.0f %% after %d runs", 100 * tol, len(runs))
    return StableResult(runs, loads, stable, min(window, len(runs)), tol, _figures(per_run, window))
