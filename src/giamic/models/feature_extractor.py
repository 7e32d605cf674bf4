"""Embedding module, eq. (1): per-modality input projection and Feature Extractor (FE).

``H_x = FE_x(E_x)``: one post-LN Transformer encoder layer per modality (12 heads, FFN 3072, GELU,
dropout 0.1, no positional encoding by default; spec §1.1 and §2 items 21-22). The speech
projection ``Linear(1024, 768)`` of the paper is an ``InputProjection``; it is created for every
modality whose input width differs from ``d_model``.

Padding is exact: padded input rows are replaced by zeros before anything else, attention uses a
key padding mask, and the output is re-zeroed, so whatever the padded rows held cannot reach a
valid row.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from giamic.models.config import GIAMICConfig
from giamic.models.ops import sinusoidal_positions, zero_pad


class InputProjection(nn.Linear):
    """``E' = E @ W + b`` mapping an encoder width to ``d_model`` (paper §2.2, spec §1.1)."""


class FeatureExtractor(nn.Module):
    """``FE_x`` of eq. (1): ``fe_layers`` ``nn.TransformerEncoderLayer`` blocks (spec §1.1).

    Parameters at paper defaults: 7,087,872 per modality (spec §1.7).
    """

    def __init__(self, cfg: GIAMICConfig, modality: str):
        super().__init__()
        self.modality = modality
        self.posenc = modality in cfg.fe_posenc
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=cfg.d_model,
                nhead=cfg.fe_heads,
                dim_feedforward=cfg.fe_ffn,
                dropout=cfg.fe_dropout,
                activation=cfg.fe_activation,
                layer_norm_eps=cfg.layer_norm_eps,
                batch_first=True,
                norm_first=cfg.fe_norm_first,
            )
            for _ in range(cfg.fe_layers)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B,T,d]`` (padded rows already zero), ``mask [B,T]`` bool -> ``H_x [B,T,d]``."""
        if self.posenc:
            x = zero_pad(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype), mask)
        pad = ~mask
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        return zero_pad(x, mask)
