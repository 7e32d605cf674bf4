"""Packed rows: the fusion model computes on the valid rows of a batch only (docs/model.md).

A padded sequence ``[B,T,d]`` with its mask ``[B,T]`` is stored as ``[n,d]``: the valid rows of
sample 0 in time order, then those of sample 1, and so on (``Rows``). Every map the model applies
row by row (linear layers, LayerNorm, activations, dropout, the gates of eqs. 3-4 and 10, the
per-position softmaxes of eqs. 14-16) gives on the packed rows exactly the valid rows of its padded
result, and the padded rows, which the equations re-zero or mask away, are never computed. The
operations that couple rows are written for this layout:

* attention (eqs. 1, 2, 9) runs per sample over its contiguous query and key rows, so there is no
  key padding mask and no padded query (``attention``);
* masked means over time are sums per sample (``Rows.sum``, ``Rows.mean``);
* the stride-2 convolution of eq. (11) reads its taps through an index of the fixed slot layout,
  where padded rows and the zero padding of the convolution read zero, and computes only the
  outputs that some valid row takes after the nearest upsampling (``conv_plan``, ``conv_rows``).

``giamic.models.reference`` computes the same quantities on the padded tensors, literally; the
tests compare the two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from giamic.models.ops import attend, keep_mask

# Devices on which attention runs sample by sample over the packed rows; elsewhere the rows are
# scattered back to the padded layout for one batched attention (many small kernels are slow on
# a GPU). Tests empty it to check the padded route on CPU.
PER_SAMPLE_ATTENTION_DEVICES = {"cpu"}
# Samples this short (query and key rows) take the padded route on every device: a per-sample
# tile costs four operations forward and eight backward whatever its size, so one batched
# attention over a few padded rows is cheaper (one feature vector per utterance: 32 tiles of 1x1).
PADDED_ATTENTION_MAX_ROWS = 16


@dataclass(frozen=True)
class Rows:
    """Where the stored rows of a packed ``[n,d]`` tensor sit in a padded ``[B,T]`` layout.

    The rows are those where ``mask`` is True, sample by sample, each sample's in time order:
    ``index[i]`` is the flat position ``b * T + t`` of stored row ``i``, ``sample[i]`` its sample
    ``b``, ``counts[b]`` the number of rows of sample ``b``, and ``spans[b] = (start, length)``
    (on the host) the contiguous run of sample ``b``.
    """

    mask: Tensor  # [B,T] bool
    index: Tensor  # [n] int64
    sample: Tensor  # [n] int64
    counts: Tensor  # [B] int64
    spans: tuple[tuple[int, int], ...]
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, mask: Tensor) -> "Rows":
        T = mask.shape[1]
        index = mask.reshape(-1).nonzero().squeeze(1)
        counts = mask.sum(1)
        lengths = counts.tolist()
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        return cls(mask, index, index // T, counts, tuple(zip(starts, lengths)))

    @property
    def n(self) -> int:
        return self.index.shape[0]

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def time(self) -> int:
        return self.mask.shape[1]

    def positions(self) -> Tensor:
        """Time step ``t`` of every stored row ``[n]``."""
        return self.index % self.time

    def pack(self, x: Tensor) -> Tensor:
        """``[B,T,...]`` -> ``[n,...]``: the valid rows (whatever the padded rows hold is not read)."""
        return x.reshape(self.batch * self.time, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, y: Tensor) -> Tensor:
        """``[n,...]`` -> ``[B,T,...]`` with zero padded rows."""
        out = y.new_zeros(self.batch * self.time, *y.shape[1:]).index_copy(0, self.index, y)
        return out.view(self.batch, self.time, *y.shape[1:])

    def indicator(self, dtype: torch.dtype) -> Tensor:
        """``[B,n]`` matrix with a 1 where row ``i`` belongs to sample ``b``."""
        if dtype not in self._cache:
            b = torch.arange(self.batch, device=self.sample.device)
            self._cache[dtype] = (b[:, None] == self.sample).to(dtype)
        return self._cache[dtype]

    def padded(self) -> "Padded":
        """The rows as a batch padded to its longest sample (cached)."""
        if "padded" not in self._cache:
            self._cache["padded"] = Padded(self)
        return self._cache["padded"]

    def sum(self, y: Tensor) -> Tensor:
        """Per-sample sum of the rows, ``[n,...]`` -> ``[B,...]`` (the masked sum over time).

        A product with the ``[B,n]`` indicator matrix: one matrix product in each direction (its
        backward is ``expand``), where a scatter-add over rows is a slow serial loop on CPU.
        """
        flat = y.reshape(self.n, -1)
        return (self.indicator(y.dtype) @ flat).view(self.batch, *y.shape[1:])

    def mean(self, y: Tensor) -> Tensor:
        """Per-sample mean ``[B,...]`` (``masked_mean``; a sample without rows gives 0)."""
        count = self.counts.clamp(min=1).to(y.dtype)
        return self.sum(y) / count.view(-1, *([1] * (y.dim() - 1)))

    def expand(self, v: Tensor) -> Tensor:
        """A per-sample ``[B,...]`` tensor repeated on each of its rows, ``[n,...]`` (its backward
        is ``sum``)."""
        flat = v.reshape(self.batch, -1)
        return (self.indicator(v.dtype).t() @ flat).view(self.n, *v.shape[1:])


class Padded:
    """Packed rows as a ``[B, T', ...]`` batch, ``T'`` the longest sample's row count (not the slot
    length), sample ``b``'s rows first and zero rows after them (``mask [B,T']``)."""

    def __init__(self, rows: Rows):
        dev = rows.index.device
        lengths = [n for _, n in rows.spans]
        self.batch, self.time = rows.batch, max(max(lengths), 1)
        starts = torch.tensor([s for s, _ in rows.spans], dtype=torch.long, device=dev)
        flat = rows.sample * self.time + torch.arange(rows.n, device=dev) - starts[rows.sample]
        index = torch.full((self.batch * self.time,), rows.n, dtype=torch.long, device=dev)
        index[flat] = torch.arange(rows.n, device=dev)
        self.mask = torch.arange(self.time, device=dev)[None] < torch.tensor(lengths, device=dev)[:, None]
        self._pad, self._unpad = Gather(index, rows.n), Gather(flat, self.batch * self.time)

    def pad(self, y: Tensor) -> Tensor:
        return self._pad(y).view(self.batch, self.time, *y.shape[1:])

    def unpad(self, y: Tensor) -> Tensor:
        return self._unpad(y.reshape(self.batch * self.time, *y.shape[2:]))


class Concat:
    """The time concatenation of several packed sequences (eqs. 7, 8: ``[H_V, H_S, H_T]``).

    ``rows`` are the valid rows of the concatenated layout (mask ``cat(masks, 1)``), stored sample
    by sample like any ``Rows``: sample 0's video rows, its speech rows, its text rows, then
    sample 1's, ... ``join`` builds that storage from the parts' packed tensors.
    """

    def __init__(self, parts: list[Rows]):
        self.parts = parts
        self.rows = Rows.of(torch.cat([r.mask for r in parts], 1))
        # Which row of torch.cat(part tensors) each stored row is.
        L = self.rows.time
        source = torch.empty(self.rows.batch * L, dtype=torch.long, device=self.rows.index.device)
        slot, base = 0, 0
        for r in parts:
            source[r.sample * L + slot + r.positions()] = base + torch.arange(r.n, device=r.index.device)
            slot += r.time
            base += r.n
        self.gather = Gather(source[self.rows.index], base)

    def join(self, xs: list[Tensor]) -> Tensor:
        """Packed parts ``[n_x,d]`` -> packed concatenation ``[n,d]`` (stored as ``self.rows``)."""
        return self.gather(torch.cat(xs, 0))


# ---------------------------------------------------------------------------------------------- #
# Attention


class _PerSampleAttention(torch.autograd.Function):
    """Scaled dot-product attention of each tile ``(qs, ql, ks, kl)``: query rows ``qs:qs+ql``
    read key/value rows ``ks:ks+kl`` (one tile per sample; tiles share no rows), ``n_heads``
    heads of width ``e = d / n_heads``, scale ``1/sqrt(e)``, dropout ``p`` on the probabilities.

    A tile's scores stay in cache from the product through softmax and dropout to ``@ V``, and the
    backward pass is written out with the same tile loop. The probabilities and the bool
    keep-mask are saved; the kept probabilities are recomputed in the backward pass. The scale
    ``1/sqrt(e)`` is applied to ``Q`` and the dropout scale ``1/(1-p)`` to ``V`` once for all
    tiles, so a tile costs four operations forward and eight backward (on a loaded machine every
    operation waits for its threads: fewer is faster).
    """

    @staticmethod
    def forward(ctx, q, k, v, tiles, n_heads, p, fast):
        h = n_heads
        q = q * (1.0 / math.sqrt(q.shape[1] // h))
        v = v * (1.0 / (1.0 - p)) if p > 0.0 else v
        out = q.new_empty(q.shape)
        # One draw for the keep-masks of all tiles (fewer, larger random-number calls).
        sizes = [h * ql * kl for _, ql, _, kl in tiles]
        keep = keep_mask((sum(sizes),), p, q.device, fast).split(sizes) if p > 0.0 else [None] * len(tiles)
        probs = []
        for (qs, ql, ks, kl), kp in zip(tiles, keep):
            qi, ki, vi = _heads(q, qs, ql, h), _heads(k, ks, kl, h), _heads(v, ks, kl, h)
            a = torch.softmax(_product(qi, ki.transpose(1, 2)), -1, dtype=torch.float32)
            kept = a if kp is None else torch.where(kp.view(h, ql, kl), a, 0)
            _product_into(out, qs, ql, kept.to(v.dtype), vi)
            probs.append(a)
        ctx.tiles, ctx.n_heads, ctx.p = tiles, n_heads, p
        ctx.save_for_backward(q, k, v, *probs, *([] if p == 0.0 else keep))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *saved = ctx.saved_tensors  # q, v scaled as in forward
        tiles, h, p = ctx.tiles, ctx.n_heads, ctx.p
        probs, keep = saved[: len(tiles)], saved[len(tiles):] or [None] * len(tiles)
        grad = grad.contiguous()
        gq = q.new_empty(q.shape)
        complete = sum(kl for *_, kl in tiles) == k.shape[0]  # every key row read by a tile
        gk = k.new_empty(k.shape) if complete else k.new_zeros(k.shape)
        gv = v.new_empty(v.shape) if complete else v.new_zeros(v.shape)
        for (qs, ql, ks, kl), a, kp in zip(tiles, probs, keep):
            qi, ki, vi, gi = _heads(q, qs, ql, h), _heads(k, ks, kl, h), _heads(v, ks, kl, h), _heads(grad, qs, ql, h)
            kept = a if kp is None else torch.where(kp.view(h, ql, kl), a, 0)
            _product_into(gv, ks, kl, kept.transpose(1, 2).to(v.dtype), gi)
            # Through dropout and softmax: with t = kept * dL/d(kept), dL/ds = t - a * rowsum(t).
            t = _product(gi, vi.transpose(1, 2)).float().mul_(kept)
            ds = t.addcmul_(a, t.sum(-1, keepdim=True), value=-1.0).to(q.dtype)
            _product_into(gq, qs, ql, ds, ki)
            _product_into(gk, ks, kl, ds.transpose(1, 2), qi)
        gq.mul_(1.0 / math.sqrt(q.shape[1] // h))
        if p > 0.0:
            gv.mul_(1.0 / (1.0 - p))
        return gq, gk, gv, None, None, None, None


def _heads(x: Tensor, start: int, length: int, h: int) -> Tensor:
    """Rows ``start:start+length`` of ``x [n,d]`` as ``[h, length, d/h]`` (a view)."""
    return x[start:start + length].view(length, h, -1).transpose(0, 1)


def _product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``[h, m, k] @ [h, k, n]`` (one head: a plain matrix product, a little faster)."""
    return torch.mm(a[0], b[0])[None] if a.shape[0] == 1 else torch.bmm(a, b)


