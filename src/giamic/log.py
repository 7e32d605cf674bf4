"""One log for giamic: module loggers under ``giamic``, set up once by the command line.

Library code logs with ``log = logging.getLogger(__name__)`` and never prints progress; results
meant for the user's stdout (a table, JSON) are the command's return, printed by the CLI. The CLI
calls :func:`setup` once: INFO and above go to stderr as plain lines (``-v`` adds DEBUG, ``-q``
keeps WARNING and above). Progress bars (:func:`progress`) are drawn only when stderr is a terminal
and the level is INFO or lower, so redirected logs hold no carriage-return spam.
"""
from __future__ import annotations

import logging
import sys
from typing import Iterable, Iterator, TypeVar

ROOT = "giamic"
T = TypeVar("T")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"{record.levelname.lower()}: {msg}"
        if record.exc_info and logging.getLogger(ROOT).isEnabledFor(logging.DEBUG):
            msg += "\n" + self.formatException(record.exc_info)
        return msg


def setup(verbosity: int = 0, stream=None) -> logging.Logger:
    """Configure the ``giamic`` logger: 0 = INFO, 1+ = DEBUG, -1 = WARNING and above.

    Idempotent: the handler is replaced, never duplicated. The handler writes to ``sys.stderr`` as
    it is at each call (so pytest's capture sees it)."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if getattr(h, "_giamic", False):
            logger.removeHandler(h)
    handler = _StderrHandler(stream)
    handler._giamic = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


class _StderrHandler(logging.StreamHandler):
    """A stream handler that looks ``sys.stderr`` up at each record (pytest swaps it per test)."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self._fixed = stream

    @property  # type: ignore[override]
    def stream(self):
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # StreamHandler.__init__ assigns a stream; the current sys.stderr is looked up instead


def get_logger(name: str) -> logging.Logger:
    """The logger of one module (``get_logger(__name__)``)."""
    return logging.getLogger(name)


def show_progress() -> bool:
    """Progress bars only on a terminal, and not under ``-q``."""
    return sys.stderr.isatty() and logging.getLogger(ROOT).isEnabledFor(logging.INFO)


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``tqdm`` over ``iterable`` on a terminal; the plain iterable otherwise."""
    if not show_progress():
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr)
