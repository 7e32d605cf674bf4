"""Small tensor helpers shared by the fusion modules (spec §0 conventions)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum over time of the valid rows: ``x [B,T,d]``, ``mask [B,T]`` bool -> ``[B,d]``.

    Uses ``where`` rather than a product so that non-finite values in padded rows cannot leak.
    """
    return torch.where(mask[..., None], x, 0).sum(1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``masked_mean`` of spec §0: mean over the valid time steps, ``[B,T,d] -> [B,d]``."""
    count = mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)
    return masked_sum(x, mask) / count


def zero_pad(x: Tensor, mask: Tensor) -> Tensor:
    """Exact zeros in padded rows (spec §0: after every block that outputs a sequence)."""
    return torch.where(mask[..., None], x, 0)


def attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, n_heads: int, dropout_p: float) -> Tensor:
    """Scaled dot-product cross-attention with a key padding mask (eqs. 2 and 9).

    ``q [B,tq,d]``, ``k, v [B,tk,d]``, ``key_mask [B,tk]`` bool (True = real). With one head the
    scale is ``1/sqrt(d)`` exactly as printed (spec §2 item 3); with ``n_heads`` heads it is
    ``1/sqrt(d/n_heads)`` per head (the caller applies the output projection).
    """
    B, tq, d = q.shape
    tk = k.shape[1]
    h = n_heads
    # A head axis is always present: the fused CPU/GPU kernels expect [B, h, t, e].
    q4 = q.view(B, tq, h, d // h).transpose(1, 2)
    k4 = k.view(B, tk, h, d // h).transpose(1, 2)
    v4 = v.view(B, tk, h, d // h).transpose(1, 2)
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=key_mask[:, None, None, :], dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(B, tq, d)


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> Tensor:
    """Fixed sine/cosine position encoding ``[length, dim]`` (optional, flag ``fe_posenc``)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    idx = torch.arange(0, dim, 2, device=device, dtype=torch.float32)
    angle = pos * torch.exp(-math.log(10000.0) * idx / dim)
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return pe.to(dtype) if dtype is not None else pe


def fused_linear(x: Tensor, layers: list[torch.nn.Linear]) -> list[Tensor]:
    """Apply several ``nn.Linear`` maps of the same input as one GEMM, return them split.

    Concatenating the weights is an exact rewrite (``x @ [W1|W2|..]``) that reads ``x`` once and
    gives the matmul kernel one large right-hand side instead of several thin ones.
    """
    if len(layers) == 1:
        return [layers[0](x)]
    w = torch.cat([layer.weight for layer in layers], 0)
    b = torch.cat([layer.bias for layer in layers], 0)
    return list(F.linear(x, w, b).split([layer.out_features for layer in layers], -1))