def _product_into(dst: Tensor, start: int, length: int, a: Tensor, b: Tensor) -> None:
    """Rows ``start:start+length`` of ``dst [n, h*e]`` = ``a @ b`` (``[h, length, e]``).

    With one head the rows are a contiguous ``[length, e]`` block the product writes into; with
    several, the product goes through a buffer (a product into a strided per-head view falls
    back to a slow loop).
    """
    rows = dst[start:start + length]
    if a.shape[0] == 1:
        torch.mm(a[0], b[0], out=rows)
    else:
        rows.view(length, a.shape[0], -1).transpose(0, 1).copy_(torch.bmm(a, b))


def attention(q: Tensor, k: Tensor, v: Tensor, q_rows: Rows, k_rows: Rows, n_heads: int, dropout_p: float,
              fast_dropout: bool = True) -> Tensor:
    """Cross-attention of eqs. (2) and (9) (and the FE self-attention of eq. 1) on packed rows.

    ``q [n_q,d]`` is stored as ``q_rows``, ``k, v [n_k,d]`` as ``k_rows``; each query row reads the
    key rows of its own sample. Scale ``1/sqrt(d/n_heads)``, dropout ``dropout_p`` (0 outside
    training) on the probabilities with the masks of ``ops.dropout``. Equals ``ops.attend`` on
    the padded tensors with the key padding mask, at the valid query rows. Every sample with a
    query row needs at least one key row (the empty-modality guard ensures it).
    """
    longest = max(n for _, n in (*q_rows.spans, *k_rows.spans))
    if q.device.type not in PER_SAMPLE_ATTENTION_DEVICES or longest <= PADDED_ATTENTION_MAX_ROWS:
        # One batched attention over the rows padded to the longest sample of the batch.
        qp, kp = q_rows.padded(), k_rows.padded()
        out = attend(qp.pad(q), kp.pad(k), kp.pad(v), kp.mask, n_heads, dropout_p, fast_dropout)
        return qp.unpad(out)
    # One tile per sample: its query rows read its key rows (every sample has both: guard).
    tiles = tuple(qspan + kspan for qspan, kspan in zip(q_rows.spans, k_rows.spans) if qspan[1])
    dt = q.dtype
    if not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad or v.requires_grad):
        if dropout_p == 0.0:
            # Inference: the fused kernel per tile, no probabilities kept.
            h, e = n_heads, q.shape[1] // n_heads
            out = q.new_empty(q.shape)
            for qs, ql, ks, kl in tiles:
                qi = q[qs:qs + ql].view(ql, h, e).transpose(0, 1)
                ki = k[ks:ks + kl].view(kl, h, e).transpose(0, 1).to(dt)
                vi = v[ks:ks + kl].view(kl, h, e).transpose(0, 1).to(dt)
                out[qs:qs + ql].view(ql, h, e).transpose(0, 1).copy_(F.scaled_dot_product_attention(qi, ki, vi))
            return out
    with torch.autocast(q.device.type, enabled=False):
        return _PerSampleAttention.apply(q, k.to(dt), v.to(dt), tiles, n_heads, dropout_p, fast_dropout)


