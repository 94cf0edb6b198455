"""SLM driven as a second monitor: a borderless OpenCV window placed pixel-exact on a chosen screen.

Most phase SLMs (Holoeye, Meadowlark HDMI, Santec, Thorlabs Exulus) appear to the computer as a
monitor. This backend draws the pattern in an OpenCV window (``WINDOW_AUTOSIZE |
WINDOW_GUI_NORMAL``: no toolbar, no status bar, one image pixel per screen pixel) and **refuses to
run** (:class:`~dmicro_hw.errors.DeviceError`) unless the window geometry read back with
``cv2.getWindowImageRect`` is exactly the requested rectangle and lies inside the screen.

Placement (config ``slm:`` section):

* ``display: ":0"`` (X11): the SLM is X screen ``monitor`` of that display (``:0.1`` for
  ``monitor: 1``, the usual "separate X screen" setup for SLMs); the window goes to ``(0, 0)`` of
  that screen. A screen-qualified ``display: ":0.1"`` is used as given.
* no ``display``: the current ``$DISPLAY``; when the X server reports Xinerama/RandR monitors
  (one big desktop), the window goes to the origin of monitor ``monitor``;
  ``options.position: [x, y]`` overrides (also the way to place it on Windows/macOS).
* ``options.fullscreen: true`` asks the window manager for a full-screen window instead (needed
  when a window manager adds decorations); the read-back check still applies.
* ``options.verify`` (default ``screenshot`` on X displays, else ``geometry``): ``screenshot`` shows
  a random probe pattern when opening and checks with a screenshot (PIL ImageGrab) that it arrives
  pixel for pixel (catches display scaling, dithering, colour management — and a Qt window that
  maps but never paints, seen in ~10 % of window creations on a loaded machine: such a window is
  recreated, up to 3 times); ``geometry`` checks the read-back geometry only.
* ``options.confirm`` (default: on for X displays): every :meth:`ScreenSLM.show` waits until a
  screenshot of the window shows the new pattern (up to ``placement_timeout_s``, else
  :class:`~dmicro_hw.errors.DeviceTimeoutError`) before the settle time starts. Drawing goes through
  the GUI event loop, so on a busy machine "drawn" can lag "called" by tens of ms; the confirmation
  makes "show returned" mean "the X server scans it out". Costs one screenshot per show (≈5 ms at
  1280×1024); turn off for very high pattern rates.

Bit depths: ``bit_depth <= 8`` is shown as grey. For more bits, ``options.high_bit_mode``:
``rgb`` (default) packs the 16-bit grey level as red = high byte, green = low byte, blue = 0;
``top8`` shows the top 8 bits as grey (see :mod:`dmicro_hw.drivers.slm_pixels`).

Timing: :meth:`ScreenSLM.show` draws, pumps the GUI event loop (``cv2.waitKey``), waits for the
screenshot confirmation (see ``confirm``) and then waits ``settle_time_s`` (liquid-crystal response
+ at least one video frame) while still pumping events, so when it returns the pattern is on the
glass; ``pattern_id`` and ``shown_at`` record what is on it. OpenCV's GUI (Qt) binds to one X
display per process: opening SLMs on two different displays in one process raises DeviceError.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any

import numpy as np

from dmicro_hw.drivers.slm_base import SLMBase
from dmicro_hw.drivers.slm_pixels import (
    display_slm_kwargs,
    from_display_rgb,
    to_display,
)
from dmicro_hw.drivers.x11 import (  # noqa: F401 - X11 queries live in x11.py; re-exported
    _can_screenshot,
    _split_display,
    screenshot,
    x_display_info,
)
from dmicro_hw.errors import ConfigError, DeviceError, DeviceTimeoutError

log = logging.getLogger(__name__)

_GUI_DISPLAY: str | None = None  # the X display OpenCV's GUI got bound to in this process
_OPEN_WINDOWS: set[str] = set()


# ------------------------------------------------------------------------------------ the driver
class ScreenSLM(SLMBase):
    """A phase SLM shown as a borderless window; see the module doc for placement and bit depths.

    ``shape`` is (rows, cols) in SLM pixels; ``lut`` (optional) the phase in radians of each grey
    level. The window opens on :meth:`open` / ``with`` (or the first :meth:`show`). The generic
    part (show/blank/close, state checks) is :class:`~dmicro_hw.drivers.slm_base.SLMBase`'s.
    """

    backend = "screen"
    BLANK_ON_OPEN = False  # the window is created blank and checked while being placed

    _OPTIONS = {
        "position",
        "fullscreen",
        "high_bit_mode",
        "window_name",
        "verify",
        "placement_timeout_s",
        "confirm",
    }

    def __init__(
        self,
        shape: tuple[int, int],
        pitch_m: float = 8e-6,
        bit_depth: int = 8,
        settle_time_s: float = 0.05,
        phase_range_rad: float = 2 * math.pi,
        lut: np.ndarray | None = None,
        display: str | None = None,
        monitor: int = 1,
        position: tuple[int, int] | None = None,
        fullscreen: bool = False,
        high_bit_mode: str = "rgb",
        window_name: str = "dmicro-slm",
        verify: str | None = None,
        placement_timeout_s: float = 2.0,
        confirm: bool | None = None,
    ) -> None:
        super().__init__(shape, pitch_m, bit_depth, settle_time_s, phase_range_rad, lut)
        self.display = display
        self.monitor = int(monitor)
        self.position = None if position is None else (int(position[0]), int(position[1]))
        self.fullscreen = bool(fullscreen)
        if high_bit_mode not in ("rgb", "top8"):
            raise ConfigError(
                f"slm.options.high_bit_mode: must be 'rgb' or 'top8', got {high_bit_mode!r}"
            )
        if verify not in (None, "geometry", "screenshot"):
            raise ConfigError(
                f"slm.options.verify: must be 'geometry' or 'screenshot', got {verify!r}"
            )
        self.high_bit_mode = high_bit_mode
        self.window_name = window_name
        self._verify_opt = verify
        self.verify = verify or ""
        self.placement_timeout_s = float(placement_timeout_s)
        self._confirm_opt = confirm
        self.confirm = False  # decided in open(): default on when the window is on an X display
        self.last_confirm_s = float("nan")
        self.rect: tuple[int, int, int, int] | None = None
        self.x_display: str | None = None
        self._grey: np.ndarray | None = None
        self._open = False  # the window exists

    @classmethod
    def from_config(cls, section: Any, rig: Any = None) -> ScreenSLM:
        """``slm.backend: screen`` (options: position, fullscreen, high_bit_mode, window_name,
        verify, confirm, placement_timeout_s)."""
        common, opts = display_slm_kwargs(section, cls._OPTIONS)
        pos = opts.pop("position", None)
        if pos is not None and (len(pos) != 2 or not all(isinstance(v, int) for v in pos)):
            raise ConfigError(f"slm.options.position: must be [x, y] integers, got {pos!r}")
        return cls(**common, display=section.display, monitor=section.monitor, position=pos, **opts)

    # ---------------------------------------------------------------- placement
    def _target(self) -> tuple[str | None, tuple[int, int], tuple[int, int] | None]:
        """(X display to use, window origin, screen/monitor size or None if unknown)."""
        on_x = sys.platform.startswith(("linux", "freebsd", "openbsd"))
        if self.display:
            base, screen = _split_display(self.display)
            screen = self.monitor if screen is None else screen
            disp = f"{base}.{screen}"
        else:
            disp = os.environ.get("DISPLAY") if on_x else None
            if on_x and not disp:
                raise DeviceError(
                    "slm: no X display — set slm.display (e.g. ':0') or the DISPLAY variable"
                )
            base, screen = disp or "", None
        origin = self.position or (0, 0)
        size: tuple[int, int] | None = None
        if disp is None:  # Windows / macOS: trust options.position, check geometry only
            return None, origin, None
        info = x_display_info(base if screen is not None else disp)
        if info is None:
            raise DeviceError(
                f"slm.display {disp!r}: cannot open the X display (is the X server running and "
                "may this user connect to it? check DISPLAY/xhost)"
            )
        screens = info["screens"]
        if screen is not None:
            if screen >= len(screens):
                found = ", ".join(f"{i}: {w}x{h}" for i, (w, h) in enumerate(screens))
                raise DeviceError(
                    f"slm.monitor {screen}: display {base} has {len(screens)} screen(s) ({found})"
                )
            size = screens[screen]
        else:
            default = info["default_screen"]
            size = screens[default]
            monitors = info["monitors"]
            if monitors and self.position is None:
                if self.monitor >= len(monitors):
                    found = ", ".join(
                        f"{i}: {w}x{h}+{x}+{y}" for i, (x, y, w, h) in enumerate(monitors)
                    )
                    raise DeviceError(
                        f"slm.monitor {self.monitor}: display {disp} has {len(monitors)} "
                        f"monitor(s) ({found})"
                    )
                x, y, w, h = monitors[self.monitor]
                origin, size = (x, y), (w, h)
                return disp, origin, (x + w, y + h)
        return disp, origin, size

    def _hw_open(self) -> None:
        """Create the window, place it, blank it and verify it is pixel-exact."""
        global _GUI_DISPLAY
        from dmicro_hw.extras import require

        require("cv2", "slm.backend: screen")
        disp, origin, limit = self._target()
        rows, cols = self.shape
        if limit is not None and not self.fullscreen:
            if origin[0] + cols > limit[0] or origin[1] + rows > limit[1]:
                raise DeviceError(
                    f"slm: a {cols}x{rows} window at {origin} does not fit on {disp} "
                    f"({limit[0]}x{limit[1]}); check slm.pixels, slm.display/monitor and position"
                )
        if self.window_name in _OPEN_WINDOWS:
            raise DeviceError(f"slm: window {self.window_name!r} is already open in this process")
        if disp is not None:
            if _GUI_DISPLAY is not None and _GUI_DISPLAY != disp:
                raise DeviceError(
                    f"slm: OpenCV's GUI in this process is bound to display {_GUI_DISPLAY}; "
                    f"cannot open a window on {disp} (use one process per display)"
                )
            if _GUI_DISPLAY is None:
                os.environ["DISPLAY"] = disp
                # no DPI scaling: one image pixel must be one screen pixel
                os.environ["QT_AUTO_SCREEN_SCALE_FACTOR"] = "0"
                os.environ["QT_SCALE_FACTOR"] = "1"
                os.environ["QT_ENABLE_HIGHDPI_SCALING"] = "0"
                _GUI_DISPLAY = disp
        self.x_display = disp
        can_grab = disp is not None and _can_screenshot(disp)
        if not can_grab and (self._verify_opt == "screenshot" or self._confirm_opt):
            raise DeviceError(
                "slm.options: verify=screenshot / confirm need screenshots of "
                f"{disp or 'the screen'} (PIL ImageGrab with XCB support); "
                "set verify: geometry, confirm: false"
            )
        verify = self._verify_opt or ("screenshot" if can_grab else "geometry")
        attempts = 3 if verify == "screenshot" else 1
        for attempt in range(1, attempts + 1):
            self._create_and_place(origin)
            try:
                if verify == "screenshot" and not self._probe_check(last=attempt == attempts):
                    log.warning("slm: window never painted (attempt %d); recreating it", attempt)
                    self._destroy()
                    continue
                self._draw(self._blank_grey())
            except BaseException:
                self._destroy()
                raise
            break
        self.verify = verify
        self.confirm = can_grab if self._confirm_opt is None else self._confirm_opt
        log.info("SLM window %r on %s at %s", self.window_name, disp, self.rect)

    def _create_and_place(self, origin: tuple[int, int]) -> None:
        """Create the window, show blank, move it to ``origin``; DeviceError if not pixel-exact."""
        import cv2

        name = self.window_name
        rows, cols = self.shape
        flags = cv2.WINDOW_GUI_NORMAL | (
            cv2.WINDOW_NORMAL if self.fullscreen else cv2.WINDOW_AUTOSIZE
        )
        cv2.namedWindow(name, flags)
        _OPEN_WINDOWS.add(name)
        self._open = True
        self._closed = False
        try:
            self._draw(self._blank_grey())
            cv2.moveWindow(name, *origin)
            if self.fullscreen:
                cv2.setWindowProperty(name, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
            want = (origin[0], origin[1], cols, rows)
            self.rect = self._wait_geometry(want)
            if self.rect != want:
                raise DeviceError(
                    f"slm: window on {self.x_display or 'the desktop'} is at x={self.rect[0]} "
                    f"y={self.rect[1]} {self.rect[2]}x{self.rect[3]}, expected x={want[0]} "
                    f"y={want[1]} {cols}x{rows} — not pixel-exact (check slm.display/monitor, "
                    "display scaling, the window manager, options.fullscreen)"
                )
        except BaseException:
            self._destroy()
            raise

    def _wait_geometry(self, want: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        import cv2

        end = time.monotonic() + self.placement_timeout_s
        rect = tuple(cv2.getWindowImageRect(self.window_name))
        while rect != want and time.monotonic() < end:
            cv2.waitKey(10)
            rect = tuple(cv2.getWindowImageRect(self.window_name))
        return rect  # type: ignore[return-value]

    def grab(self) -> np.ndarray:
        """Screenshot of the window's rectangle (H, W, 3) RGB uint8 (X11 via PIL ImageGrab)."""
        if self.rect is None:
            raise DeviceError("slm: window not open")
        return screenshot(self.rect, self.x_display)

    def shown_grey(self) -> np.ndarray:
        """Grey levels currently on screen, decoded from a screenshot (see :meth:`grab`)."""
        return from_display_rgb(self.grab(), self.bit_depth, self.high_bit_mode)  # type: ignore[arg-type]

    def _expected_grey(self, grey: np.ndarray) -> np.ndarray:
        """What a screenshot decodes to when ``grey`` is shown (top8 drops the low bits)."""
        shown = to_display(grey, self.bit_depth, self.high_bit_mode)  # type: ignore[arg-type]
        rgb = shown[..., ::-1] if shown.ndim == 3 else np.repeat(shown[..., None], 3, axis=-1)
        return from_display_rgb(rgb, self.bit_depth, self.high_bit_mode)  # type: ignore[arg-type]

    def _confirm(self, grey: np.ndarray, timeout_s: float) -> float:
        """Pump events until a screenshot shows ``grey``; returns the seconds it took."""
        expected = self._expected_grey(grey)
        t0 = time.monotonic()
        while True:
            self._pump(0.0, min_iterations=1)
            got = self.shown_grey()
            if np.array_equal(got, expected):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                bad = int(np.count_nonzero(got != expected))
                raise DeviceTimeoutError(
                    f"slm: pattern not on screen {self.x_display} after {timeout_s:g} s "
                    f"({bad} of {expected.size} pixels differ: display scaling, dithering, "
                    "colour management, or a covering window?)"
                )

    def _probe_check(self, last: bool) -> bool:
        """Show a random probe and compare a screenshot with it, pixel for pixel.

        Returns False when the window shows nothing at all (Qt sometimes leaves a freshly mapped
        window unpainted for good; a new window fixes it); raises DeviceError when the screen
        shows something else than the probe (scaling, dithering, colour management), or when
        ``last`` and the window is still unpainted.
        """
        rng = np.random.default_rng(12345)
        probe = rng.integers(1, 2**self.bit_depth, size=self.shape).astype(
            np.uint8 if self.bit_depth <= 8 else np.uint16
        )
        self._draw(probe)
        try:
            self._confirm(probe, min(self.placement_timeout_s, 1.0))
            return True
        except DeviceTimeoutError as e:
            unpainted = np.array_equal(self.shown_grey(), self._expected_grey(self._blank_grey()))
            if unpainted and not last:
                return False
            what = "window stays unpainted" if unpainted else str(e)
            raise DeviceError(f"slm: screenshot check failed: {what}") from None

    # ---------------------------------------------------------------- showing
    def _draw(self, grey: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.window_name, to_display(grey, self.bit_depth, self.high_bit_mode))  # type: ignore[arg-type]
        cv2.waitKey(1)
        self._grey = grey

    @staticmethod
    def _pump(seconds: float, min_iterations: int = 0) -> None:
        import cv2

        end = time.monotonic() + seconds
        n = 0
        while True:
            left = end - time.monotonic()
            if left <= 0 and n >= min_iterations:
                break
            cv2.waitKey(max(1, min(10, int(left * 1000))))
            n += 1

    def pump(self, seconds: float = 0.0) -> None:
        """Service the window's GUI events (repaints after expose, X flushes) for ``seconds``.

        :meth:`show` already pumps for the settle time; a long loop that shows nothing new should
        call this now and then (the window manager or a screen saver may ask for a repaint).
        """
        if self._open:
            self._pump(seconds, min_iterations=1)

    def _hw_write(self, grey: np.ndarray) -> None:
        self._draw(grey)

    def _hw_settle(self, grey: np.ndarray, t0: float) -> None:
        if self.confirm:
            # wait until the X server has the new pattern, then let the liquid crystal settle
            self.last_confirm_s = self._confirm(grey, self.placement_timeout_s)
            self._pump(self.settle_time_s)
        else:
            # a few event-loop turns even with no settle time: Qt paints and flushes to the X
            # server from its event loop, so without them the pattern may never reach the screen
            self._pump(self.settle_time_s - (time.monotonic() - t0), min_iterations=3)

    def _hw_close(self) -> None:
        """Remove the window (the base blanked it)."""
        self._destroy()

    def _destroy(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.window_name)
            cv2.waitKey(1)
        except cv2.error:
            log.debug("destroyWindow failed", exc_info=True)
        _OPEN_WINDOWS.discard(self.window_name)
        self._open = False

    def _hw_info(self) -> dict[str, Any]:
        return {
            "display": self.x_display,
            "rect": self.rect,
            "high_bit_mode": self.high_bit_mode if self.bit_depth > 8 else None,
            "lut": self.lut is not None,
        }
