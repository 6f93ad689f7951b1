"""Error types whose messages are written for the user.

The CLI turns any `AutoMedSAMError` into one `error: ...` line (exit code 2); the Slicer module shows
it in one dialog. Anything else is an internal error.
"""


class AutoMedSAMError(Exception):
    """Base class of every error that is the user's to fix (input, model file, network, disk)."""


class InputError(AutoMedSAMError, ValueError):
    """The input volume, class name, box or path cannot be used as given."""


class ModelError(AutoMedSAMError):
    """A model file is missing, corrupt, has the wrong checksum or lacks a requested class."""


class DownloadError(ModelError):
    """A model file could not be downloaded; the message says where to place it by hand."""


class OutputError(AutoMedSAMError, OSError):
    """A result could not be written (directory not writable, disk full); no partial file is left."""


class Cancelled(AutoMedSAMError):
    """The user cancelled a run; nothing was written."""


class DependencyError(AutoMedSAMError):
    """A Python package the run needs is missing and was not installed; the message says how to get it."""
