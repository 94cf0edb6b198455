"""``dmicro view``: frames without phase are marked and counted, the video is H.264 with the
frame ids burnt in, and the figures carry colour bars with units."""

from __future__ import annotations

import numpy as np
import pytest

from dmicro_hw.acquisition.view import make_views


@pytest.fixture(scope="module")
def run_with_skips(tmp_path_factory, make_run):
    """12 frames: 6 decoded (2 rad), 3 skipped (decoder behind), 3 never decoded."""
    raw = np.stack([np.full((8, 8), 100 + 10 * i) for i in range(12)])
    phase = np.full((6, 32, 32), 2.0)
    return make_run(tmp_path_factory.mktemp("view") / "run.zarr", raw, phase, skipped=3)


def test_view_counts_and_marks_frames_without_phase(run_with_skips, tmp_path):
    res = make_views(run_with_skips, tmp_path / "v", n_frames=12, video=False)
    assert res["frames"] == 12 and res["phase_frames"] == 6
    st = res["status"]
    assert st["ok"] == 6 and st["skipped (decoder behind)"] == 3 and st["not reconstructed"] == 3
    assert res["files"]["mp4"] is None
    for k in ("raw_png", "phase_png"):
        assert (tmp_path / "v" / f"{k[:-4]}.png").stat().st_size > 10_000


def test_view_video_is_h264_with_ids_burnt_in_and_grey_where_no_phase(run_with_skips, tmp_path):
    iio = pytest.importorskip("imageio_ffmpeg")
    res = make_views(run_with_skips, tmp_path / "v", n_frames=4, video=True, fps=10)
    mp4 = res["files"]["mp4"]
    reader = iio.read_frames(mp4)
    meta = reader.__next__()
    assert meta["codec"].startswith("h264") and meta["size"] == (512, 256)
    frames = [np.frombuffer(f, np.uint8).reshape(256, 512, 3) for f in reader]
    assert len(frames) == 12
    ok, skipped = frames[0], frames[7]
    # phase tile centre: a cividis colour for 2 rad where decoded, grey where skipped
    assert abs(int(skipped[200, 384, 0]) - 128) < 12 and abs(int(skipped[200, 384, 2]) - 128) < 12
    assert abs(int(ok[200, 384, 0]) - int(ok[200, 384, 2])) > 30
    # the burnt-in label band (black box with white text) differs between frames (other ids)
    band0, band1 = frames[0][2:14, 3:60], frames[1][2:14, 3:60]
    assert band0.max() > 200 and band0.min() < 30 and not np.array_equal(band0, band1)
    # and the raw tile below the label is the raw frame, not text
    assert frames[0][200, 100].std() == 0
