"""How busy the machine was while a benchmark ran: load averages, CPUs, and the CPU share of
other processes (Linux ``/proc``; None where that is not available).

    meter = LoadMeter(); …benchmark…; meter.stop() -> {"load_avg": [1, 5, 15 min], "cpus": …,
        "busy_share": …, "own_share": …, "others_share": …}

Shares are fractions of all CPUs' time over the interval (0 … 1): ``busy`` = everything not idle,
``own`` = this process (its threads), ``others`` = busy − own (other users of the cores).
"""

from __future__ import annotations

import os
import time
from typing import Any


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if not parts or parts[0] != "cpu":
        return None
    v = [float(x) for x in parts[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0.0)  # idle + iowait
    total = sum(v[:8])  # guest time is already counted in user
    return total - idle, total


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class LoadMeter:
    """Measures the machine's load between construction (or :meth:`start`) and :meth:`stop`."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._t = time.monotonic()
        self._proc = time.process_time()
        self._cpu = _cpu_times()
        self._load0 = _loadavg()

    def stop(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self._t, 1e-9)
        own_s = time.process_time() - self._proc
        out: dict[str, Any] = {
            "load_avg_start": self._load0,
            "load_avg": _loadavg(),
            "cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "seconds": round(wall, 3),
            "busy_share": None,
            "own_share": None,
            "others_share": None,
        }
        cpu = _cpu_times()
        if cpu is not None and self._cpu is not None and cpu[1] > self._cpu[1]:
            busy = (cpu[0] - self._cpu[0]) / (cpu[1] - self._cpu[1])
            own = own_s / (wall * (os.cpu_count() or 1))
            out["busy_share"] = round(busy, 3)
            out["own_share"] = round(min(own, 1.0), 3)
            out["others_share"] = round(max(busy - own, 0.0), 3)
        return out


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe(load: dict[str, Any]) -> str:
    """One line for a table caption: 'load 3.1/2.4/1.9 on 2 CPUs, others used 48 %'."""
    la = load.get("load_avg")
    s = f"load {'/'.join(f'{x:.1f}' for x in la)}" if la else "load n/a"
    s += f" on {load.get('usable_cpus') or load.get('cpus')} CPUs"
    if load.get("others_share") is not None:
        s += f", other processes used {100 * load['others_share']:.0f} % of the CPU time"
    return s
