"""SLM through the slmPy display library (github.com/wavefrontshaping/slmPy), when it is installed.

slmPy opens a wxPython full-screen frame on monitor ``slm.monitor`` (wx display numbering) and
shows arrays with ``SLMdisplay.updateArray``. Install it with::

    pip install wxPython
    pip install git+https://github.com/wavefrontshaping/slmPy

It is *not* the PyPI package named ``slmpy`` (an unrelated community-detection library); this
backend detects that one and says so. Patterns go through the same grey-level mapping as the
screen backend (:mod:`dmicro_hw.drivers.slm_pixels`; >8-bit data packed into RGB or shown as the
top 8 bits, ``options.high_bit_mode``). The arrays are handed to slmPy as RGB (H, W, 3) uint8
with a ``tostring()`` method, which slmPy still calls but NumPy ≥ 2.3 removed.

Compared with ``slm.backend: screen`` this backend cannot read the window geometry back; it checks
the monitor size slmPy reports against ``slm.pixels`` and relies on slmPy's full-screen frame.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from dmicro_hw.drivers.slm_base import SLMBase
from dmicro_hw.drivers.slm_pixels import display_slm_kwargs, to_display
from dmicro_hw.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it with `pip install wxPython` and "
    "`pip install git+https://github.com/wavefrontshaping/slmPy`"
)


class _RGB(np.ndarray):
    """uint8 RGB array that still offers ``tostring()`` (slmPy calls it; NumPy ≥ 2.3 dropped it)."""

    def tostring(self) -> bytes:  # noqa: D401
        return self.tobytes()


def import_slmpy() -> Any:
    """Import the slmPy display library or raise DeviceError saying what is wrong and how to fix."""
    try:
        import slmpy
    except ImportError as e:
        if e.name == "slmpy":
            raise DeviceError(
                f"slm.backend slmpy: the slmPy display library is not installed; {INSTALL_HINT}"
            ) from None
        if e.name == "wx" or "wxPython" in str(e):
            raise DeviceError(
                "slm.backend slmpy: slmPy is installed but wxPython is missing; "
                "install it with `pip install wxPython`"
            ) from None
        raise DeviceError(
            f"slm.backend slmpy: importing slmPy failed ({e}); {INSTALL_HINT}"
        ) from None
    if not hasattr(slmpy, "SLMdisplay"):
        where = getattr(slmpy, "__file__", None) or "?"
        raise DeviceError(
            f"slm.backend slmpy: the installed `slmpy` ({where}) is the unrelated PyPI package "
            "of that name, not the slmPy display library (no SLMdisplay); run "
            f"`pip uninstall slmpy`, then {INSTALL_HINT}"
        )
    return slmpy


class SlmpySLM(SLMBase):
    """A phase SLM shown full screen by slmPy on wx monitor ``monitor`` (the generic part is
    :class:`~dmicro_hw.drivers.slm_base.SLMBase`'s)."""

    backend = "slmpy"
    _OPTIONS = {"high_bit_mode", "always_top"}

    def __init__(
        self,
        shape: tuple[int, int],
        pitch_m: float = 8e-6,
        bit_depth: int = 8,
        settle_time_s: float = 0.05,
        phase_range_rad: float = 2 * math.pi,
        lut: np.ndarray | None = None,
        monitor: int = 1,
        high_bit_mode: str = "rgb",
        always_top: bool = True,
    ) -> None:
        super().__init__(shape, pitch_m, bit_depth, settle_time_s, phase_range_rad, lut)
        self.monitor = int(monitor)
        if high_bit_mode not in ("rgb", "top8"):
            raise ConfigError(
                f"slm.options.high_bit_mode: must be 'rgb' or 'top8', got {high_bit_mode!r}"
            )
        self.high_bit_mode = high_bit_mode
        self.always_top = bool(always_top)
        self._disp: Any = None

    @classmethod
    def from_config(cls, section: Any, rig: Any = None) -> SlmpySLM:
        """``slm.backend: slmpy`` (options: high_bit_mode, always_top)."""
        common, opts = display_slm_kwargs(section, cls._OPTIONS)
        return cls(**common, monitor=section.monitor, **opts)

    def _hw_open(self) -> None:
        """Open slmPy's full-screen frame and check its size (then the base shows zero phase)."""
        slmpy = import_slmpy()
        try:
            disp = slmpy.SLMdisplay(
                monitor=self.monitor, isImageLock=True, alwaysTop=self.always_top
            )
        except Exception as e:
            raise DeviceError(
                f"slm.monitor {self.monitor}: slmPy could not open it ({type(e).__name__}: {e})"
            ) from None
        width, height = (int(v) for v in disp.getSize())
        if (height, width) != self.shape:
            try:
                disp.close()
            except Exception:
                log.debug("slmPy close failed", exc_info=True)
            raise DeviceError(
                f"slm.pixels {list(self.shape)} (rows, cols) but monitor {self.monitor} is "
                f"{width}x{height}: check slm.monitor and slm.pixels"
            )
        self._disp = disp

    def _hw_write(self, grey: np.ndarray) -> None:
        img = to_display(grey, self.bit_depth, self.high_bit_mode)  # type: ignore[arg-type]
        rgb = img[..., ::-1] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
        self._disp.updateArray(np.ascontiguousarray(rgb, dtype=np.uint8).view(_RGB), sleep=0.0)

    def _hw_close(self) -> None:
        """Close slmPy's frame."""
        disp, self._disp = self._disp, None
        if disp is not None:
            try:
                disp.close()
            except Exception:
                log.warning("slm: slmPy close failed", exc_info=True)

    def _hw_info(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "lut": self.lut is not None}
