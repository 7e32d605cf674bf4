"""Errors and the skip policy of the data stage (docs/architecture.md, "Errors, exit codes and logs").

Every problem with a corpus or a media file is reported with the file it comes from and, where
there is one, the line number. A run either stops on the first problem (the default) or, under an
explicit skip policy, skips the affected utterance, counts it and lists it in the command output
and in ``dataset.json``. Nothing is dropped silently.

:class:`DataError` subclasses :class:`giamic.errors.GiamicError`, so the command line reports it as
one line (``giamic prepare: error: <path>:<line>: <message>``) with exit code 1.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from giamic.errors import ConfigError, GiamicError


class DataError(GiamicError):
    """A corpus or annotation problem: a malformed line, a missing transcript, a bad manifest row.

    ``str(err)`` reads ``<path>:<line>: <message>`` (or ``<path>: <message>`` without a line), so the
    user can open the file at the right place. ``kind`` is a short machine-readable reason used to
    count skips (``"malformed_line"``, ``"missing_transcript"``, ...).
    """

    default_kind = "data_error"

    def __init__(
        self,
        message: str,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        kind: str | None = None,
        utt_id: str | None = None,
    ) -> None:
        self.line = line
        self.kind = kind or self.default_kind
        self.utt_id = utt_id
        super().__init__(message, path)  # sets message and path, then formats with _format below

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        who = f"[{self.utt_id}] " if self.utt_id else ""
        return f"{where}{who}{self.message}"


class MediaError(DataError):
    """A media file that cannot be used: missing, empty, corrupt, or a window with no frames.

    A subclass of :class:`DataError` so that one ``except DataError`` covers every input problem.
    """

    default_kind = "media_error"


@dataclass(frozen=True)
class SkippedItem:
    """One skipped utterance (or file, when the problem is not tied to one utterance)."""

    reason: str
    kind: str
    utt_id: str | None = None
    file: str | None = None
    line: int | None = None

    def to_json(self) -> dict:
        out: dict = {}
        if self.utt_id is not None:
            out["utt_id"] = self.utt_id
        if self.file is not None:
            out["file"] = self.file
        if self.line is not None:
            out["line"] = self.line
        out["kind"] = self.kind
        out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class SkipPolicy:
    """What to do with bad input: ``"raise"`` (default, stop with the error) or ``"skip"``.

    Under ``"skip"`` the affected utterance is left out, and the :class:`SkipReport` records it.
    """

    on_error: Literal["raise", "skip"] = "raise"

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    @property
    def skips(self) -> bool:
        return self.on_error == "skip"


@dataclass
class SkipReport:
    """Collects every skipped item under a :class:`SkipPolicy`; raises under ``"raise"``."""

    policy: SkipPolicy = field(default_factory=SkipPolicy)
    items: list[SkippedItem] = field(default_factory=list)

    def handle(self, err: DataError, utt_id: str | None = None) -> None:
        """Raise ``err`` under the raise policy; otherwise record it as a skip.

        The utterance id is attached to the error so that its message names the file, the line and
        the utterance.
        """
        if utt_id and not err.utt_id:
            err.utt_id = utt_id
            err.args = (err._format(),)
        if not self.policy.skips:
            raise err
        self.items.append(
            SkippedItem(
                reason=err.message,
                kind=err.kind,
                utt_id=utt_id or err.utt_id,
                file=str(err.path) if err.path is not None else None,
                line=err.line,
            )
        )

    @property
    def skipped_ids(self) -> set[str]:
        return {i.utt_id for i in self.items if i.utt_id is not None}

    def counts(self) -> dict[str, int]:
        """Number of skips per kind, sorted by kind."""
        return dict(sorted(Counter(i.kind for i in self.items).items()))

    def to_json(self) -> list[dict]:
        return [i.to_json() for i in self.items]

    def summary(self) -> str:
        """Human-readable lines for the command output (empty string when nothing was skipped)."""
        if not self.items:
            return ""
        lines = [f"skipped {len(self.items)} item(s): " + ", ".join(f"{k}={v}" for k, v in self.counts().items())]
        for i in self.items:
            where = i.file or ""
            if i.line is not None:
                where += f":{i.line}"
            lines.append(f"  skip {i.utt_id or '-'} ({i.kind}) {where}: {i.reason}")
        return "\n".join(lines)
