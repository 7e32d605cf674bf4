"""Errors of the inference stage (``giamic predict``, ``giamic transcribe``).

Every message names the file (or model directory) it is about and what to do, because these
errors reach end users running the toolkit on their own media (docs/predict.md). All of them are
:class:`giamic.errors.InferenceError`, so the command line reports them as one line
(``giamic predict: error: ...``).
"""
from __future__ import annotations

# A trained model directory that is missing, unreadable or from another build raises the one class
# of the model-directory contract (giamic.modeldir), importable here as before.
from giamic.errors import InferenceError, ModelDirError

__all__ = ["AsrError", "InferenceError", "InputError", "MissingModalityError", "ModelDirError"]


class InputError(InferenceError):
    """One input file cannot be used (not media, empty, too long, nothing in the window)."""


class MissingModalityError(InputError):
    """An input lacks a modality the model needs; the message lists which variants would accept it."""


class AsrError(InferenceError):
    """The Whisper model cannot be found or loaded, or a transcript store is inconsistent."""

