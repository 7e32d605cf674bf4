"""The three modalities, named once for every stage.

``Modality`` is a ``StrEnum``: a member equals its string (``Modality.VIDEO == "video"``), so it
works as a dict key, in JSON, on the command line and in file formats exactly as the plain names do.
``MODALITIES`` is the canonical order (video, speech, text) used for tables, cache keys and loops.
"""
from __future__ import annotations

from enum import StrEnum


class Modality(StrEnum):
    VIDEO = "video"
    SPEECH = "speech"
    TEXT = "text"


MODALITIES: tuple[str, ...] = (Modality.VIDEO.value, Modality.SPEECH.value, Modality.TEXT.value)
"""The canonical order of the modalities."""

SHORT = {Modality.VIDEO.value: "V", Modality.SPEECH.value: "S", Modality.TEXT.value: "T"}
"""One-letter names used in the paper's tables (V+S+T)."""


def check_modality(name: str) -> str:
    """Return ``name`` if it is a modality, else raise :class:`giamic.errors.ConfigError`."""
    if name not in MODALITIES:
        from giamic.errors import ConfigError

        raise ConfigError(f"unknown modality {name!r}: choose one of {', '.join(MODALITIES)}")
    return name
