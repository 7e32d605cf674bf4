"""Modality-specific representations (MSR): gated interactive attention, eqs. (2)-(7).

A direction unit ``D_{A<-B}`` lets modality A (queries) read modality B (keys/values):

* eq. (2)  ``H_{A->B} = softmax(Q_A K_B^T / sqrt(d)) V_B``, single head, key padding mask on B;
* eq. (3)  ``G = sigmoid(W_g LN(masked_mean_t(H_{A->B})) + b_g)``, a ``[B,d]`` channel gate broadcast
  over time (docs/decisions.md; ``gate_pool="local"`` gives a per-position gate);
* eq. (4)  ``H_A^(GIA)B = G * H_{A->B} + (1 - G) * H_A``, re-zeroed at padded rows.

A GIA block (eq. 5) holds the two directions of one pair; the MSR of a modality is the plain sum of
its directions' outputs (eq. 6), and ``H^MSR`` is their time concatenation (eq. 7, built by the
caller). Six independent direction units by default (docs/decisions.md; flag
``gia_share_qkv_within_block``).

The model calls ``MSR.forward_rows`` on packed rows (``giamic.models.rows``): the valid rows of
every modality, each attending to the rows of its own sample of the other modality; the masked
time mean of eq. (3) is a per-sample mean of the rows.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from giamic.models.config import ABBREV, GIAMICConfig
from giamic.models.ops import fused_linear
from giamic.models.rows import Rows, attention, neighbour_mean


class QKV(nn.Module):
    """``W_Q, W_K, W_V`` with biases (row-vector convention: ``Q = H W_Q + b``; docs/model.md)."""

    def __init__(self, d: int):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)


def direction_name(a: str, b: str) -> str:
    """Display name of ``D_{A<-B}``, e.g. ``"V<-S"`` (keys of ``GIAMICOutput.gates``)."""
    return f"{ABBREV[a]}<-{ABBREV[b]}"


class GIADirection(nn.Module):
    """``D_{A<-B}``: eqs. (2)-(4). 2,363,904 parameters at paper defaults (docs/model.md)."""

    def __init__(self, cfg: GIAMICConfig, query: str, key: str, own_qkv: bool = True):
        super().__init__()
        d = cfg.d_model
        self.query, self.key = query, key
        self.name = direction_name(query, key)
        self.n_heads = cfg.n_heads
        self.attn_dropout = cfg.attn_dropout
        self.fast_dropout = cfg.fast_dropout
        self.gate_pool = cfg.gate_pool
        self.qkv = QKV(d) if own_qkv else None
        # Single head: no output projection, as eq. (2) is printed; multi-head adds W_O.
        self.out_proj = nn.Linear(d, d) if cfg.n_heads > 1 else None
        self.gate_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.gate = nn.Linear(d, d)

    def pooled_context(self, h_ab: Tensor, rows_a: Rows) -> Tensor:
        """``AvgPooling(H_{A->B})`` of eq. (3) over packed rows: ``[B,d]`` (global) or ``[n_A,d]``
        (local: a masked 3-tap mean along time; padded rows are neither counted nor read, a valid
        row always counts itself)."""
        return rows_a.mean(h_ab) if self.gate_pool == "global" else neighbour_mean(h_ab, rows_a)

    def gate_values(self, h_ab: Tensor, rows_a: Rows) -> Tensor:
        """Eq. (3): ``G`` as ``[B,d]`` (global, one gate per utterance) or ``[n_A,d]`` (local)."""
        return torch.sigmoid(self.gate(self.gate_norm(self.pooled_context(h_ab, rows_a))))

    def attention(self, q: Tensor, k: Tensor, v: Tensor, rows_a: Rows, rows_b: Rows) -> Tensor:
        """Eq. (2) given projected ``Q_A [n_A,d]``, ``K_B, V_B [n_B,d]`` (packed rows)."""
        p = self.attn_dropout if self.training else 0.0
        h = attention(q, k, v, rows_a, rows_b, self.n_heads, p, self.fast_dropout)
        return self.out_proj(h) if self.out_proj is not None else h


class GIABlock(nn.Module):
    """Eq. (5): ``GIA(H_X, H_Y) = (D_{X<-Y}, D_{Y<-X})``, optionally sharing W_Q/W_K/W_V."""

    def __init__(self, cfg: GIAMICConfig, x: str, y: str):
        super().__init__()
        self.x, self.y = x, y
        shared = cfg.gia_share_qkv_within_block
        self.qkv = QKV(cfg.d_model) if shared else None
        self.directions = nn.ModuleDict(
            {
                f"{ABBREV[x].lower()}_from_{ABBREV[y].lower()}": GIADirection(cfg, x, y, own_qkv=not shared),
                f"{ABBREV[y].lower()}_from_{ABBREV[x].lower()}": GIADirection(cfg, y, x, own_qkv=not shared),
            }
        )

    def projections(self, direction: GIADirection) -> QKV:
        return direction.qkv if direction.qkv is not None else self.qkv


class MSR(nn.Module):
    """The MSR module: GIA blocks over the present pairs (eq. 5) and the per-modality sums (eq. 6)."""

    def __init__(self, cfg: GIAMICConfig):
        super().__init__()
        self.modalities = cfg.modalities
        self.blocks = nn.ModuleDict({ABBREV[x] + ABBREV[y]: GIABlock(cfg, x, y) for x, y in cfg.pairs})

    def units(self) -> list[tuple[GIADirection, QKV]]:
        return [(d, blk.projections(d)) for blk in self.blocks.values() for d in blk.directions.values()]

    def forward(self, h: dict[str, Tensor], rows: dict[str, Rows] | dict[str, Tensor]
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``h[x] [n_x,d]`` packed FE outputs stored as ``rows[x]`` -> (packed ``H_x^MSR`` per
        modality, gates ``[B,d]``). Given padded ``h[x] [B,t_x,d]`` and masks ``[B,t_x]`` instead,
        it packs them and returns ``H_x^MSR [B,t_x,d]`` with zero padded rows.

        All projections of one modality's ``H_x`` (the queries of the directions that read from it
        and the keys/values of those that read it) run as one GEMM (exact rewrite).
        """
        if not all(isinstance(r, Rows) for r in rows.values()):
            packed = {x: Rows.of(rows[x]) for x in self.modalities}
            out, gates = self({x: packed[x].pack(h[x]) for x in self.modalities}, packed)
            return {x: packed[x].unpack(out[x]) for x in self.modalities}, gates
        units = self.units()
        wanted: dict[str, dict[int, nn.Linear]] = {x: {} for x in self.modalities}
        for unit, qkv in units:
            wanted[unit.query].setdefault(id(qkv.q), qkv.q)
            wanted[unit.key].setdefault(id(qkv.k), qkv.k)
            wanted[unit.key].setdefault(id(qkv.v), qkv.v)
        proj: dict[tuple[str, int], Tensor] = {}
        for x, layers in wanted.items():
            if layers:
                for key, out in zip(layers, fused_linear(h[x], list(layers.values()))):
                    proj[(x, key)] = out

        acc: dict[str, Tensor] = {}
        gates: dict[str, Tensor] = {}
        for unit, qkv in units:
            a, b = unit.query, unit.key
            q, k, v = proj[(a, id(qkv.q))], proj[(b, id(qkv.k))], proj[(b, id(qkv.v))]
            h_ab = unit.attention(q, k, v, rows[a], rows[b])
            g = unit.gate_values(h_ab, rows[a])
            g_rows = rows[a].expand(g) if unit.gate_pool == "global" else g  # G broadcast over time
            # Eq. (4) as one fused kernel: H_A + G * (H_{A->B} - H_A).
            # (Under autocast H_A may be fp32 while the attention output is bf16: align to H_A.)
            out = torch.lerp(h[a], h_ab.to(h[a].dtype), g_rows.to(h[a].dtype))
            acc[a] = out if a not in acc else acc[a] + out  # eq. (6)
            gates[unit.name] = g if unit.gate_pool == "global" else rows[a].mean(g)
        return acc, gates
