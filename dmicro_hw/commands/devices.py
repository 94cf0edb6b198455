"""``dmicro devices list | check`` and ``dmicro bench devices``.

* ``list``: driver backends (built-in, registered, entry points), GenTL producers (``.cti`` from
  ``GENICAM_GENTL64_PATH`` and the genicam wheel) with the cameras they see, X screens and
  monitors, serial ports.
* ``check --config rig.yaml``: opens every configured device through the registry, exercises it
  briefly (SLM: blank; camera: a few frames; trigger: status) and reports in a table; exit code 3
  when any device fails.
* ``bench devices``: GenICam frame rate (viky by default) at 20 and 200 fps settings, screen-SLM
  display latency under a private Xvfb, serial-trigger round trip and pulse lateness over a pty;
  table + JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from dmicro_hw.commands._choices import DeviceKind, value
from dmicro_hw.safe_io import write_text_safely

KINDS = ("slm", "camera", "trigger")


def _producers() -> list[tuple[Path, str]]:
    from dmicro_hw.drivers.gentl import bundled_producers, gentl_path_producers

    out: list[tuple[Path, str]] = [(p, "GENICAM_GENTL64_PATH") for p in gentl_path_producers()]
    seen = {p.resolve() for p, _ in out}
    out += [(p, "genicam wheel") for p in bundled_producers() if p.resolve() not in seen]
    return out


def _enumerate_cameras(cti: Path) -> str:
    """One line per device the producer sees (loads the producer in this process)."""
    from dmicro_hw.drivers.gentl import enumerate_devices

    devs = enumerate_devices(cti)
    if not devs:
        return "no devices"
    return "\n".join(
        f"{d['id']}  serial {d['serial_number']}  {d['vendor']} {d['model']}" for d in devs
    )


def _start_xvfb(*screens: str) -> tuple[subprocess.Popen, str]:
    r, w = os.pipe()
    args = ["Xvfb", "-displayfd", str(w), "-nolisten", "tcp"]
    for i, s in enumerate(screens):
        args += ["-screen", str(i), s]
    proc = subprocess.Popen(
        args, pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.close(w)
    with os.fdopen(r) as f:
        num = f.readline().strip()
    if not num:
        proc.kill()
        raise RuntimeError("Xvfb did not start")
    return proc, f":{num}"


def _check_device(kind: str, section: Any, rig: Any, frames: int) -> tuple[bool, str]:
    from dmicro_hw.drivers.base import open_device
    from dmicro_hw.errors import DmicroError

    try:
        dev = open_device(kind, section, rig)
        with dev:
            if kind == "slm":
                dev.blank()
                info = dev.info() if hasattr(dev, "info") else {}
                extra = f", window {info['rect']} on {info['display']}" if info.get("rect") else ""
                return True, (
                    f"{dev.shape[1]}x{dev.shape[0]} px, {dev.bit_depth} bit, "
                    f"settle {dev.settle_time_s:g} s{extra}; blanked"
                )
            if kind == "camera":
                got = list(dev.frames(frames))
                dev.stop()
                info = dev.info()
                f = got[-1]
                dt = got[-1].host_time - got[0].host_time
                fps = (len(got) - 1) / dt if len(got) > 1 and dt > 0 else float("nan")
                msg = (
                    f"{len(got)} frames {f.data.shape[1]}x{f.data.shape[0]} {f.pixel_format} "
                    f"({f.data.dtype}), last id {f.frame_id}, ~{fps:.0f} fps"
                )
                dev_info = info.get("device") or {}
                if dev_info:
                    msg += (
                        f"; {dev_info.get('vendor')} {dev_info.get('model')} {dev_info.get('id')}"
                    )
                if info.get("missing_nodes"):
                    msg += f"; device lacks {', '.join(info['missing_nodes'])}"
                return True, msg
            st = dev.status()
            ident = getattr(dev, "identity", {}) or {}
            who = f"{ident.get('name')} fw {ident.get('fw')} on {dev.port}; " if ident else ""
            return True, who + ", ".join(f"{k}={v}" for k, v in st.items())
    except DmicroError as e:
        return False, str(e)
    except Exception as e:  # a driver bug or an SDK error: report it, keep checking the others
        return False, f"{type(e).__name__}: {e}"


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    devices_app = typer.Typer(
        help="List and check devices (cameras, SLMs, trigger boxes).", no_args_is_help=True
    )
    app.add_typer(devices_app, name="devices")

    @devices_app.command("list")
    def list_devices(
        display: str | None = typer.Option(
            None, "--display", help="X display to describe (default: $DISPLAY)"
        ),
        probe: bool = typer.Option(
            True, "--probe/--no-probe", help="load each GenTL producer to list its cameras"
        ),
    ) -> None:
        """Backends, GenTL producers and their cameras, X screens/monitors, serial ports."""
        from rich.table import Table

        from dmicro_hw.drivers.base import available_backends
        from dmicro_hw.drivers.x11 import x_display_info
        from dmicro_hw.errors import DmicroError
        from dmicro_hw.progress import make_console

        console = make_console()
        t = Table(title="Driver backends (rig.yaml <kind>.backend)")
        t.add_column("kind")
        t.add_column("backends")
        for kind in KINDS:
            t.add_row(kind, ", ".join(available_backends(kind)))  # type: ignore[arg-type]
        console.print(t)

        t = Table(title="GenTL producers (camera.cti)")
        t.add_column("producer", overflow="fold")
        t.add_column("found via")
        t.add_column("cameras" if probe else "cameras (not probed)")
        producers = _producers()
        for path, source in producers:
            devs = ""
            if probe:
                try:
                    devs = _enumerate_cameras(path)
                except DmicroError as e:
                    devs = f"[red]{e}[/]"
            t.add_row(str(path), source, devs)
        if not producers:
            t.add_row("none", "set GENICAM_GENTL64_PATH or camera.cti", "")
        console.print(t)

        disp = display or os.environ.get("DISPLAY")
        t = Table(title="Displays (slm.display / slm.monitor)")
        t.add_column("X display")
        t.add_column("kind")
        t.add_column("index")
        t.add_column("geometry")
        if not disp:
            t.add_row("—", "no X display ($DISPLAY unset; use --display)", "", "")
        else:
            from dmicro_hw.drivers.x11 import _split_display

            base, _ = _split_display(disp)
            info = x_display_info(base)
            if info is None:
                t.add_row(disp, "[red]cannot open[/]", "", "")
            else:
                for i, (w, h) in enumerate(info["screens"]):
                    t.add_row(f"{base}.{i}", "screen", str(i), f"{w}x{h}")
                for i, (x, y, w, h) in enumerate(info["monitors"]):
                    t.add_row(disp, "monitor (Xinerama)", str(i), f"{w}x{h}+{x}+{y}")
        console.print(t)

        from serial.tools import list_ports

        t = Table(title="Serial ports (trigger.port)")
        t.add_column("port")
        t.add_column("description")
        t.add_column("hardware id")
        ports = sorted(list_ports.comports(), key=lambda p: p.device)
        for p in ports:
            t.add_row(p.device, str(p.description), str(p.hwid))
        if not ports:
            t.add_row("none", "", "")
        console.print(t)

    @devices_app.command("check")
    def check(
        config: Path = typer.Option(..., "--config", "-c", help="rig.yaml"),
        frames: int = typer.Option(5, "--frames", min=1, help="camera frames to grab"),
        only: DeviceKind | None = typer.Option(None, "--only", help="check one device only"),
    ) -> None:
        """Open each configured device, exercise it briefly, report; exit 3 if any fails."""
        from rich.table import Table

        from dmicro_hw.config import load_rig_config
        from dmicro_hw.progress import make_console

        rig = load_rig_config(config)
        only = value(only)
        console = make_console()
        t = Table(title=f"Devices of {config} (rig {rig.rig_id})")
        t.add_column("device")
        t.add_column("backend")
        t.add_column("result")
        t.add_column("details", overflow="fold")
        failed = 0
        for kind in KINDS:
            if only and kind != only:
                continue
            section = getattr(rig, kind)
            with console.status(f"checking {kind} ({section.backend}) …"):
                ok, msg = _check_device(kind, section, rig, frames)
            failed += not ok
            t.add_row(kind, section.backend, "[green]OK[/]" if ok else "[red]FAIL[/]", msg)
        console.print(t)
        if failed:
            from dmicro_hw.errors import DeviceError

            raise DeviceError(f"{failed} of the configured devices failed the check (see table)")

    @bench_app.command("devices")
    def bench_devices(
        out: Path = typer.Option(Path("runs/bench/devices.json"), "--out", "-o"),
        cti: Path | None = typer.Option(None, "--cti", help="GenTL producer (default: viky.cti)"),
        device: str | None = typer.Option(None, "--device", help="camera.device to pick"),
        seconds: float = typer.Option(2.0, "--seconds", min=0.2, help="per camera measurement"),
        display: str | None = typer.Option(
            None, "--display", help="X display for the SLM latency (default: a private Xvfb)"
        ),
    ) -> None:
        """Camera frame rate at 20/200 fps settings, SLM display latency, trigger round trip."""
        import numpy as np
        from rich.table import Table

        from dmicro_hw.config import CameraDeviceConfig
        from dmicro_hw.drivers.genicam_camera import GenICamCamera
        from dmicro_hw.drivers.gentl import bundled_producers
        from dmicro_hw.evaluation.device_bench import trigger_round_trip
        from dmicro_hw.progress import make_console

        console = make_console()
        rows: list[tuple[str, str, str]] = []
        result: dict[str, Any] = {"host": os.uname().nodename, "time": time.time()}

        producer = cti or next(iter(bundled_producers()), None)
        cams = []
        if producer is not None:
            for rate in (20.0, 200.0):
                cfg = CameraDeviceConfig(
                    backend="genicam",
                    cti=producer,
                    device=device,
                    width=640,
                    height=480,
                    frame_rate_hz=rate,
                )
                with console.status(f"camera at {rate:g} fps …"), GenICamCamera(cfg) as cam:
                    n = max(3, int(rate * seconds))
                    hosts = [f.host_time for f in cam.frames(n)]
                    fps = (len(hosts) - 1) / (hosts[-1] - hosts[0])
                    cams.append(
                        {
                            "set_fps": rate,
                            "frames": n,
                            "fps": fps,
                            "dropped": cam.dropped,
                            "device": cam.info()["device"].get("id"),
                            "size": "640x480 Mono8",
                        }
                    )
                rows.append(
                    (
                        f"camera {cams[-1]['device']} set {rate:g} fps",
                        f"{fps:.1f} fps",
                        f"{n} frames 640x480 Mono8, {cams[-1]['dropped']} dropped",
                    )
                )
        result["camera"] = {"producer": str(producer), "runs": cams}

        slm: dict[str, Any] = {}
        proc = None
        try:
            disp = display
            if disp is None and shutil.which("Xvfb"):
                proc, disp = _start_xvfb("1024x768x24", "1280x1024x24")
                disp += ".1"
            if disp:
                with console.status("screen SLM latency …"):
                    child = subprocess.run(
                        [sys.executable, "-m", "dmicro_hw.commands.devices", "slm-latency", disp],
                        capture_output=True,
                        text=True,
                        timeout=120,
                        env={**os.environ, "QT_QPA_PLATFORM": "xcb"},
                    )
                if child.returncode == 0:
                    slm = json.loads(child.stdout.strip().splitlines()[-1])
                    lat = np.array(slm["latency_s"]) * 1e3
                    rows.append(
                        (
                            "screen SLM show → on screen",
                            f"{np.median(lat):.1f} ms median",
                            f"p90 {np.percentile(lat, 90):.1f} ms, {len(lat)} shows, "
                            f"{slm['size']} on {disp}{' (Xvfb)' if proc else ''}",
                        )
                    )
                else:
                    slm = {"error": child.stderr[-500:]}
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(5)
        result["screen_slm"] = slm

        with console.status("serial trigger round trip (pty) …"):
            trig = trigger_round_trip()
        result["trigger"] = trig
        rows.append(
            (
                "serial trigger STATUS round trip (pty)",
                f"{trig['rtt_ms_p50']:.3f} ms median",
                f"p99 {trig['rtt_ms_p99']:.3f} ms",
            )
        )
        rows.append(
            (
                "sim trigger pulse lateness at 1 kHz",
                f"{trig['pulse_late_ms_p50']:.2f} ms median",
                f"p99 {trig['pulse_late_ms_p99']:.2f} ms, {trig['pulses']} pulses (counts exact)",
            )
        )

        t = Table(title="dmicro bench devices")
        t.add_column("measurement")
        t.add_column("result", justify="right")
        t.add_column("details")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_safely(out, json.dumps(result, indent=2))
        console.print(f"wrote {out}")


def _slm_latency_child(display: str) -> None:
    """Child of ``bench devices``: time show() until a screenshot has the pattern."""
    import numpy as np

    from dmicro_hw.drivers.screen_slm import ScreenSLM

    rows, cols = 1024, 1280
    lat = []
    with ScreenSLM((rows, cols), settle_time_s=0.0, display=display) as slm:
        for k in range(30):
            pat = np.full((rows, cols), (k * 37 + 11) % 256, np.uint8)
            t0 = time.perf_counter()
            slm.show(pat)  # returns when a screenshot shows the pattern (confirm)
            lat.append(time.perf_counter() - t0)
    print(json.dumps({"latency_s": lat, "size": f"{cols}x{rows}"}))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "slm-latency":
    _slm_latency_child(sys.argv[2])
