"""One error family for everything a user can get wrong.

Every message says what was found, what was expected and what to do, and names
the file involved. The CLI turns a ``MedsegError`` into one line and an exit
code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class: a problem with the user's input, config or environment."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(MedsegError):
    """An input file or folder is missing, unreadable or not an image."""


class GeometryError(MedsegError):
    """Shapes or affines that should agree do not."""


class ConfigError(MedsegError):
    """A config file or option is malformed or names an unknown key."""


class UnknownComponentError(ConfigError):
    """A registry lookup (model, preset, ...) named something that does not exist."""


class CheckpointError(MedsegError):
    """A checkpoint is unreadable or does not fit the requested use."""


class OptionalDependencyError(MedsegError):
    """An optional package is needed; the message gives the install line."""


class OutputError(MedsegError):
    """An output cannot be written: read-only or full file system, a file where a folder is expected,
    a folder that is not medseg's, a path that would overwrite an input, a run directory in use."""

    #: errno values that concern the whole output location, not one case (a run stops on them).
    FATAL_ERRNOS = (28, 30, 122)  # ENOSPC, EROFS, EDQUOT

    def __init__(self, message: str, *, path: object | None = None, errno: int | None = None):
        self.errno = errno
        super().__init__(message, path=path)

    @property
    def fatal(self) -> bool:
        return self.errno in self.FATAL_ERRNOS

    @classmethod
    def from_os(cls, exc: OSError, path: object, doing: str = "cannot write") -> OutputError:
        """``OSError`` -> one line naming the output path (e.g. ``cannot write (No space left on device)``)."""
        return cls(f"{doing} ({exc.strerror or type(exc).__name__})", path=path, errno=exc.errno)
