"""Errors of the inference stage (``giamic predict``, ``giamic transcribe``).

Every message names the file (or model directory) it is about and what to do, because these
errors reach end users running the toolkit on their own media (issue #6, "Bad input").
"""
from __future__ import annotations


class InferenceError(Exception):
    """Base class: anything that stops one prediction or transcription."""


class ModelDirError(InferenceError):
    """A trained model directory is missing, unreadable, or does not match this build."""


class InputError(InferenceError):
    """One input file cannot be used (not media, empty, too long, nothing in the window)."""


class MissingModalityError(InputError):
    """An input lacks a modality the model needs; the message lists which variants would accept it."""


class AsrError(InferenceError):
    """The Whisper model cannot be found or loaded, or a transcript store is inconsistent."""
