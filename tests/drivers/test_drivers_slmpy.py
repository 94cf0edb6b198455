"""slmPy adapter: the three ways it can be unavailable are told apart, and the adapter keeps the
slmPy API contract (SLMdisplay(monitor, isImageLock, alwaysTop), getSize, updateArray, close).

slmPy itself needs wxPython and a desktop; the contract test uses a stand-in module with that API
(put on sys.path like an installed package), which records what the adapter sends it.
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from dmicro_hw.config import SLMDeviceConfig
from dmicro_hw.drivers.base import SLM, open_device
from dmicro_hw.drivers.slmpy_slm import SlmpySLM, import_slmpy
from dmicro_hw.errors import DeviceError


def fake_package(tmp_path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    pkg = tmp_path / "slmpy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slmpy", raising=False)


def test_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "slmpy", None)  # import slmpy -> ModuleNotFoundError
    slm = open_device("slm", SLMDeviceConfig(backend="slmpy", pixels=(4, 4)))
    with pytest.raises(DeviceError) as ei:
        slm.open()
    msg = str(ei.value)
    assert "not installed" in msg
    assert "pip install git+https://github.com/wavefrontshaping/slmPy" in msg
    assert "wxPython" in msg


def test_unrelated_pypi_slmpy_is_detected(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_package(
        tmp_path,
        monkeypatch,
        '''
        """Smart local moving (SLM) community detection."""
        def smart_local_moving(graph):
            return graph
        ''',
    )
    with pytest.raises(DeviceError) as ei:
        import_slmpy()
    msg = str(ei.value)
    assert "unrelated PyPI package" in msg and "no SLMdisplay" in msg
    assert str(tmp_path / "slmpy") in msg and "pip uninstall slmpy" in msg


def test_slmpy_without_wxpython(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what slmPy itself raises when wx is missing
    fake_package(
        tmp_path,
        monkeypatch,
        """
        raise ImportError("The wxPython module is required to run this program.")
        """,
    )
    with pytest.raises(DeviceError, match=r"wxPython is missing; install it with `pip install"):
        import_slmpy()


STANDIN = """
import numpy as np
log = []
class SLMdisplay:
    size = (6, 4)
    def __init__(self, monitor=1, isImageLock=False, alwaysTop=False):
        log.append(("open", monitor, isImageLock, alwaysTop))
    def getSize(self):
        return self.size
    def updateArray(self, array, sleep=0.2):
        data = array.tostring()  # what slmPy does with 3-D arrays
        log.append(("update", array.shape, array.dtype.str, data, sleep))
    def close(self):
        log.append(("close",))
"""


def test_adapter_keeps_the_slmpy_contract(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_package(tmp_path, monkeypatch, STANDIN)
    import slmpy

    cfg = SLMDeviceConfig(
        backend="slmpy", pixels=(4, 6), bit_depth=10, monitor=2, settle_time_s=0.0
    )
    slm = open_device("slm", cfg)
    assert isinstance(slm, SLM)
    grey = np.arange(24, dtype=np.uint16).reshape(4, 6) * 40
    with slm:
        slm.show(grey, pattern_id="g")
        assert slm.pattern_id == "g"
    log = slmpy.log
    assert log[0] == ("open", 2, True, True)
    kinds = [e[0] for e in log]
    assert kinds == ["open", "update", "update", "update", "close"]  # blank, show, blank, close
    _, shape, dtype, data, sleep = log[2]
    assert shape == (4, 6, 3) and dtype == "|u1" and sleep == 0.0
    rgb = np.frombuffer(data, np.uint8).reshape(4, 6, 3)
    assert np.array_equal((rgb[..., 0].astype(np.uint16) << 8) | rgb[..., 1], grey)  # R hi, G lo
    assert not rgb[..., 2].any()
    assert not np.frombuffer(log[3][3], np.uint8).any()  # blanked on close
    slm.close()  # idempotent
    with pytest.raises(DeviceError, match="after close"):
        slm.show(grey)

    slmpy.SLMdisplay.size = (1920, 1080)
    with pytest.raises(DeviceError, match=r"slm.pixels \[4, 6\] .* monitor 2 is 1920x1080"):
        SlmpySLM((4, 6), monitor=2).open()
