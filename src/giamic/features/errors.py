"""Errors of the features stage: the encoders and the feature cache.

Both subclass :class:`giamic.errors.FeatureError`, so ``giamic extract``, ``import-features`` and
training report them as one line naming the file (``giamic <command>: error: ...``).
"""
from __future__ import annotations

from giamic.errors import FeatureError


class FeatureStoreError(FeatureError):
    """A missing, incomplete or corrupt feature store; the message names the file."""


class EncoderUnavailableError(FeatureError):
    """The weights of an encoder cannot be loaded (offline, missing package, bad directory)."""


__all__ = ["FeatureError", "FeatureStoreError", "EncoderUnavailableError"]
