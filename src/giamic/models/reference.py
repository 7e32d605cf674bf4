"""A literal, unoptimised transcription of eqs. (2)-(17) (docs/model.md) over a ``GIAMIC``'s parameters.

It materialises everything the equations name (the ``[B,L,2d]`` concat of eq. 10, the upsampled
conv output of eq. 11, the ``[B,4L,d]`` fusion sequence of eq. 13, both KL directions of eq. 14)
and uses an explicit masked softmax instead of fused attention. It exists to check that the
rewrites in ``msr.py``/``mir.py``/``modeling.py`` are exact (tests) and to time the plain
formulation against them (``bench/fusion.py``). It is not used for training.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from giamic.models.modeling import GIAMIC


def _masked_mean(x: Tensor, mu: Tensor) -> Tensor:
    # sum_t mu_t x_t / max(1, sum_t mu_t), written out as in docs/model.md.
    return (x * mu[..., None]).sum(1) / mu.sum(1, keepdim=True).clamp(min=1)


def _attention(q: Tensor, k: Tensor, v: Tensor, mu_k: Tensor, n_heads: int, p: float, training: bool) -> Tensor:
    B, tq, d = q.shape
    h, e = n_heads, d // n_heads
    q = q.view(B, tq, h, e).transpose(1, 2)
    k = k.view(B, -1, h, e).transpose(1, 2)
    v = v.view(B, -1, h, e).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(e)
    s = s.masked_fill(~mu_k[:, None, None, :], float("-inf"))
    a = F.dropout(s.softmax(-1), p, training)
    return (a @ v).transpose(1, 2).reshape(B, tq, d)


def _local_mean(x: Tensor, mu: Tensor) -> Tensor:
    # Masked 3-tap mean along time: rows t-1, t, t+1 that exist and are valid.
    xm = x * mu[..., None]
    mf = mu.to(x.dtype)
    num = xm + F.pad(xm, (0, 0, 1, 0))[:, :-1] + F.pad(xm, (0, 0, 0, 1))[:, 1:]
    den = mf + F.pad(mf, (1, 0))[:, :-1] + F.pad(mf, (0, 1))[:, 1:]
    return num / den.clamp(min=1)[..., None]


def reference_forward(model: GIAMIC, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
    """``{"logits", "loss_mir", "pooled", "msr", "mig", "gates"}`` computed literally (docs/model.md)."""
    cfg = model.config
    if cfg.fusion != "giamic":
        raise ValueError("the reference covers fusion='giamic' (the baseline has no rewrites)")
    training = model.training
    model._check_inputs(features, masks, None)
    h, m = model.embed(features, masks)  # eq. (1): the FE is the same encoder layer either way
    mods = cfg.modalities

    # ---- MSR, eqs. (2)-(6) ----
    gates: dict[str, Tensor] = {}
    if model.msr is not None:
        terms: dict[str, list[Tensor]] = {x: [] for x in mods}
        for blk in model.msr.blocks.values():
            for unit in blk.directions.values():
                qkv = blk.projections(unit)
                a, b = unit.query, unit.key
                hab = _attention(qkv.q(h[a]), qkv.k(h[b]), qkv.v(h[b]), m[b], cfg.n_heads, cfg.attn_dropout, training)
                if unit.out_proj is not None:
                    hab = unit.out_proj(hab)
                p = _masked_mean(hab, m[a]) if cfg.gate_pool == "global" else _local_mean(hab, m[a])
                g = torch.sigmoid(unit.gate(unit.gate_norm(p)))
                gates[unit.name] = g if g.dim() == 2 else _masked_mean(g, m[a])
                g = g[:, None, :] if g.dim() == 2 else g
                terms[a].append((g * hab + (1 - g) * h[a]) * m[a][..., None])  # eq. (4)
        msr = {x: sum(terms[x]) for x in mods}  # eq. (6)
    else:
        msr = dict(h)
    h_msr = torch.cat([msr[x] for x in mods], 1)  # eq. (7)
    mu = torch.cat([m[x] for x in mods], 1)

    # ---- MIR, eqs. (8)-(12) ----
    mig: dict[str, Tensor] = {}
    if model.mir is not None:
        h_vst = torch.cat([h[x] for x in mods], 1)  # eq. (8)
        L = h_vst.shape[1]
        start = 0
        for x in mods:
            blk = model.mir.block(x)
            t = h[x].shape[1]
            if blk.qkv is not None:
                q, k, v = blk.qkv.q(h_vst), blk.qkv.k(msr[x]), blk.qkv.v(msr[x])
            else:
                q, k, v = h_vst, msr[x], msr[x]
            share = _attention(q, k, v, m[x], cfg.n_heads, cfg.attn_dropout, training)  # eq. (9)
            if blk.out_proj is not None:
                share = blk.out_proj(share)
            if cfg.mask_source == "pooled_msr":
                src = _masked_mean(msr[x], m[x])[:, None, :].expand(-1, L, -1)
            elif cfg.mask_source == "scatter_msr":
                src = torch.zeros_like(h_vst)
                src[:, start : start + t] = msr[x]
            elif cfg.mask_source == "full_msr":
                src = h_msr
            else:
                src = share
            u = torch.cat([src, h_vst], -1)  # [B,L,2d]
            gam = torch.sigmoid(blk.prelu(blk.conv_mask(u.transpose(1, 2)))).transpose(1, 2)  # eq. (10)
            hb = share * gam * mu[..., None]
            z = blk.conv_ds(hb.transpose(1, 2))
            if blk.stride == 2:
                z = F.interpolate(z, size=L, mode="nearest")
            z = z.transpose(1, 2)
            mig[x] = blk.norm(h_vst + z) * mu[..., None]  # eq. (11)
            start += t

    # ---- Fusion (13) and classifier (17) ----
    seqs = ([h_msr] if cfg.use_msr else []) + [mig[x] for x in mods if x in mig]
    h_fus = torch.cat(seqs, 1)
    mu_fus = torch.cat([mu] * len(seqs), 1)
    z = _masked_mean(h_fus, mu_fus)
    logits = model.classifier(z)

    # ---- MIC, eqs. (14)-(16), through F.kl_div ----
    loss_mir = torch.zeros((), dtype=torch.float32, device=z.device)
    if mig:
        def kl(lp: Tensor, lq: Tensor) -> Tensor:  # KL(P || Q) per position
            return F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)

        for a, b in cfg.pairs:
            if cfg.mic_mode == "token":
                lp = torch.log_softmax(mig[a].float() / cfg.mic_tau, -1)
                lq = torch.log_softmax(mig[b].float() / cfg.mic_tau, -1)
                s = 0.5 * (kl(lp, lq) + kl(lq, lp))
                loss_mir = loss_mir + ((s * mu).sum(1) / mu.sum(1)).mean()
            else:
                lp = torch.log_softmax(_masked_mean(mig[a].float(), mu) / cfg.mic_tau, -1)
                lq = torch.log_softmax(_masked_mean(mig[b].float(), mu) / cfg.mic_tau, -1)
                loss_mir = loss_mir + (0.5 * (kl(lp, lq) + kl(lq, lp))).mean()
    return {"logits": logits, "loss_mir": loss_mir, "pooled": z, "msr": msr, "mig": mig, "gates": gates}
