"""X11 queries and screenshots for the screen SLM and ``dmicro devices list``: the screens and
Xinerama monitors of a display (libX11/libXinerama through ctypes, no window opened), whether
screenshots work (Pillow with XCB), screenshots of a rectangle, and ``":0.1"`` → (":0", 1).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger("dmicro_hw.drivers.screen_slm")


class _XineramaScreenInfo(ctypes.Structure):
    _fields_ = [
        ("screen_number", ctypes.c_int),
        ("x_org", ctypes.c_short),
        ("y_org", ctypes.c_short),
        ("width", ctypes.c_short),
        ("height", ctypes.c_short),
    ]


def _libx11() -> Any:
    name = ctypes.util.find_library("X11")
    if not name:
        return None
    lib = ctypes.CDLL(name)
    lib.XOpenDisplay.restype = ctypes.c_void_p
    lib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    lib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    lib.XScreenCount.argtypes = [ctypes.c_void_p]
    lib.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.XDefaultScreen.argtypes = [ctypes.c_void_p]
    return lib


def x_display_info(display: str) -> dict[str, Any] | None:
    """Screens and monitors of X ``display`` (``None`` when it cannot be opened / no libX11).

    Returns ``{"display", "default_screen", "screens": [(w, h), ...], "monitors": [(x, y, w, h),
    ...]}``; monitors come from Xinerama (empty when the extension is not active).
    """
    x11 = _libx11()
    if x11 is None:
        return None
    dpy = x11.XOpenDisplay(display.encode())
    if not dpy:
        return None
    try:
        n = x11.XScreenCount(dpy)
        screens = [(x11.XDisplayWidth(dpy, i), x11.XDisplayHeight(dpy, i)) for i in range(n)]
        monitors: list[tuple[int, int, int, int]] = []
        xin_name = ctypes.util.find_library("Xinerama")
        if xin_name:
            xin = ctypes.CDLL(xin_name)
            xin.XineramaIsActive.argtypes = [ctypes.c_void_p]
            xin.XineramaQueryScreens.restype = ctypes.POINTER(_XineramaScreenInfo)
            xin.XineramaQueryScreens.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
            if xin.XineramaIsActive(dpy):
                count = ctypes.c_int(0)
                info = xin.XineramaQueryScreens(dpy, ctypes.byref(count))
                if info:
                    for i in range(count.value):
                        s = info[i]
                        monitors.append((s.x_org, s.y_org, s.width, s.height))
                    x11.XFree.argtypes = [ctypes.c_void_p]
                    x11.XFree(info)
        return {
            "display": display,
            "default_screen": x11.XDefaultScreen(dpy),
            "screens": screens,
            "monitors": monitors,
        }
    finally:
        x11.XCloseDisplay(dpy)


#: tries of one screenshot: opening an X connection fails now and then on a busy server
#: (measured: 20 of 200 connections to a fresh Xvfb on a loaded 2-core machine, "X connection
#: failed: error 1"); each retry waits 50 ms
GRAB_TRIES = 3


def grab(bbox: tuple[int, int, int, int] | None, display: str | None) -> Any:
    """PIL screenshot of ``bbox`` (x0, y0, x1, y1; None: the whole screen) on X ``display``,
    retried on a failed X connection (:data:`GRAB_TRIES`)."""
    from PIL import ImageGrab

    kw = {"xdisplay": display} if display else {}
    for attempt in range(GRAB_TRIES):
        try:
            return ImageGrab.grab(bbox=bbox, **kw)
        except OSError as e:
            if "built without XCB" in str(e) or attempt + 1 == GRAB_TRIES:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _can_screenshot(display: str) -> bool:
    """Whether PIL can grab X ``display`` (Pillow built with XCB, server reachable)."""
    try:
        grab((0, 0, 1, 1), display)
        return True
    except Exception as e:  # OSError "built without XCB support", connection errors
        log.warning("slm: no screenshots of %s (%s); geometry check only", display, e)
        return False


def _split_display(display: str) -> tuple[str, int | None]:
    """``":0.1"`` → (":0", 1); ``":0"`` → (":0", None)."""
    host, _, rest = display.rpartition(":")
    num, dot, screen = rest.partition(".")
    if dot and screen.isdigit():
        return f"{host}:{num}", int(screen)
    return display, None


def screenshot(rect: tuple[int, int, int, int], display: str | None = None) -> np.ndarray:
    """Screenshot of ``rect`` = (x, y, w, h) on X ``display`` (default: the current one),
    (h, w, 3) RGB uint8 (PIL ImageGrab)."""
    x, y, w, h = rect
    return np.asarray(grab((x, y, x + w, y + h), display).convert("RGB"))
