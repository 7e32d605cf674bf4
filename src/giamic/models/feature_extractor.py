"""Embedding module, eq. (1): per-modality input projection and Feature Extractor (FE).

``H_x = FE_x(E_x)``: one post-LN Transformer encoder layer per modality (12 heads, FFN 3072, GELU,
dropout 0.1, no positional encoding by default; docs/model.md, eq. 1). The layer is
``EncoderLayer``, which computes what ``nn.TransformerEncoderLayer`` computes with the same
parameter names, shapes and initialisation, but routes its dropouts through ``ops.dropout``
(docs/decisions.md, dropout on CPU) and its attention through ``ops.attend``. The speech
projection ``Linear(1024, 768)`` of the paper is an ``InputProjection``; it is created for every
modality whose input width differs from ``d_model``.

Padding is exact: padded input rows are replaced by zeros before anything else, attention uses a
key padding mask, and the output is re-zeroed, so whatever the padded rows held cannot reach a
valid row. ``forward_rows`` computes the same layer on packed rows (``giamic.models.rows``): only
the valid rows, each attending to the rows of its own sample; the model uses it, and ``forward``
on padded tensors is the literal form (``GIAMIC.embed``, the reference, the tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from giamic.models.config import GIAMICConfig
from giamic.models.ops import attend, dropout, sinusoidal_positions, split_linear, zero_pad
from giamic.models.rows import Rows, attention


class InputProjection(nn.Linear):
    """``E' = E @ W + b`` mapping an encoder width to ``d_model`` (paper §2.2, eq. 1)."""


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters: ``in_proj_weight``
    ``[3d, d]`` (rows: W_Q, W_K, W_V), ``in_proj_bias [3d]``, ``out_proj`` (``Linear(d, d)``).

    Initialised as ``nn.MultiheadAttention`` does, in the same order of random draws (``out_proj``
    first, then Xavier-uniform ``in_proj_weight``; zero biases), so a seed gives the same weights.
    """

    def __init__(self, d: int, n_heads: int, dropout_p: float, fast_dropout: bool):
        super().__init__()
        self.n_heads = n_heads
        self.dropout_p = dropout_p
        self.fast_dropout = fast_dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B,T,d]``, ``mask [B,T]`` bool (True = real key) -> ``[B,T,d]``."""
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)
        p = self.dropout_p if self.training else 0.0  # dropout on the attention probabilities
        return self.out_proj(attend(q, k, v, mask, self.n_heads, p, self.fast_dropout))

    def forward_rows(self, x: Tensor, rows: Rows) -> Tensor:
        """``forward`` on packed rows ``x [n,d]``: each row attends to the rows of its sample."""
        q, k, v = split_linear(x, [self.in_proj_weight], [self.in_proj_bias], chunks=3)
        p = self.dropout_p if self.training else 0.0
        return self.out_proj(attention(q, k, v, rows, rows, self.n_heads, p, self.fast_dropout))


class EncoderLayer(nn.Module):
    """One Transformer encoder layer (eq. 1; docs/model.md), ``nn.TransformerEncoderLayer``'s
    computation and state-dict keys (``self_attn.*``, ``linear1``, ``linear2``, ``norm1``,
    ``norm2``).

    Post-LN (default): ``x = LN1(x + Drop(SA(x)))``, ``x = LN2(x + Drop(W2 Drop(act(W1 x))))``;
    pre-LN (``norm_first``): ``x = x + Drop(SA(LN1(x)))``, ``x = x + Drop(W2 Drop(act(W1 LN2(x))))``.
    Dropout sits where ``nn.TransformerEncoderLayer`` puts it: on the attention probabilities,
    after the attention block, after the FFN activation and after the FFN.
    """

    def __init__(self, cfg: GIAMICConfig):
        super().__init__()
        d = cfg.d_model
        self.p = cfg.fe_dropout
        self.fast_dropout = cfg.fast_dropout
        self.norm_first = cfg.fe_norm_first
        self.activation = F.gelu if cfg.fe_activation == "gelu" else F.relu
        # Creation order = nn.TransformerEncoderLayer's, so that a seed gives the same weights.
        self.self_attn = SelfAttention(d, cfg.fe_heads, cfg.fe_dropout, cfg.fast_dropout)
        self.linear1 = nn.Linear(d, cfg.fe_ffn)
        self.linear2 = nn.Linear(cfg.fe_ffn, d)
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def _drop(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.fast_dropout)

    def _sa_block(self, x: Tensor, mask: Tensor | Rows) -> Tensor:
        sa = self.self_attn.forward_rows(x, mask) if isinstance(mask, Rows) else self.self_attn(x, mask)
        return self._drop(sa)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self._drop(self.linear2(self._drop(self.activation(self.linear1(x)))))

    def forward(self, x: Tensor, mask: Tensor | Rows) -> Tensor:
        """``x [B,T,d]``, ``mask [B,T]`` bool (True = real) -> ``[B,T,d]``; or packed rows
        ``x [n,d]`` with their ``Rows`` -> ``[n,d]`` (every other step is row by row)."""
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), mask)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, mask))
        return self.norm2(x + self._ff_block(x))


class FeatureExtractor(nn.Module):
    """``FE_x`` of eq. (1): ``fe_layers`` ``EncoderLayer`` blocks.

    Parameters at paper defaults: 7,087,872 per modality (docs/model.md).
    """

    def __init__(self, cfg: GIAMICConfig, modality: str):
        super().__init__()
        self.modality = modality
        self.posenc = modality in cfg.fe_posenc
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.fe_layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B,T,d]`` (padded rows already zero), ``mask [B,T]`` bool -> ``H_x [B,T,d]``."""
        if self.posenc:
            x = zero_pad(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype), mask)
        for layer in self.layers:
            x = layer(x, mask)
        return zero_pad(x, mask)

    def forward_rows(self, x: Tensor, rows: Rows) -> Tensor:
        """``forward`` on packed rows ``x [n,d]`` -> ``[n,d]`` (the valid rows of its result)."""
        if self.posenc:
            pe = sinusoidal_positions(rows.time, x.shape[1], x.device, x.dtype)
            x = x + pe.index_select(0, rows.positions())
        for layer in self.layers:
            x = layer(x, rows)
        return x
