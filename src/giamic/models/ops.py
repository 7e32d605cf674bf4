"""Small tensor helpers shared by the fusion modules (the conventions of docs/model.md)."""
from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum over time of the valid rows: ``x [B,T,d]``, ``mask [B,T]`` bool -> ``[B,d]``.

    Uses ``where`` rather than a product so that non-finite values in padded rows cannot leak.
    """
    return torch.where(mask[..., None], x, 0).sum(1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid time steps, ``[B,T,d] -> [B,d]``; a sample with no valid step gives 0."""
    count = mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)
    return masked_sum(x, mask) / count


def zero_pad(x: Tensor, mask: Tensor) -> Tensor:
    """Exact zeros in padded rows (applied after every block that outputs a sequence)."""
    return torch.where(mask[..., None], x, 0)


class _MaskedScale(torch.autograd.Function):
    """``y = where(keep, x, 0) * scale``; the backward applies the same saved ``keep`` to the
    gradient. Saving the bool mask (1 byte per element) instead of a float mask, and writing
    the scale in place, saves one full-size allocation and pass in each direction."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


def dropout(x: Tensor, p: float, training: bool, fast: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the kept ones by
    ``1 / (1 - p)``; the identity when ``p == 0`` or not ``training`` (docs/decisions.md, dropout
    mask generation on CPU).

    On CPU with ``fast`` the keep-mask comes from uniform 16-bit integers instead of
    ``F.dropout``'s per-element Bernoulli draws, which cost several times the multiply itself
    on the fusion model's activations. One int32 draw gives two independent uniform int16 values
    ``r``; an element is kept where ``r >= round(p * 65536) - 32768``, so the effective drop
    probability is ``round(p * 65536) / 65536`` (``|error| <= 2**-17 < 1e-5``; exact for
    ``p = 0.5``, 0.1 becomes 0.0999908). The integers come from the torch RNG, so
    ``torch.manual_seed`` makes them reproducible. The backward pass applies the same saved mask
    (and scale) to the gradient: it flows through kept elements only. On other devices, or with
    ``fast=False``, this is ``F.dropout``.
    """
    if not training or p == 0.0:
        return x
    if not fast or x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


_local = threading.local()


