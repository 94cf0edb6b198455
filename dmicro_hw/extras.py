"""Optional dependencies: each backend or format imports its library through :func:`require`,
which turns a missing library into one line naming the pip extra that installs it.

| extra | library | used by |
|---|---|---|
| ``genicam`` | harvesters, genicam | ``camera.backend: genicam``, ``dmicro devices genicam`` |
| ``screen`` | opencv-python | ``slm.backend: screen``, ``--preview``, ``dmicro export --show`` |
| ``hdf5`` | h5py | ``.h5``/``.hdf5`` and MATLAB v7.3 training data |
| ``dask`` | dask[array] | ``dmicro reconstruct --dask`` |
| ``video`` | imageio-ffmpeg | ``dmicro view`` H.264 video |
| ``napari`` | napari, npe2 | the ``napari-dmicro`` reader in napari |
| ``onnx`` | onnx, onnxruntime | decoder runtimes ``onnx``, ``onnx-int8`` |

``pip install 'dmicro-hw[all]'`` installs all of them but napari.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dmicro_hw.errors import ConfigError

#: import name → (pip extra, distribution to name in the message)
EXTRAS: dict[str, tuple[str, str]] = {
    "harvesters": ("genicam", "harvesters"),
    "genicam": ("genicam", "genicam"),
    "cv2": ("screen", "opencv-python"),
    "h5py": ("hdf5", "h5py"),
    "dask": ("dask", "dask"),
    "imageio_ffmpeg": ("video", "imageio-ffmpeg"),
    "napari": ("napari", "napari"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnx", "onnxruntime"),
}


class MissingExtraError(ConfigError):
    """An optional library that the requested feature needs is not installed."""


def missing_message(module: str, what: str) -> str:
    extra, dist = EXTRAS.get(module.split(".")[0], ("all", module))
    return (
        f"{what} needs {dist}, which is not installed: "
        f"pip install 'dmicro-hw[{extra}]' (or '.[{extra}]' in a checkout)"
    )


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``what`` and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the library is there but broken: keep the real error
        raise MissingExtraError(missing_message(module, what)) from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (no error raised)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
