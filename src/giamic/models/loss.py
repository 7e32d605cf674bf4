"""Losses: SKL divergence and the MIC loss (eqs. 14-16), cross-entropy (eq. 18), joint (eq. 19).

``H_M^(MIR)`` of eqs. (14)-(16), a symbol the paper never defines, is read as the per-modality MIG
output ``H_M^MIG``. A representation becomes a distribution by a softmax over the feature axis at
every position (``mic_mode="token"``, temperature ``tau``) or of the time-pooled vector
(``"pooled"``). Reduction: sum over features (the KL definition), masked mean over positions, mean
over the batch, sum over pairs. Both arguments receive gradients. The softmaxes run in fp32 even
under autocast. Reasons: docs/decisions.md (fusion pooling and MIC reductions).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from giamic.models.ops import masked_mean
from giamic.models.rows import Rows


def kl_div(logp: Tensor, logq: Tensor) -> Tensor:
    """Eq. (15): ``KL(P || Q) = sum_i P(i) log(P(i) / Q(i))`` over the last axis, from log-probs."""
    return (logp.exp() * (logp - logq)).sum(-1)


def skl_div(logp: Tensor, logq: Tensor) -> Tensor:
    """Eq. (14): ``0.5 (KL(P||Q) + KL(Q||P))`` over the last axis, from log-probabilities.

    Uses the identity ``KL(P||Q) + KL(Q||P) = sum_i (P(i) - Q(i)) (log P(i) - log Q(i))``: one
    pass instead of two, exactly symmetric in floating point.
    """
    return _skl_from(logp.exp(), logp, logq.exp(), logq)


def _skl_from(p: Tensor, logp: Tensor, q: Tensor, logq: Tensor) -> Tensor:
    # Eq. (14) given both distributions and their logs (mic_loss exponentiates each once).
    return 0.5 * ((p - q) * (logp - logq)).sum(-1)


def _log_probs(x: Tensor, tau: float) -> Tensor:
    # Dividing by tau = 1 (the default) is a no-op pass over [B,L,d] in both directions: skip it.
    x = x.float()
    return torch.log_softmax(x / tau if tau != 1.0 else x, dim=-1)


def mic_loss(
    reps: Sequence[Tensor],
    mask: Tensor,
    pairs: Sequence[tuple[int, int]],
    mode: str = "token",
    tau: float = 1.0,
) -> Tensor:
    """Eq. (16): ``L_MIR = sum over pairs (M, N) of D_SKL(H_M^MIG, H_N^MIG)``.

    ``reps``: the MIG outputs ``[B,L,d]``; ``mask [B,L]`` their common validity; ``pairs``: index
    pairs into ``reps``. Returns an fp32 scalar; zero (with a graph) when there is no pair.
    """
    with torch.autocast(device_type=mask.device.type, enabled=False):
        if mode == "token":
            logps = [_log_probs(r, tau) for r in reps]
        elif mode == "pooled":
            logps = [_log_probs(masked_mean(r.float(), mask), tau) for r in reps]
        else:
            raise ValueError(f"mic_mode must be 'token' or 'pooled', got {mode!r}")
        # Each modality's probabilities once, not once per pair it belongs to (same numbers).
        probs = [lp.exp() for lp in logps]
        total = reps[0].new_zeros((), dtype=torch.float32) if reps else mask.new_zeros((), dtype=torch.float32)
        count = mask.sum(1).clamp(min=1)
        for i, j in pairs:
            s = _skl_from(probs[i], logps[i], probs[j], logps[j])  # [B,L] or [B]
            if mode == "token":
                s = (torch.where(mask, s, 0)).sum(1) / count  # masked mean over positions
            total = total + s.mean()  # mean over the batch
        return total


def mic_loss_rows(
    reps: Sequence[Tensor],
    rows: Rows,
    pairs: Sequence[tuple[int, int]],
    mode: str = "token",
    tau: float = 1.0,
) -> Tensor:
    """``mic_loss`` on packed rows: ``reps`` ``[n,d]`` stored as ``rows`` (the valid positions of
    the common mask only, so no position needs masking). Same reductions, same value."""
    with torch.autocast(device_type=rows.mask.device.type, enabled=False):
        if mode == "token":
            logps = [_log_probs(r, tau) for r in reps]
        elif mode == "pooled":
            logps = [_log_probs(rows.mean(r.float()), tau) for r in reps]
        else:
            raise ValueError(f"mic_mode must be 'token' or 'pooled', got {mode!r}")
        probs = [lp.exp() for lp in logps]
        total = torch.zeros((), dtype=torch.float32, device=rows.mask.device)
        for i, j in pairs:
            s = _skl_from(probs[i], logps[i], probs[j], logps[j])  # [n] or [B]
            if mode == "token":
                s = rows.mean(s)  # mean over each utterance's positions
            total = total + s.mean()  # mean over the batch
        return total


def joint_loss(logits: Tensor, labels: Tensor, loss_mir: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """Eqs. (18)-(19): ``(L_ER, L_ER + gamma * L_MIR)`` with a batch-mean cross-entropy (docs/model.md)."""
    loss_ce = F.cross_entropy(logits.float(), labels)
    return loss_ce, loss_ce + gamma * loss_mir