@contextlib.contextmanager
def random_source(generator: torch.Generator | None):
    """Within the block, in this thread, ``keep_mask`` draws from ``generator`` (None: the
    default generator). Micro-batches run on several threads draw from their own generators, so
    their dropout masks do not depend on which thread ran first."""
    previous = getattr(_local, "generator", None)
    _local.generator = generator
    try:
        yield
    finally:
        _local.generator = previous


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, device: torch.device, fast: bool = True) -> Tensor:
    """Bool keep-mask of inverted dropout (True = kept), the draws of ``dropout``: uniform int16
    values from one int32 draw per two elements when ``fast``, per-element Bernoulli otherwise.
    Draws from the generator of ``random_source`` when one is set."""
    n = math.prod(shape)
    gen = getattr(_local, "generator", None)
    if not fast:
        return torch.empty(shape, device=device).bernoulli_(1.0 - p, generator=gen).bool()
    r = torch.randint(-(2**31), 2**31, ((n + 1) // 2,), dtype=torch.int32, device=device, generator=gen)
    return r.view(torch.int16)[:n].view(shape) >= round(p * 65536) - 32768


def attend(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, n_heads: int, dropout_p: float, fast_dropout: bool = True
) -> Tensor:
    """Scaled dot-product cross-attention with a key padding mask (eqs. 2 and 9).

    ``q [B,tq,d]``, ``k, v [B,tk,d]``, ``key_mask [B,tk]`` bool (True = real). With one head the
    scale is ``1/sqrt(d)`` exactly as printed in eq. (2); with ``n_heads`` heads it is
    ``1/sqrt(d/n_heads)`` per head (the caller applies the output projection). ``dropout_p``
    (0 outside training) drops attention probabilities through ``dropout``.
    Every query row needs at least one valid key (the empty-modality guard ensures it).
    """
    B, tq, d = q.shape
    tk = k.shape[1]
    h = n_heads
    e = d // h
    # A head axis is always present: the fused CPU/GPU kernels expect [B, h, t, e].
    q4 = q.view(B, tq, h, e).transpose(1, 2)
    k4 = k.view(B, tk, h, e).transpose(1, 2)
    v4 = v.view(B, tk, h, e).transpose(1, 2)
    if dropout_p == 0.0 or (not fast_dropout or q.device.type != "cpu"):
        # Without dropout the fused kernel applies; with fast_dropout off, or off CPU, SDPA
        # drops the probabilities itself (Bernoulli masks, as F.dropout).
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=key_mask[:, None, None, :], dropout_p=dropout_p)
    else:
        # SDPA with dropout falls back to its unfused path on CPU anyway; written out here so
        # the probabilities go through the fast mask. Scale, key mask and matmul are one
        # baddbmm over [B*h, tq, tk]; padded keys get -inf, hence probability exactly 0.
        bias = torch.zeros(B, 1, 1, tk, dtype=q.dtype, device=q.device).masked_fill_(
            ~key_mask[:, None, None, :], float("-inf"))
        bias = bias.expand(B, h, 1, tk).reshape(B * h, 1, tk)
        scores = torch.baddbmm(bias, q4.reshape(B * h, tq, e), k4.reshape(B * h, tk, e).transpose(1, 2),
                               alpha=1.0 / math.sqrt(e))
        probs = dropout(torch.softmax(scores, -1), dropout_p, True)
        out = torch.bmm(probs, v4.reshape(B * h, tk, e)).view(B, h, tq, e)
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
    return split_linear(x, [layer.weight for layer in layers], [layer.bias for layer in layers])


def split_linear(x: Tensor, weights: list[Tensor], biases: list[Tensor], chunks: int = 1) -> list[Tensor]:
    """``x @ W_i^T + b_i`` for every weight ``W_i [o_i, d_in]`` (each output cut into ``chunks``
    equal column blocks), computed as one matrix product over the concatenated weights.

    The backward pass takes the outputs' gradients one by one: ``dx = sum_j g_j W_j`` accumulates
    in one buffer and every weight's gradient is written once, where autograd through ``split``
    would first concatenate the output gradients into one ``[n, sum o_i]`` copy.
    """
    if x.dim() != 2:
        out = split_linear(x.reshape(-1, x.shape[-1]), weights, biases, chunks)
        return [y.view(*x.shape[:-1], y.shape[-1]) for y in out]
    n = len(weights)
    return list(_SplitLinear.apply(x, n, chunks, *weights, *biases))


class _SplitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n, chunks, *params):
        weights, biases = params[:n], params[n:]
        w = torch.cat(weights, 0) if n > 1 else weights[0]
        b = torch.cat(biases, 0) if n > 1 else biases[0]
        y = torch.addmm(b.to(x.dtype), x, w.t().to(x.dtype))
        ctx.n, ctx.chunks = n, chunks
        ctx.save_for_backward(x, *weights)
        sizes = [wi.shape[0] // chunks for wi in weights for _ in range(chunks)]
        return tuple(y.split(sizes, 1))

    @staticmethod
    def backward(ctx, *grads):
        x, *weights = ctx.saved_tensors
        n, c = ctx.n, ctx.chunks
        gx = None
        gw: list[Tensor | None] = []
        gb: list[Tensor | None] = []
        for i, w in enumerate(weights):
            size = w.shape[0] // c
            parts = grads[i * c:(i + 1) * c]
            if all(g is None for g in parts):
                gw.append(None)
                gb.append(None)
                continue
            gwi = w.new_zeros(w.shape) if any(g is None for g in parts) else torch.empty_like(w)
            gbi = w.new_zeros(w.shape[0])
            for j, g in enumerate(parts):
                if g is None:
                    continue
                rows = slice(j * size, (j + 1) * size)
                if ctx.needs_input_grad[0]:
                    wj = w[rows].to(g.dtype)
                    # (addmm with out=, not addmm_: the FLOP counter of bench/fusion.py sees it)
                    gx = torch.mm(g, wj) if gx is None else torch.addmm(gx, g, wj, out=gx)
                if g.dtype == w.dtype:  # straight into the weight's gradient
                    torch.mm(g.t(), x, out=gwi[rows])
                    torch.sum(g, 0, out=gbi[rows])
                else:
                    gwi[rows] = torch.mm(g.t(), x.to(g.dtype))
                    gbi[rows] = g.sum(0)
            gw.append(gwi)
            gb.append(gbi)
        return (gx, None, None, *gw, *gb)
