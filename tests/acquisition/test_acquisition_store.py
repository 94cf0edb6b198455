"""Frame ring (backpressure, lossy consumer, drop accounting) and the Zarr run store (commit
counter, records, OME metadata, crash safety) — real zarr on disk, no devices."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from dmicro_hw.acquisition.ring_buffer import FrameRing
from dmicro_hw.acquisition.store import RECON_OK, RECON_SKIPPED, RunReader
from dmicro_hw.acquisition.writer import PhaseWriter, RunWriter
from dmicro_hw.drivers.base import Frame
from dmicro_hw.errors import DataError, FrameShapeError


def _frame(i: int, shape=(4, 5), fid: int | None = None) -> Frame:
    return Frame(
        np.full(shape, i % 65535, np.uint16),
        frame_id=i if fid is None else fid,
        device_timestamp=1000 * i,
        host_time=100.0 + i,
        exposure_s=1e-3,
    )


def test_ring_lossless_consumer_gets_every_frame_in_order_across_threads():
    ring = FrameRing(8, (4, 5), np.uint16)
    ring.add_consumer("w")
    got: list[int] = []

    def consume():
        while not ring.finished("w"):
            b = ring.get("w", 3, timeout=0.05)
            if b is not None:
                got.extend(b.records["frame_id"].tolist())
                assert (b.data[:, 0, 0] == b.records["frame_id"]).all()

    t = threading.Thread(target=consume)
    t.start()
    for i in range(500):
        assert ring.put(_frame(i), timeout=None)
    ring.close()
    t.join(10)
    assert got == list(range(500))
    assert ring.stats().ring_dropped == 0


def test_ring_full_times_out_and_counts_a_drop_never_overwrites():
    ring = FrameRing(4, (4, 5), np.uint16)
    ring.add_consumer("w")
    for i in range(4):
        assert ring.put(_frame(i), timeout=0)
    assert not ring.put(_frame(4), timeout=0.01)  # full: the writer holds all slots
    assert ring.stats().ring_dropped == 1
    b = ring.get("w", 10)
    assert b.records["frame_id"].tolist() == [0, 1, 2, 3]
    assert ring.put(_frame(5), timeout=0)


def test_ring_lossy_consumer_is_skipped_not_waited_for():
    ring = FrameRing(4, (4, 5), np.uint16)
    ring.add_consumer("w")
    ring.add_consumer("r", lossy=True)
    for i in range(10):
        assert ring.put(_frame(i), timeout=0)
        ring.get("w", 10)  # the writer keeps up
    b = ring.get("r", 10)
    assert b.seq0 == 6 and b.skipped_before == 6
    assert b.records["frame_id"].tolist() == [6, 7, 8, 9]
    assert ring.stats().skipped["r"] == 6


def test_ring_rejects_a_frame_of_another_shape():
    ring = FrameRing(4, (4, 5), np.uint16)
    with pytest.raises(FrameShapeError, match="shape"):
        ring.put(_frame(0, shape=(5, 4)))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5)), min_size=1, max_size=30))
def test_ring_property_order_and_accounting(ops):
    """Any interleaving of puts and reads: the writer sees every accepted frame once, in order;
    accepted + dropped = offered; the lossy reader sees an increasing subsequence."""
    ring = FrameRing(5, (2, 2), np.uint16)
    ring.add_consumer("w")
    ring.add_consumer("r", lossy=True)
    offered, seen_w, seen_r = 0, [], []
    for n_put, n_get in ops:
        for _ in range(n_put):
            ring.put(_frame(offered, (2, 2)), timeout=0)
            offered += 1
        b = ring.get("w", n_get, timeout=0)
        if b is not None:
            seen_w += b.records["frame_id"].tolist()
        b = ring.get("r", n_get, timeout=0)
        if b is not None:
            seen_r += b.records["frame_id"].tolist()
    ring.close()
    while (b := ring.get("w", 100, timeout=0)) is not None:
        seen_w += b.records["frame_id"].tolist()
    st_ = ring.stats()
    assert len(seen_w) + st_.ring_dropped == offered
    assert seen_w == sorted(set(seen_w))
    assert seen_r == sorted(set(seen_r)) and set(seen_r) <= set(seen_w)


def _records(ids):
    from tests.conftest import frame_records  # tests/conftest.py: the shared per-frame records

    return frame_records(ids)


def test_writer_records_gaps_metadata_and_trims(tmp_path):
    path = tmp_path / "run.zarr"
    w = RunWriter(
        path,
        frame_shape=(4, 5),
        dtype=np.uint16,
        chunk_frames=4,
        phase_size=8,
        raw_pixel_m=2e-6,
        phase_pixel_m=0.25e-6,
        frame_interval_s=0.01,
        attrs={"rig_id": "t"},
        expected_frames=100,
    )
    ids = [0, 1, 2, 5, 6, 7, 8, 9, 10, 11]  # 2 frames lost before id 5
    data = np.stack([np.full((4, 5), i, np.uint16) for i in ids])
    assert w.append(data[:6], _records(ids[:6])) == 4  # one whole chunk committed
    assert RunReader(path).committed == 4
    w.append(data[6:], _records(ids[6:]))
    w.append_phase(np.ones((3, 8, 8), np.float32), np.full(3, RECON_OK, np.uint8))
    w.append_phase(None, np.full(2, RECON_SKIPPED, np.uint8))
    w.finalize({"hello": 1})

    r = RunReader(path)
    assert r.committed == 10 and r.raw.shape == (10, 4, 5)
    rec = r.records()
    assert rec["frame_id"].tolist() == ids
    assert rec["dropped_before"].tolist() == [0, 0, 0, 2, 0, 0, 0, 0, 0, 0]
    assert r.raw_frames()[:, 0, 0].tolist() == ids
    assert r.phase_committed == 5
    assert r.recon_status().tolist() == [1, 1, 1, 2, 2]
    assert np.isnan(r.phase()[3:]).all() and (r.phase()[:3] == 1).all()
    a = r.attrs
    assert a["complete"] and a["frames_lost"] == 2 and a["summary"] == {"hello": 1}
    g = zarr.open_group(str(path), mode="r")
    assert g.attrs["ome"] == {"version": "0.5", "bioformats2raw.layout": 3}
    assert g["OME"].attrs["ome"]["series"] == ["raw", "phase"] == r.image_names()
    by_name = {n: g[n].attrs["ome"]["multiscales"][0] for n in ("raw", "phase")}
    assert [ax["name"] for ax in by_name["raw"]["axes"]] == ["t", "y", "x"]
    assert by_name["raw"]["datasets"][0]["coordinateTransformations"][0]["scale"] == [
        0.01,
        2.0,
        2.0,
    ]
    assert by_name["phase"]["datasets"][0]["coordinateTransformations"][0]["scale"][1] == 0.25
    assert r.pixel_size_um("phase") == (0.01, 0.25, 0.25)
    # contrast limits from what was written (omero window start/end)
    win = g["raw"].attrs["ome"]["omero"]["channels"][0]["window"]
    assert (win["start"], win["end"], win["min"], win["max"]) == (0, 11, 0, 65535)
    pwin = g["phase"].attrs["ome"]["omero"]["channels"][0]["window"]
    assert (pwin["start"], pwin["end"]) == (0.0, math.pi)  # all 1.0: no range, default kept
    assert r.raw.metadata.dimension_names == ("t", "y", "x")


def test_reader_trusts_the_counter_after_a_crash_between_resize_and_write(tmp_path):
    path = tmp_path / "run.zarr"
    w = RunWriter(path, frame_shape=(4, 5), dtype=np.uint16, chunk_frames=4)
    data = np.stack([np.full((4, 5), i + 1, np.uint16) for i in range(8)])
    w.append(data, _records(range(8)))
    # what a crash inside zarr's append leaves: array resized, no data, counter not moved
    zarr.open_group(str(path), mode="r+")["raw/0"].resize((40, 4, 5))
    r = RunReader(path)
    assert r.committed == 8 and r.raw.shape[0] == 40
    assert r.raw_frames().shape == (8, 4, 5) and (r.raw_frames()[:, 0, 0] > 0).all()
    assert not r.attrs["complete"]


def test_writer_refuses_existing_output_and_reader_rejects_non_runs(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(DataError, match="already exists"):
        RunWriter(tmp_path / "x.zarr", frame_shape=(2, 2), dtype=np.uint8)
    with pytest.raises(DataError, match="not a run store"):
        RunReader(tmp_path / "x.zarr")


def test_offline_phase_writer_adds_phase_to_a_raw_only_run(tmp_path):
    path = tmp_path / "run.zarr"
    w = RunWriter(path, frame_shape=(4, 5), dtype=np.uint16, chunk_frames=4)
    w.append(np.zeros((6, 4, 5), np.uint16), _records(range(6)))
    w.finalize()
    r = RunReader(path, mode="r+")
    pw = PhaseWriter(r, 8, 1e-6)
    pw.write(0, np.zeros((6, 8, 8), np.float32), np.full(6, RECON_OK, np.uint8))
    pw.set_committed(6)
    r2 = RunReader(path)
    assert r2.phase_committed == 6 and r2.phase().shape == (6, 8, 8)
    assert (r2.recon_status() == RECON_OK).all()
