"""The one error hierarchy of giamic.

Every problem a user can cause or meet (a bad file, a wrong setting, a full disk, a model directory
from another version) is raised as a :class:`GiamicError` subclass. The command line catches it in
one place (``giamic.cli.main``) and prints one line::

    giamic <command>: error: <path>: <what is wrong and what to do>

and exits with the error's ``exit_code``. A traceback means a bug in giamic, never a user mistake.

Exit codes: 0 success; 1 an error (any :class:`GiamicError`, or some inputs of a batch failed);
2 bad usage (unknown option, invalid setting); 130 interrupted (Ctrl-C).

Each stage has its own subclass, so a caller can catch one stage's problems::

    GiamicError
    ├── ConfigError        a setting or option combination is invalid     (exit 2)
    ├── DataError          a corpus, manifest, annotation or media file   (giamic.data)
    ├── FeatureError       an encoder or the feature cache                (giamic.features)
    ├── ModelDirError      a trained model directory                      (giamic.modeldir)
    ├── TrainError         training or cross-validation                   (giamic.train)
    ├── InferenceError     prediction on one's own media, ASR             (giamic.inference)
    └── OutputError        an output path cannot be written (disk full, read-only, ...)
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class GiamicError(Exception):
    """Base of every error giamic reports to a user.

    ``str(err)`` reads ``<path>: <message>`` when a path is given, else ``<message>``.
    """

    exit_code = EXIT_ERROR

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        super().__init__(self._format())

    def _format(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


class ConfigError(GiamicError):
    """A setting, a preset, a config file key or a combination of options is invalid."""

    exit_code = EXIT_USAGE


class FeatureError(GiamicError):
    """An encoder cannot be built or loaded, or the feature cache is unusable."""


class ModelDirError(GiamicError):
    """A trained model directory is missing, unreadable, corrupted or from an incompatible build."""


class TrainError(GiamicError):
    """Training or cross-validation cannot go on (e.g. a unit's saved state came from other settings)."""


class InferenceError(GiamicError):
    """Anything that stops one prediction or transcription."""


class OutputError(GiamicError):
    """An output cannot be written: no space left, permission denied, a file where a folder must be."""


_OS_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
}


def from_os_error(e: OSError) -> GiamicError:
    """Translate an ``OSError`` into a one-line :class:`OutputError` naming the path and the reason."""
    if e.errno is None and e.strerror is None:  # raised with a message only, e.g. FileNotFoundError("...")
        return OutputError(str(e) or type(e).__name__)
    reason = _OS_REASONS.get(e.errno or -1) or (e.strerror or type(e).__name__).lower()
    path = e.filename if e.filename is not None else None
    if e.filename2 is not None:
        path = f"{e.filename} -> {e.filename2}"
    return OutputError(reason, path)