# ---------------------------------------------------------------------------------------------- #
# Gathers with a zero row, the stride-2 convolution of eq. (11)


class Gather:
    """``out[i] = x[index[i]]`` for a packed ``x [n,...]``, with ``index[i] == n`` meaning a zero row.

    The backward pass sums, for every row of ``x``, the gradients of the outputs that read it; it
    is a gather too, through the inverse index (``[n, r]``: the outputs that read each row, ``r``
    the most any row is read, ``m`` = no output), because a scatter-add over rows is a slow
    serial loop on CPU.
    """

    def __init__(self, index: Tensor, n: int):
        m = index.shape[0]
        self.index, self.n, self.m = index, n, m
        self.zero_at = (index == n).nonzero().squeeze(1)
        # Inverse: sort the outputs by the row they read; the k-th output reading row j goes to
        # inverse[j, k].
        order = torch.argsort(index, stable=True)
        src = index[order]
        first = torch.searchsorted(src, src, right=False)
        rank = torch.arange(m, device=index.device) - first
        keep = src < n
        r = int(rank[keep].max()) + 1 if bool(keep.any()) else 1
        inverse = torch.full((n + 1, r), m, dtype=torch.long, device=index.device)
        inverse[src[keep], rank[keep]] = order[keep]
        self.inverse = inverse[:n].reshape(-1)
        self.inverse_zero_at = (self.inverse == m).nonzero().squeeze(1)
        self.r = r

    def __call__(self, x: Tensor) -> Tensor:
        return _GatherRows.apply(x, self)


