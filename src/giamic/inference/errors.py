"""Errors of the inference stage (``giamic predict``, ``giamic transcribe``).

Every message names the file (or model directory) it is about and what to do, because these
errors reach end users running the toolkit on their own media. All of them are
:class:`giamic.errors.InferenceError`, so the command line reports them as one line
(``giamic predict: error: ...``).
"""
from __future__ import annotations

from giamic import errors as _errors
from giamic.errors import InferenceError


class ModelDirError(InferenceError, _errors.ModelDirError):
    """A trained model directory is missing, unreadable, or does not match this build.

    Both an :class:`InferenceError` (it stops a prediction) and a :class:`giamic.errors.ModelDirError`.
    """


class InputError(InferenceError):
    """One input file cannot be used (not media, empty, too long, nothing in the window)."""


class MissingModalityError(InputError):
    """An input lacks a modality the model needs; the message lists which variants would accept it."""


class AsrError(InferenceError):
    """The Whisper model cannot be found or loaded, or a transcript store is inconsistent."""


__all__ = ["InferenceError", "ModelDirError", "InputError", "MissingModalityError", "AsrError"]
