"""Padding shared by training and inference: every modality sits in a fixed-length slot.

Each modality is padded to a fixed length (video ``K``, speech ``M``, text ``N``), the lengths the
model was trained with (``pipeline.json`` ``preprocessing.lengths``). The eq. (11) convolution sees
the slot layout, so fixed lengths make an utterance's logits independent of the other utterances in
its batch (docs/decisions.md). Training (``giamic.train.batches``) and prediction
(``giamic.inference.predictor``) both pad here, so they cannot drift apart.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["pad_features", "pad_to_length"]


def pad_features(items: Sequence[np.ndarray], length: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_i, D]`` arrays into ``[B, length, D]`` float32 (truncating past ``length``) and
    a ``[B, length]`` bool mask (True = real)."""
    x = np.zeros((len(items), length, dim), dtype=np.float32)
    m = np.zeros((len(items), length), dtype=bool)
    for i, a in enumerate(items):
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != dim:
            raise ValueError(f"cached features have shape {a.shape}, expected [T, {dim}]")
        t = min(length, a.shape[0])
        x[i, :t] = a[:t]
        m[i, :t] = True
    return torch.from_numpy(x), torch.from_numpy(m)


def pad_to_length(features: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (or truncate) encoder outputs ``[B, T, D]`` and their mask ``[B, T]`` to ``length``."""
    b, t, d = features.shape
    if t < length:
        features = torch.cat([features, features.new_zeros(b, length - t, d)], 1)
        mask = torch.cat([mask, mask.new_zeros(b, length - t)], 1)
    return features[:, :length], mask[:, :length]