def _take(x: Tensor, index: Tensor, sentinel: int, zero_at: Tensor) -> Tensor:
    out = x.index_select(0, index.clamp(max=max(sentinel - 1, 0)))
    return out.index_fill_(0, zero_at, 0) if zero_at.numel() else out


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan):
        ctx.plan = plan
        return _take(x, plan.index, plan.n, plan.zero_at)

    @staticmethod
    def backward(ctx, grad):
        plan = ctx.plan
        g = _take(grad, plan.inverse, plan.m, plan.inverse_zero_at)
        return g.view(plan.n, plan.r, *grad.shape[1:]).sum(1) if plan.r > 1 else g, None


@dataclass(frozen=True)
class ConvPlan:
    """Index plan of a 1-D convolution (kernel ``k``, stride ``s``, padding ``k // 2``) over the
    fixed slot layout of ``Rows``, followed by nearest upsampling when ``s = 2`` (eq. 11).

    ``taps`` gathers, for each of the ``m`` needed outputs ``(b, j)``, the stored rows at positions
    ``s*j - k//2 + i`` (``i < k``) side by side, with zero where that position is padding (its row
    is zero: eq. 10 re-zeroes ``H_M^b``) or lies outside ``[0, T)`` (the convolution's zero
    padding). ``take`` gathers, for each stored row, the output it takes (row ``t`` takes output
    ``t // s``); None when that is output ``i`` for row ``i``.
    """

    taps: Gather
    take: Gather | None
    kernel: int


