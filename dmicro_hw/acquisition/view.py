"""``dmicro view RUN``: look at a stored run — PNG montages of raw and phase frames and an
H.264 video (raw | phase side by side, frame ids burnt in).

Frames whose phase is not ``ok`` (skipped by a decoder that fell behind, decoder errors, not
decoded yet, or refused as damaged) are never drawn as if they were data: their phase tile is
grey and hatched with the reason in its title (montage) or written over it (video), and the
counts per status are returned and printed.

The video is encoded by the ffmpeg that the ``imageio-ffmpeg`` wheel ships (extra ``[video]``):
H.264 (``libx264``), ``yuv420p``, even frame sizes — what browsers and slide software play.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from dmicro_hw.acquisition.integrity import frame_ranges
from dmicro_hw.acquisition.store import RECON_DAMAGED, RECON_OK, RECON_STATUS_NAMES, RunReader
from dmicro_hw.errors import DataError
from dmicro_hw.figures import PHASE_CMAP, RAW_CMAP, colorbar, rgb
from dmicro_hw.figures import plt as _plt

log = logging.getLogger(__name__)

#: short label of each recon_status drawn on a frame without phase
STATUS_LABEL = {0: "not decoded", 1: "ok", 2: "skipped", 3: "error", 4: "damaged"}
NO_PHASE = 0  # status of frames past phase_committed


def status_counts(reader: RunReader) -> dict[str, int]:
    """Frames per reconstruction status over all committed frames (frames past the last final
    phase count as ``not reconstructed``), with the names of ``RECON_STATUS_NAMES``."""
    st = frame_status(reader)
    counts = {RECON_STATUS_NAMES.get(int(k), f"status {k}"): 0 for k in RECON_STATUS_NAMES}
    vals, n = np.unique(st, return_counts=True)
    for v, c in zip(vals, n):
        counts[RECON_STATUS_NAMES.get(int(v), f"status {int(v)}")] = int(c)
    return counts


def frame_status(reader: RunReader) -> np.ndarray:
    """recon_status of every committed frame (NO_PHASE past ``phase_committed``)."""
    st = np.full(reader.committed, NO_PHASE, dtype=np.uint8)
    if reader.has_phase:
        s = reader.recon_status()
        st[: len(s)] = s
    return st


def _pick(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, max(n - 1, 0), num=min(k, n)).round().astype(int))


def _montage_png(
    path: Path,
    images: np.ndarray,
    ids: np.ndarray,
    title: str,
    cmap: str,
    vmin: float,
    vmax: float,
    label: str,
    marks: list[str] | None = None,
) -> None:
    """Tiles with frame ids; a tile with a mark is hatched grey with the mark in red."""
    plt = _plt()
    k = len(images)
    cols = int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.2 * cols + 1, 2.2 * rows + 0.5), squeeze=False, layout="constrained"
    )
    im = None
    for ax in axes.ravel():
        ax.axis("off")
    for i, (img, fid) in enumerate(zip(images, ids)):
        ax = axes.ravel()[i]
        mark = marks[i] if marks else ""
        if mark:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("0.6")
            ax.add_patch(
                plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="//")
            )
            ax.set_title(f"id {int(fid)} · {mark}", fontsize=8, color="#D55E00")
            continue
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"id {int(fid)}", fontsize=8)
    fig.suptitle(title)
    if im is not None:
        colorbar(fig, im, axes.ravel().tolist(), label, shrink=0.8, fraction=0.05)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def phase_max(reader: RunReader) -> float:
    """Top of the phase range of a run (the decoder's phase_max_rad), radians."""
    rec = reader.attrs.get("recon") or {}
    return float(rec.get("phase_max_rad") or reader.attrs.get("phase_max_rad") or math.pi)


def make_views(
    store: Path | str,
    out_dir: Path | str | None = None,
    n_frames: int = 16,
    video: bool | None = None,
    fps: float = 15.0,
    max_video_frames: int = 300,
) -> dict[str, Any]:
    """Write ``raw.png``, ``phase.png`` and ``run.mp4`` (H.264) into ``out_dir`` (default
    ``RUN/view``). ``video``: True = required (error without imageio-ffmpeg), False = no video,
    None = when imageio-ffmpeg is installed. Returns files, frame counts and status counts."""
    from dmicro_hw.extras import available, missing_message

    reader = RunReader(store)
    n = reader.committed
    if n == 0:
        raise DataError(f"{reader.path}: no committed frames to show")
    if video:
        from dmicro_hw.extras import require

        require("imageio_ffmpeg", "dmicro view --mp4")
    # damaged frames (checksum, missing chunk, records) are never drawn: left out of the raw
    # montage and video, their phase marked
    dmg = reader.damage()
    good = np.array([i for i in range(n) if i not in dmg["frames"]], dtype=int)
    if len(good) == 0:
        raise DataError(
            f"{reader.path}: every committed frame is damaged ({dmg['frames'][0]}); "
            "run `dmicro verify`"
        )
    if dmg["frames"]:
        log.warning(
            "%s: %d damaged frames left out of the views (%s)",
            reader.path,
            len(dmg["frames"]),
            frame_ranges(list(dmg["frames"])),
        )
    out = Path(out_dir) if out_dir else reader.path.parent / "view"
    out.mkdir(parents=True, exist_ok=True)
    fids = reader.records_checked()[0]["frame_id"]
    status = frame_status(reader)
    for i in dmg["phase"]:
        status[i] = RECON_DAMAGED  # unreadable phase: never shown as data
    idx = good[_pick(len(good), n_frames)]
    raw = np.asarray(reader.raw.get_orthogonal_selection((idx, slice(None), slice(None))))
    lo, hi = np.percentile(raw, [0.5, 99.5])
    files: dict[str, Any] = {}
    name = reader.path.parent.name
    _montage_png(
        out / "raw.png",
        raw,
        fids[idx],
        f"raw frames ({name})",
        RAW_CMAP,
        float(lo),
        float(max(hi, lo + 1)),
        "camera signal (ADU)",
    )
    files["raw_png"] = str(out / "raw.png")
    pmax = phase_max(reader)
    if reader.has_phase:
        ph = _phase_of(reader, idx, status)
        marks = [
            "" if status[i] == RECON_OK else STATUS_LABEL.get(int(status[i]), "no phase")
            for i in idx
        ]
        n_marked = sum(1 for m in marks if m)
        _montage_png(
            out / "phase.png",
            ph,
            fids[idx],
            f"phase ({name})"
            + (f" — {n_marked} of {len(idx)} shown without phase" if n_marked else ""),
            PHASE_CMAP,
            0.0,
            pmax,
            "phase (rad)",
            marks,
        )
        files["phase_png"] = str(out / "phase.png")
    files["mp4"] = None
    if video or (video is None and available("imageio_ffmpeg")):
        files["mp4"] = write_video(
            reader, out / "run.mp4", fps, max_video_frames, pmax, status, good
        )
    elif video is None:
        log.info("%s", missing_message("imageio_ffmpeg", "the H.264 video"))
    counts = status_counts(reader)
    return {
        "out": str(out),
        "frames": n,
        "phase_frames": int((status == RECON_OK).sum()),
        "status": counts,
        "damaged": len(dmg["frames"]),
        "files": files,
    }


def _phase_of(reader: RunReader, idx: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Phase of frames ``idx`` (NaN where the status is not ok: never read from damage)."""
    ph = np.full((len(idx), *reader.phase_array.shape[1:]), np.nan, np.float32)
    rows = np.nonzero((idx < reader.phase_committed) & (status[idx] == RECON_OK))[0]
    if len(rows):
        sel = (idx[rows], slice(None), slice(None))
        ph[rows] = reader.phase_array.get_orthogonal_selection(sel)
    return ph


def _label(img: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """Burn text lines (top-left, on a dark band) into an RGB uint8 image."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    y = 2
    for text, colour in lines:
        box = d.textbbox((3, y), text)
        d.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        d.text((3, y), text, fill=colour)
        y = box[3] + 3
    return np.asarray(im)


def _upscale(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, 3) image to (size, size, 3)."""
    h, w = img.shape[:2]
    ys = (np.arange(size) * h // size).clip(0, h - 1)
    xs = (np.arange(size) * w // size).clip(0, w - 1)
    return img[ys][:, xs]


def write_video(
    reader: RunReader,
    path: Path,
    fps: float,
    max_frames: int,
    pmax: float,
    status: np.ndarray | None = None,
    frames: np.ndarray | None = None,
) -> str:
    """raw (upscaled) | phase side by side as H.264 MP4, frame id and status burnt in;
    ``frames``: indices of the (intact) frames to show, default all committed."""
    import imageio_ffmpeg

    if path.is_symlink():
        raise DataError(f"{path}: is a symbolic link; refusing to write through it")
    frames = np.arange(reader.committed) if frames is None else np.asarray(frames, int)
    frames = frames[:max_frames]
    n = len(frames)
    status = frame_status(reader) if status is None else status
    fids = reader.records_checked()[0]["frame_id"][frames]
    sel = (frames, slice(None), slice(None))
    raw = np.asarray(reader.raw.get_orthogonal_selection(sel)).astype(np.float32)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    phase = _phase_of(reader, frames, status) if reader.has_phase else None
    status = status[frames]
    size = reader.phase_array.shape[1] if reader.has_phase else max(raw.shape[1:]) * 4
    size = max(size, 256)  # legible burnt-in text
    size += size % 16  # macro blocks: no rescaling by the encoder
    width = 2 * size if reader.has_phase else size
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, size),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        output_params=["-pix_fmt", "yuv420p", "-crf", "18"],
        macro_block_size=16,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    try:
        for i in range(n):
            tiles = [_upscale(rgb(raw[i], RAW_CMAP, float(lo), float(max(hi, lo + 1))), size)]
            tiles[0] = _label(tiles[0], [(f"id {int(fids[i])}  raw", (255, 255, 255))])
            if reader.has_phase:
                ok = phase is not None and status[i] == RECON_OK
                p = phase[i] if ok else np.full(reader.phase_array.shape[1:], np.nan)
                tile = _upscale(rgb(p, PHASE_CMAP, 0.0, pmax), size)
                lines = [(f"id {int(fids[i])}  phase 0-{pmax:.2f} rad", (255, 255, 255))]
                if not ok:
                    why = STATUS_LABEL.get(int(status[i]), "no phase")
                    lines.append((f"NO PHASE: {why}", (230, 159, 0)))
                tiles.append(_label(tile, lines))
            writer.send(np.ascontiguousarray(np.concatenate(tiles, axis=1)))
    finally:
        writer.close()
    return str(path)
