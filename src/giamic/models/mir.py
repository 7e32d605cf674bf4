"""Modality-invariant representations (MIR): MIG blocks, eqs. (8)-(12).

For each modality M, with ``H_VST = [H_V, H_S, H_T]`` (eq. 8, time concatenation of FE outputs,
length L) and ``H_M^MSR`` (length t_M):

* eq. (9)   ``H_M^share = softmax(Q K^T / sqrt(d)) V``, Q from ``H_VST``, K/V from ``H_M^MSR``
  (learned projections; docs/decisions.md), key padding mask of M;
* eq. (10)  ``Gamma_M = sigmoid(PReLU(Conv1x1([c_M || H_VST])))`` with ``c_M`` the masked time mean
  of ``H_M^MSR`` broadcast over L (``mask_source="pooled_msr"``; docs/decisions.md), and
  ``H_M^b = H_M^share * Gamma_M`` (re-zeroed at padded rows);
* eq. (11)  ``H_M^MIG = LN(H_VST + up(Conv1d_{k=3,s=2}(H_M^b)))`` with nearest upsampling back to L
  (row t takes output t//2; docs/decisions.md), re-zeroed at padded rows.

Exact rewrites used for speed (same parameters, same numbers up to float rounding):

* Everything runs on packed rows (``giamic.models.rows``): the valid rows of ``H_VST``, sample by
  sample; each row attends to the rows of ``H_M^MSR`` of its own sample, and the padded rows, which
  eqs. (10) and (11) re-zero, are never computed.
* The 1x1 conv over the channel concat ``[c_M || H_VST]`` equals ``W_c c_M + W_h H_VST + b``: the
  ``W_c`` term is computed once per sample (``[B,d]``), the ``[B,L,2d]`` concat never exists.
* Every product with ``H_VST`` (the three MIGs' ``W_Q`` and ``W_h``) is one GEMM.
* The stride-2 convolution reads its taps through the fixed slot layout (padded rows and the
  convolution's padding read zero) and computes only the outputs that a valid row takes after the
  nearest upsampling, as one GEMM over those outputs (``rows.conv_rows``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from giamic.models.config import GIAMICConfig
from giamic.models.msr import QKV
from giamic.models.ops import fused_linear, split_linear
from giamic.models.rows import Concat, ConvPlan, Rows, attention, conv_plan, conv_rows


class MIGBlock(nn.Module):
    """One modality-invariant generator (eqs. 9-11). 4,723,969 parameters at defaults (docs/model.md)."""

    def __init__(self, cfg: GIAMICConfig):
        super().__init__()
        d = cfg.d_model
        self.d = d
        self.n_heads = cfg.n_heads
        self.attn_dropout = cfg.attn_dropout
        self.fast_dropout = cfg.fast_dropout
        self.qkv = QKV(d) if cfg.mig_qkv_proj else None
        self.out_proj = nn.Linear(d, d) if cfg.n_heads > 1 else None
        # Eq. (10): 1x1 Conv1d over 2d channels; input channels [0, d) read the mask source
        # (c_M by default), channels [d, 2d) read H_VST.
        self.conv_mask = nn.Conv1d(2 * d, d, kernel_size=1)
        self.prelu = nn.PReLU(d if cfg.prelu_per_channel else 1, init=0.25)
        stride = 2 if cfg.ds_mode == "stride2_upsample" else 1
        self.conv_ds = nn.Conv1d(d, d, kernel_size=cfg.ds_kernel, stride=stride, padding=cfg.ds_kernel // 2)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    @property
    def stride(self) -> int:
        return self.conv_ds.stride[0]

    def mask_weights(self) -> tuple[Tensor, Tensor]:
        """``(W_c, W_h)``: the two ``[d_out, d_in]`` halves of the eq. (10) 1x1 conv weight."""
        w = self.conv_mask.weight[:, :, 0]
        return w[:, : self.d], w[:, self.d :]

    def attention(self, q: Tensor, k: Tensor, v: Tensor, q_rows: Rows, k_rows: Rows) -> Tensor:
        p = self.attn_dropout if self.training else 0.0
        h = attention(q, k, v, q_rows, k_rows, self.n_heads, p, self.fast_dropout)
        return self.out_proj(h) if self.out_proj is not None else h

    def local_conv(self, hb: Tensor, plan: ConvPlan) -> Tensor:
        """``Z_M`` of eq. (11) on packed rows: the convolution of ``H_M^b``, upsampled to ``L``
        rows when the stride is 2, at the valid rows ``[n,d]``."""
        return conv_rows(hb, plan, self.conv_ds.weight, self.conv_ds.bias)


class MIR(nn.Module):
    """Three independent MIG blocks, one per modality (``mig_shared`` uses one for all)."""

    def __init__(self, cfg: GIAMICConfig):
        super().__init__()
        self.modalities = cfg.modalities
        self.mask_source = cfg.mask_source
        self.shared = cfg.mig_shared
        keys = ["shared"] if cfg.mig_shared else list(cfg.modalities)
        self.blocks = nn.ModuleDict({k: MIGBlock(cfg) for k in keys})

    def block(self, modality: str) -> MIGBlock:
        return self.blocks["shared" if self.shared else modality]

    def forward(
        self,
        h_vst: Tensor,
        vst: Concat,
        src: dict[str, Tensor],
        src_rows: dict[str, Rows],
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """MIG outputs ``H_M^MIG`` per modality and ``||Z_M|| / ||H_VST||`` (the collapse
        diagnostic of docs/model.md, eq. 11), on packed rows.

        ``h_vst [n,d]``: the valid rows of ``H_VST`` stored as ``vst.rows`` (``vst`` is the
        ``Concat`` of ``src_rows``); ``src[M] [n_M,d]`` is ``H_M^MSR`` (or ``H_M`` in the w/o-MSR
        ablation) stored as ``src_rows[M]``. Outputs are stored as ``vst.rows``.
        """
        d = h_vst.shape[1]
        blocks = list(dict.fromkeys(self.block(m) for m in self.modalities))
        # One GEMM for every product with H_VST: each block's W_Q and the W_h half of its mask conv
        # (with the conv bias).
        ws, bs = [], []
        for blk in blocks:
            if blk.qkv is not None:
                ws.append(blk.qkv.q.weight)
                bs.append(blk.qkv.q.bias)
            ws.append(blk.mask_weights()[1])
            bs.append(blk.conv_mask.bias)
        parts = iter(split_linear(h_vst, ws, bs))
        side: dict[int, tuple[Tensor, Tensor]] = {}
        for blk in blocks:
            q = next(parts) if blk.qkv is not None else h_vst
            side[id(blk)] = (q, next(parts))

        with torch.no_grad():
            h_norm = torch.linalg.vector_norm(h_vst, dtype=torch.float32).clamp(min=1e-12)  # once, not per M
        rows = vst.rows
        # One index plan for the convolutions of all MIG blocks (same kernel and stride: one config).
        plan = conv_plan(rows, blocks[0].conv_ds.kernel_size[0], blocks[0].stride)
        h_msr_full = vst.join([src[m] for m in self.modalities]) if self.mask_source == "full_msr" else None
        outs: dict[str, Tensor] = {}
        ratios: dict[str, Tensor] = {}
        for m in self.modalities:
            blk = self.block(m)
            q, pre = side[id(blk)]
            if blk.qkv is not None:
                k, v = fused_linear(src[m], [blk.qkv.k, blk.qkv.v])
            else:
                k = v = src[m]
            share = blk.attention(q, k, v, rows, src_rows[m])  # eq. (9)
            w_c = blk.mask_weights()[0]
            if self.mask_source == "pooled_msr":
                pre = pre + rows.expand(F.linear(src_rows[m].mean(src[m]), w_c))
            elif self.mask_source == "scatter_msr":  # H_M^MSR in M's slot, zeros elsewhere
                pre = pre + vst.join([F.linear(src[x], w_c) if x == m else src[x].new_zeros(src[x].shape)
                                      for x in self.modalities])
            elif self.mask_source == "full_msr":
                pre = pre + F.linear(h_msr_full, w_c)
            else:  # "share"
                pre = pre + F.linear(share, w_c)
            # Eq. (10) mask. On [n,d] rows dim 1 is the channel axis, as nn.PReLU expects.
            gamma = torch.sigmoid(F.prelu(pre, blk.prelu.weight.to(pre.dtype)))
            z = blk.local_conv(share * gamma, plan)  # eq. (11) conv (and upsampling)
            res = h_vst + z
            outs[m] = F.layer_norm(res, (d,), blk.norm.weight, blk.norm.bias, blk.norm.eps)
            with torch.no_grad():
                ratios[m] = torch.linalg.vector_norm(z, dtype=torch.float32) / h_norm
        return outs, ratios