def conv_plan(rows: Rows, kernel: int, stride: int) -> ConvPlan:
    B, T, n = rows.batch, rows.time, rows.n
    dev = rows.index.device
    pad = kernel // 2
    t_out = (T + 2 * pad - kernel) // stride + 1
    where = torch.full((B * T,), n, dtype=torch.long, device=dev)
    where[rows.index] = torch.arange(n, device=dev)
    wanted = rows.sample * t_out + rows.positions() // stride
    outputs, take = torch.unique(wanted, return_inverse=True)  # the outputs some row takes
    b, j = outputs // t_out, outputs % t_out
    pos = j[:, None] * stride - pad + torch.arange(kernel, device=dev)
    inside = (pos >= 0) & (pos < T)
    taps = torch.where(inside, where[b[:, None] * T + pos.clamp(0, T - 1)], n).reshape(-1)
    identity = outputs.shape[0] == n and bool((take == torch.arange(n, device=dev)).all())
    return ConvPlan(Gather(taps, n), None if identity else Gather(take, outputs.shape[0]), kernel)


def conv_rows(x: Tensor, plan: ConvPlan, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``Conv1d`` (``weight [d_out,d_in,k]``) of the packed rows ``x [n,d_in]`` over the fixed
    layout, then upsampled: ``[n,d_out]``, the valid rows of the padded result.

    One matrix product ``[m, k*d_in] @ [k*d_in, d_out]`` over the needed outputs only; the
    ``[m, k*d_in]`` operand holds each output's ``k`` taps side by side (im2col).
    """
    cols = plan.taps(x).view(-1, plan.kernel * x.shape[1])
    w = weight.permute(0, 2, 1).reshape(weight.shape[0], -1)  # [d_out, k*d_in], tap-major like cols
    out = F.linear(cols, w.to(cols.dtype), None if bias is None else bias.to(cols.dtype))
    return out if plan.take is None else plan.take(out)


def neighbour_mean(x: Tensor, rows: Rows) -> Tensor:
    """Masked 3-tap mean along time (rows ``t-1, t, t+1`` that exist and are valid), packed."""
    B, T, n = rows.batch, rows.time, rows.n
    dev = x.device
    where = torch.full((B * T,), n, dtype=torch.long, device=dev)
    where[rows.index] = torch.arange(n, device=dev)
    t = rows.positions()
    total, count = x, torch.ones(n, dtype=x.dtype, device=dev)
    for step in (-1, 1):
        inside = (t + step >= 0) & (t + step < T)
        idx = torch.where(inside, where[(rows.index + step).clamp(0, B * T - 1)], n)
        total = total + Gather(idx, n)(x)
        count = count + (idx != n).to(x.dtype)
    return total / count[:, None]
