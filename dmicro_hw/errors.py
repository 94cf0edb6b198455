"""Exception types whose messages are shown to the user as-is (one line, no traceback).

Every error that a user can cause (a bad config, a missing device, a corrupt checkpoint, a frame of
the wrong shape) is raised as a subclass of :class:`DmicroError`; the CLI prints its message and
exits with a non-zero code.
"""

from __future__ import annotations


class DmicroError(Exception):
    """Base class for errors that carry a user-facing message."""

    exit_code: int = 1


class ConfigError(DmicroError):
    """Invalid configuration file or value (names file, key and what is allowed)."""

    exit_code = 2


class DeviceError(DmicroError):
    """A device is missing, cannot be opened or stopped answering."""

    exit_code = 3


class DeviceTimeoutError(DeviceError):
    """A device did not deliver in time (e.g. no frame within the fetch timeout)."""


class CheckpointError(DmicroError):
    """A checkpoint, pattern or calibration file is unreadable, corrupt or for another setup."""

    exit_code = 4


class DataError(DmicroError):
    """A user dataset file is unreadable or has the wrong shape/content."""

    exit_code = 5


class FrameShapeError(DmicroError):
    """A frame does not have the shape/dtype the pipeline expects."""

    exit_code = 6
