"""Benchmarks repeated until stable, with the machine's load: the helper on scripted figures and
a tiny real ``dmicro bench acquire`` (no timings asserted)."""

from __future__ import annotations

import json

import pytest

from dmicro_hw.evaluation.machine_load import LoadMeter, describe
from dmicro_hw.evaluation.stable_repeats import repeat_until_stable, spread


def test_spread():
    assert spread([1.0, 1.0]) == 0.0
    assert spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)
    assert spread([0.0, 0.0, 1.0]) == float("inf")


def test_repeats_until_the_last_window_agrees():
    seq = [100.0, 50.0, 98.0, 101.0, 99.0, 500.0]
    calls = []
    res = repeat_until_stable(
        lambda i: calls.append(i) or {"fps": seq[i], "unmeasured": None},
        lambda r: r,
        min_repeats=3,
        max_repeats=6,
        window=3,
        tol=0.05,
    )
    assert calls == [0, 1, 2, 3, 4] and res.stable  # 98, 101, 99 agree within 5 %
    assert res.figures["fps"]["median"] == 99.0 and res.figures["fps"]["values"] == seq[2:5]
    assert "unmeasured" not in res.figures
    assert len(res.loads) == 5 and all(ld["cpus"] >= 1 for ld in res.loads)


def test_gives_up_after_max_repeats():
    res = repeat_until_stable(
        lambda i: {"p99": 10.0 * (i + 1)}, lambda r: r, min_repeats=2, max_repeats=4, tol=0.1
    )
    assert not res.stable and len(res.runs) == 4
    assert res.to_json()["figures"]["p99"]["values"] == [20.0, 30.0, 40.0]
    with pytest.raises(ValueError):
        repeat_until_stable(lambda i: {}, lambda r: r, min_repeats=5, max_repeats=4)


def test_load_meter_reports_the_machine():
    meter = LoadMeter()
    sum(i * i for i in range(200_000))
    load = meter.stop()
    assert load["usable_cpus"] >= 1 and load["seconds"] > 0
    if load["busy_share"] is not None:  # Linux
        assert 0 <= load["own_share"] <= 1 and 0 <= load["others_share"] <= 1
        assert "other processes used" in describe(load)


def test_bench_acquire_repeats_and_reports_load(tmp_path, cli):
    out = tmp_path / "acq.json"
    res = cli(
        "bench", "acquire", "--compressions", "64", "--frames", "100", "--rate", "2000",
        "--live-compression", "64", "--live-frames", "10", "--live-rate", "200",
        "--decode-seconds", "0.2", "--threads", "1", "--min-repeats", "2", "--max-repeats", "2",
        "-o", out,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "load 1/5/15 min" in res.stdout and "largest spreads" in res.stdout
    doc = json.loads(out.read_text())
    st = doc["stability"]
    assert st["repeats"] == 2 and st["window"] == 2 and len(st["loads"]) == 2
    assert "decode ×64 cpu b1 decode_fps" in st["figures"]
    fig = st["figures"]["decode ×64 cpu b1 decode_fps"]
    assert len(fig["values"]) == 2
    row = next(r for r in doc["decode"] if r["batch"] == 1)
    assert row["decode_fps"] == fig["median"]  # the table shows the medians
    bad = cli("bench", "acquire", "--min-repeats", "4", "--max-repeats", "2", "-o", out)
    assert bad.returncode != 0 and "--min-repeats" in bad.stdout + bad.stderr
