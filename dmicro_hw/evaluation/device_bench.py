"""Device measurements of ``dmicro bench devices`` that need a twin: the serial trigger's round
trip and pulse lateness against the trigger firmware twin on a pseudo-terminal.

Timings only (a table and JSON), never asserted in tests.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def trigger_round_trip(
    status_calls: int = 300, rate_hz: float = 1000.0, pulses: int = 500
) -> dict[str, Any]:
    """Serial-trigger timings over a pty against :class:`~dmicro_hw.simulators.sim_trigger.
    TriggerFirmware`: STATUS round trip (ms, p50/p99 over ``status_calls``) and pulse lateness
    (ms after the scheduled time, p50/p99 over ``pulses`` pulses at ``rate_hz``)."""
    from dmicro_hw.drivers.serial_trigger import SerialTrigger
    from dmicro_hw.simulators.sim_trigger import TriggerFirmware

    with TriggerFirmware() as fw, SerialTrigger(fw.port, timeout_s=1.0) as trig:
        rtt = []
        for _ in range(status_calls):
            t0 = time.perf_counter()
            trig.status()
            rtt.append(time.perf_counter() - t0)
        late: list[float] = []
        fw.on_pulse(lambda i, t: late.append(time.monotonic() - t))
        trig.arm(rate_hz, pulses)
        trig.fire()
        while trig.status()["running"]:
            time.sleep(0.01)
    rtt_ms = np.array(rtt) * 1e3
    late_ms = np.array(late) * 1e3
    return {
        "rtt_ms_p50": float(np.median(rtt_ms)),
        "rtt_ms_p99": float(np.percentile(rtt_ms, 99)),
        "pulses": len(late),
        "pulse_late_ms_p50": float(np.median(late_ms)),
        "pulse_late_ms_p99": float(np.percentile(late_ms, 99)),
    }
