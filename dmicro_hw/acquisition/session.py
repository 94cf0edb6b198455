"""One acquisition session from a rig config: load and cross-check the assets, open the devices,
run the :class:`~dmicro_hw.acquisition.pipeline.Acquisition`, score it on the simulated rig, write
``run.json``.

Assets and the checks that they belong together and to this rig:

* pattern (``rig.pattern``, from ``dmicro export``): hashes verified, SLM shape / bit depth /
  wavelength of this rig (:func:`dmicro_hw.export.load_pattern`); exported from the loaded
  checkpoint (its SHA-256 in the sidecar) and with the loaded calibration bundle (same SHA-256);
* calibration (``rig.calibration``): measured on this rig id and wavelength; camera gain/offset
  from it are undone before decoding;
* checkpoint (``rig.checkpoint``): trained for this rig's field size and compression.

The command-line front end (live status, signals, table) is :mod:`dmicro_hw.commands.acquire`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmicro_hw.acquisition.pipeline import Acquisition, AcquisitionOptions
from dmicro_hw.config import RigConfig
from dmicro_hw.errors import CheckpointError, ConfigError
from dmicro_hw.rig import Twins, open_rig
from dmicro_hw.safe_io import check_output_dir, make_output_dir, release_space, reserve_space

log = logging.getLogger(__name__)


@dataclass
class Assets:
    """What a run needs besides devices, loaded and cross-checked."""

    pattern: Any = None  # export.ExportedPattern
    calibration: Any = None  # export.SLMCalibration
    camera_gain: float = 1.0
    camera_offset_adu: float = 0.0
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    def patterns_table(self) -> list[dict[str, Any]]:
        if self.pattern is None:
            return []
        return [
            {
                "index": 0,
                "id": self.pattern.pattern_id,
                "sha256": self.pattern.sha256,
                "path": str(self.pattern.path),
            }
        ]

    def attrs(self) -> dict[str, Any]:
        cal = self.calibration
        return {
            "pattern_sha256": self.pattern.sha256 if self.pattern is not None else None,
            "pattern_id": self.pattern.pattern_id if self.pattern is not None else None,
            "calibration_sha256": cal.sha256 if cal is not None else None,
            "calibration_path": str(cal.path) if cal is not None and cal.path else None,
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint_path": str(self.checkpoint) if self.checkpoint else None,
            "camera_gain": self.camera_gain,
            "camera_offset_adu": self.camera_offset_adu,
        }


def load_assets(rig: RigConfig, need_checkpoint: bool = True) -> Assets:
    """Load pattern, calibration and checkpoint named by ``rig`` and check they belong together."""
    from dmicro_hw.calibration.adapt import is_adapted
    from dmicro_hw.calibration.bundle import (
        camera_response,
        check_calibration_for_rig,
        load_slm_calibration,
    )
    from dmicro_hw.export import load_pattern, sha256_file

    a = Assets()
    if rig.calibration is not None:
        a.calibration = load_slm_calibration(rig.calibration)
        check_calibration_for_rig(a.calibration, rig)
        a.camera_gain, a.camera_offset_adu = camera_response(rig.calibration)
    if rig.checkpoint is not None:
        ck = Path(rig.checkpoint)
        if not ck.is_file():
            raise CheckpointError(f"{ck}: checkpoint (rig key 'checkpoint') not found")
        a.checkpoint = ck
        a.checkpoint_sha256 = sha256_file(ck)
    elif need_checkpoint:
        raise ConfigError(
            "checkpoint: the rig config names no checkpoint; set 'checkpoint:' or use --no-recon"
        )
    if a.calibration is not None and a.checkpoint is not None and is_adapted(a.checkpoint):
        # `dmicro calibrate`'s adapted checkpoint already folds the camera gain/offset into its
        # input standardisation: undoing them again would apply the correction twice
        a.camera_gain, a.camera_offset_adu = 1.0, 0.0
        a.notes.append("camera gain/offset folded into the adapted checkpoint")
    if rig.pattern is not None:
        a.pattern = load_pattern(rig.pattern, rig)
        hashes = a.pattern.sidecar.get("sha256") or {}
        want_ck = hashes.get("checkpoint")
        if a.checkpoint_sha256 and want_ck and want_ck != a.checkpoint_sha256:
            raise CheckpointError(
                f"{a.pattern.path}: pattern was exported from another checkpoint than "
                f"{a.checkpoint} (SHA-256 differs) — export it again from this checkpoint"
            )
        want_cal = hashes.get("calibration")
        have_cal = a.calibration.sha256 if a.calibration is not None else None
        if want_cal and have_cal and want_cal != have_cal:
            raise CheckpointError(
                f"{a.pattern.path}: pattern was exported with another calibration bundle than "
                f"{rig.calibration} — export it again with this calibration"
            )
        if want_cal and not have_cal:
            raise CheckpointError(
                f"{a.pattern.path}: pattern was exported with a calibration bundle, but the rig "
                "config names none (set 'calibration:')"
            )
        if have_cal and not want_cal:
            a.notes.append("pattern was exported without the rig's calibration bundle")
            log.warning("%s: pattern exported without calibration", a.pattern.path)
    return a


def default_out(rig: RigConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(rig.acquisition.out) / f"{rig.rig_id}-{stamp}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def frame_interval_s(rig: RigConfig, mode: str, twins: Any = None) -> float:
    """Nominal time between frames: trigger rate, camera frame rate, or the twin's (simulated
    camera, :class:`dmicro_hw.rig.Twins`); 0 when unknown."""
    if mode == "triggered":
        return 1.0 / rig.trigger.rate_hz
    if rig.camera.frame_rate_hz:
        return 1.0 / rig.camera.frame_rate_hz
    if twins is not None and twins.frame_rate_hz:
        return 1.0 / twins.frame_rate_hz
    return 0.0


def write_run_json(path: Path, summary: dict[str, Any], reserve: Path | None = None) -> None:
    """``run.json``: atomic, never through a symlink, written from the reserve when disk is full."""
    from dmicro_hw.safe_io import write_text_safely

    write_text_safely(path, json.dumps(summary, indent=2, default=str) + "\n", reserve=reserve)


class Session:
    """Everything between ``dmicro-acquire --config rig.yaml`` and its ``run.json``.

    Use as ``with Session(...) as s: s.start(); s.acq.wait(); summary = s.finish()``; leaving the
    ``with`` block closes every device (blank SLM, stopped camera, disarmed trigger) whatever
    happened.
    """

    def __init__(
        self,
        rig: RigConfig,
        *,
        config_path: Path | None = None,
        frames: int | None = None,
        duration_s: float | None = None,
        out: Path | None = None,
        recon: bool = True,
        mode: str | None = None,
        recon_device: str | None = None,
        score: bool = True,
        on_phase: Any = None,
    ) -> None:
        self.rig = rig
        self.config_path = config_path
        acq = rig.acquisition
        self.mode = mode or acq.mode
        if frames is None and duration_s is None:
            frames, duration_s = acq.frames, acq.duration_s
        if frames is None and duration_s is None:
            raise ConfigError("acquisition: give --frames or --duration (or acquisition.frames)")
        self.frames, self.duration_s = frames, duration_s
        self.out_dir = Path(out) if out is not None else default_out(rig)
        self.store = self.out_dir / "run.zarr"
        if self.store.exists():
            raise ConfigError(f"--out {self.out_dir}: already holds a run (run.zarr)")
        check_output_dir(self.out_dir)
        self._made_out = not self.out_dir.exists()
        self._reserve: Path | None = None
        self._claimed = False
        self.do_recon = bool(recon and acq.recon)
        self.recon_device = recon_device or acq.recon_device
        self.score = score
        self.on_phase = on_phase
        self._stack = contextlib.ExitStack()
        self.assets: Assets | None = None
        self.reconstructor: Any = None
        self.camera: Any = None
        self.slm: Any = None
        self.trigger: Any = None
        self.twins = Twins()
        self.acq: Acquisition | None = None
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()
        finally:
            release_space(self._reserve)
            if self.acq is None or self.acq.writer is None:
                # nothing was recorded: leave no empty run folder behind
                mine = self.store if self._claimed else None
                for d in (mine, self.out_dir if self._made_out else None):
                    if d is not None:
                        with contextlib.suppress(OSError):
                            d.rmdir()

    # ------------------------------------------------------------------ steps
    def prepare(self) -> None:
        """Load assets and the decoder (before any device is touched)."""
        rig = self.rig
        self.assets = load_assets(rig, need_checkpoint=self.do_recon)
        if self.do_recon:
            from dmicro_hw.acquisition.reconstruct import Reconstructor

            self.reconstructor = Reconstructor.from_checkpoint(
                self.assets.checkpoint,
                rig,
                camera_gain=self.assets.camera_gain,
                camera_offset_adu=self.assets.camera_offset_adu,
                device=self.recon_device,
                max_batch=rig.acquisition.recon_batch,
                runtime=rig.acquisition.decoder_runtime,
                # leave a core to the camera and writer threads: raw data comes first
                threads=max(1, (os.cpu_count() or 2) - 1),
            )
            acq = rig.acquisition
            if acq.consistency or acq.refine:
                from dmicro_hw.acquisition.consistency import measurement_for_rig
                from dmicro_hw.acquisition.reconstruct import RefineOptions

                a = self.assets
                self.reconstructor.set_measurement(
                    measurement_for_rig(
                        rig,
                        self.reconstructor.model,
                        pattern_grey=a.pattern.grey if a.pattern is not None else None,
                        calibration=rig.calibration,
                    ),
                    RefineOptions(acq.refine, acq.refine_prior_weight),
                )
            self.reconstructor.warmup()
        self._claim_output()

    def _claim_output(self) -> None:
        """Create the run folder and claim ``run.zarr`` exclusively (the loser of two processes
        racing for one --out gets one clear line), keep disk space in reserve for run.json."""
        if self._claimed:
            return
        make_output_dir(self.out_dir)
        try:
            os.mkdir(self.store)
        except FileExistsError:
            raise ConfigError(
                f"--out {self.out_dir}: already holds a run (run.zarr; another process?)"
            ) from None
        except OSError as e:
            msg = f"--out {self.out_dir}: cannot create run.zarr ({e.strerror})"
            raise ConfigError(msg) from None
        self._claimed = True
        self._reserve = reserve_space(self.out_dir)

    def open_devices(self) -> None:
        """Open trigger, SLM and camera through the rig seam (each closed when the session ends)."""
        opened = open_rig(self.rig, self._stack, self.mode)
        self.slm, self.camera, self.trigger = opened.slm, opened.camera, opened.trigger
        self.twins = opened.twins

    def start(self) -> Acquisition:
        """prepare → open devices → show pattern, settle, stream. Returns the running pipeline."""
        if self.assets is None:
            self.prepare()
        self.open_devices()
        rig, a = self.rig, self.assets
        assert a is not None
        self._claim_output()
        attrs = {
            "rig_id": rig.rig_id,
            "config_path": str(self.config_path) if self.config_path else None,
            "rig": rig.model_dump(mode="json"),
            **a.attrs(),
        }
        opt = AcquisitionOptions(
            out=self.store,
            frames=self.frames,
            duration_s=self.duration_s,
            mode=self.mode,
            ring_frames=rig.acquisition.ring_frames,
            chunk_frames=rig.acquisition.chunk_frames,
            recon_batch=rig.acquisition.recon_batch,
            trigger_rate_hz=rig.trigger.rate_hz,
            frame_interval_s=frame_interval_s(rig, self.mode, self.twins),
            raw_pixel_m=rig.optics.pixel_size_m * rig.optics.binning,
            adc_bits=rig.sensor.bit_depth,
            attrs=attrs,
            patterns=a.patterns_table(),
            out_claimed=True,
        )
        self.acq = Acquisition(
            self.camera,
            opt,
            slm=self.slm,
            pattern=a.pattern.grey if a.pattern is not None else None,
            pattern_id=a.pattern.pattern_id if a.pattern is not None else "",
            trigger=self.trigger,
            recon=self.reconstructor,
        )
        self.acq.start()
        if self.acq.worker is not None and self.on_phase is not None:
            self.acq.worker.on_phase = self.on_phase
        return self.acq

    def finish(self, on_tick: Any = None) -> dict[str, Any]:
        """Shut the pipeline down, score (simulated rig), write run.json; returns the summary."""
        assert self.acq is not None
        summary = self.acq.shutdown(on_tick=on_tick)
        summary = {
            "rig_id": self.rig.rig_id,
            "config": str(self.config_path) if self.config_path else None,
            "store": str(self.store),
            "run_json": str(self.out_dir / "run.json"),
            **summary,
            "assets": self.assets.attrs() if self.assets else {},
            "notes": self.assets.notes if self.assets else [],
        }
        summary["score"] = None
        summary["consistency"] = None
        if self.reconstructor is not None and self.reconstructor.measurement is not None:
            summary["consistency"] = self._consistency()
        storage_failed = summary.get("stop_reason") == "storage error"  # scoring writes too
        if (
            self.score
            and self.reconstructor is not None
            and self.acq.writer is not None
            and not storage_failed
        ):
            summary["score"] = self._score()
        if self.acq.writer is not None:
            with contextlib.suppress(Exception):
                self.acq.writer.set_attrs(summary=summary)
        write_run_json(self.out_dir / "run.json", summary, reserve=self._reserve)
        release_space(self._reserve)
        self._reserve = None
        self.summary = summary
        return summary

    def _consistency(self) -> dict[str, Any] | None:
        from dmicro_hw.acquisition.consistency import consistency_summary
        from dmicro_hw.acquisition.store import RunReader

        try:
            chi2 = RunReader(self.store).consistency()
        except Exception as e:  # noqa: BLE001 - a summary failure must not lose the run
            log.warning("consistency summary failed: %s", e)
            return {"error": f"{type(e).__name__}: {e}"}
        return consistency_summary(chi2, self.rig.acquisition.consistency_threshold)

    def _score(self) -> dict[str, Any] | None:
        truth = self.twins.ground_truth
        if truth is None:
            return None  # a real bench: no ground truth
        from dmicro_hw.acquisition.scoring import score_store

        try:
            return score_store(self.store, truth, self.reconstructor.phase_max_rad)
        except Exception as e:  # noqa: BLE001 - a scoring failure must not lose the run
            log.warning("scoring failed: %s", e)
            return {"error": f"{type(e).__name__}: {e}"}


def scalar_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """Flat view of the headline figures (table rows)."""
    rec = summary.get("recon") or {}
    sc = summary.get("score") or {}
    return {
        "frames received": summary.get("frames_received"),
        "frames written": summary.get("frames_written"),
        **(
            {"received, not written": summary["frames_unwritten"]}
            if summary.get("frames_unwritten")
            else {}
        ),
        "camera dropped": summary.get("camera_dropped"),
        **(
            {"frames with saturated pixels": summary["frames_saturated"]}
            if summary.get("frames_saturated")
            else {}
        ),
        "ring dropped": summary.get("ring_dropped"),
        "capture fps (device clock)": summary.get("device_fps"),
        "receive fps (host)": summary.get("mean_fps"),
        "decoded": rec.get("decoded"),
        "decode skipped": rec.get("skipped"),
        "decode latency p50/p99 ms": (rec.get("latency_ms_p50"), rec.get("latency_ms_p99")),
        "PSNR dB": sc.get("psnr_db_mean"),
        "SSIM": sc.get("ssim_mean"),
        "RMSE rad": sc.get("rmse_rad_mean"),
        "χ²/dof median / unreliable": (
            (summary.get("consistency") or {}).get("chi2_dof_median"),
            (summary.get("consistency") or {}).get("unreliable"),
        ),
    }
