"""dmicro-hw: differentiable microscopy (∂μ) from simulation to the optical bench."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dmicro-hw")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
