"""``GIAMICConfig``: the single source of truth for the fusion model.

Every switch of the model and its loss is a typed field here (docs/model.md lists them with the
equation each belongs to); the named Table 2 rows are presets of this class
(``giamic.models.variants``), never code forks. Defaults are the paper's full model, V+S+T, with
the choices of docs/model.md where the paper is silent.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from giamic.modalities import MODALITIES, SHORT

# MODALITIES is the canonical modality order (V, S, T): time slots of eqs. (7), (8) follow it.
ABBREV: dict[str, str] = dict(SHORT)
FROM_ABBREV: dict[str, str] = {v: k for k, v in ABBREV.items()}

# Pairs of eq. (5) in the paper's order: GIA(H_V,H_S), GIA(H_S,H_T), GIA(H_T,H_V). The same order
# gives the three SKL terms of eq. (16).
PAIRS: tuple[tuple[str, str], ...] = (("video", "speech"), ("speech", "text"), ("text", "video"))

_CHOICES: dict[str, tuple[str, ...]] = {
    "gate_pool": ("global", "local"),
    "mask_source": ("pooled_msr", "scatter_msr", "full_msr", "share"),
    "ds_mode": ("stride2_upsample", "stride1"),
    "fusion": ("giamic", "baseline"),
    "mic_mode": ("token", "pooled"),
    "fe_activation": ("gelu", "relu"),
    "empty_modality": ("guard", "error"),
}


def _default_input_dims() -> dict[str, int]:
    # CLIP ViT-L/14 image_embeds, WavLM-large last layer, RoBERTa-base last layer (paper §3.1).
    return {"video": 768, "speech": 1024, "text": 768}


@dataclass
class GIAMICConfig:
    """Hyper-parameters of the GIA-MIC fusion model (paper eqs. 1-19; docs/model.md).

    Attributes are grouped by the part of the model they configure. ``variant`` is a label only
    (it names the Table 2 row the config was built from); behaviour is fully determined by the
    other fields.
    """

    variant: str = "full"
    modalities: tuple[str, ...] = MODALITIES
    input_dims: dict[str, int] = field(default_factory=_default_input_dims)
    d_model: int = 768
    num_classes: int = 4

    # Feature extractor, eq. (1): post-LN Transformer layer(s) per modality (docs/model.md).
    fe_layers: int = 1
    fe_heads: int = 12
    fe_ffn: int = 3072
    fe_dropout: float = 0.1
    fe_activation: str = "gelu"
    fe_norm_first: bool = False
    fe_posenc: tuple[str, ...] = ()  # modalities that get a sinusoidal position encoding
    layer_norm_eps: float = 1e-5

    # Cross-attention in GIA (eq. 2) and MIG (eq. 9): heads, dropout on the probabilities.
    n_heads: int = 1
    attn_dropout: float = 0.1
    # Dropout masks on CPU from 16-bit random integers (``ops.dropout``; drop probability rounded
    # to a multiple of 2**-16); False uses F.dropout everywhere (see docs/decisions.md).
    fast_dropout: bool = True

    # MSR / GIA, eqs. (2)-(7): direction units and the eq. (3) gate (docs/decisions.md).
    use_msr: bool = True
    gia_share_qkv_within_block: bool = False
    gate_pool: str = "global"

    # MIR / MIG, eqs. (8)-(12): readings of eqs. (9)-(11) (docs/decisions.md).
    use_mir: bool = True
    mig_qkv_proj: bool = True
    mig_shared: bool = False
    mask_source: str = "pooled_msr"
    prelu_per_channel: bool = False
    ds_mode: str = "stride2_upsample"
    ds_kernel: int = 3

    # Fusion, eq. (13), a time concatenation. ``baseline`` = FE outputs, masked mean, linear.
    fusion: str = "giamic"
    unimodal_use_fe: bool = True

    # Loss, eqs. (14)-(19) (docs/model.md).
    gamma: float = 0.1
    mic_mode: str = "token"
    mic_tau: float = 1.0

    # A sample with no valid position in a modality (see docs/decisions.md).
    empty_modality: str = "guard"

    def __post_init__(self) -> None:
        # Accept lists (JSON) and letters ("V"); normalise to the canonical V, S, T order.
        mods = [FROM_ABBREV.get(m, m) for m in (self.modalities or ())]
        unknown = [m for m in mods if m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected a subset of {MODALITIES}")
        if len(set(mods)) != len(mods):
            raise ValueError(f"duplicate modalities in {list(self.modalities)}")
        if not mods:
            raise ValueError("modalities must name at least one of video, speech, text")
        self.modalities = tuple(m for m in MODALITIES if m in mods)
        self.fe_posenc = tuple(m for m in MODALITIES if m in [FROM_ABBREV.get(x, x) for x in self.fe_posenc])
        bad_pe = [x for x in self.fe_posenc if x not in self.modalities]
        if bad_pe:
            raise ValueError(f"fe_posenc names modalities {bad_pe} that are not in modalities {self.modalities}")

        self.input_dims = {FROM_ABBREV.get(k, k): int(v) for k, v in dict(self.input_dims).items()}
        for m in self.modalities:
            if m not in self.input_dims:
                raise ValueError(f"input_dims has no entry for modality {m!r} (got {self.input_dims})")
            if self.input_dims[m] <= 0:
                raise ValueError(f"input_dims[{m!r}] must be positive, got {self.input_dims[m]}")

        for name in ("d_model", "num_classes", "fe_layers", "fe_heads", "fe_ffn", "n_heads", "ds_kernel"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.d_model % self.fe_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by fe_heads={self.fe_heads}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.ds_kernel % 2 == 0:
            raise ValueError(f"ds_kernel must be odd (centred, padding k//2), got {self.ds_kernel}")
        for name in ("fe_dropout", "attn_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        if self.mic_tau <= 0:
            raise ValueError(f"mic_tau must be > 0, got {self.mic_tau}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        for name, allowed in _CHOICES.items():
            v = getattr(self, name)
            if v not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {v!r}")
        if self.fusion == "giamic":
            if len(self.modalities) < 2:
                raise ValueError(
                    "fusion='giamic' needs at least two modalities; a single-modality row is "
                    "fusion='baseline' (FE, masked mean, linear classifier; docs/model.md, Table 2 variants)"
                )
            if not (self.use_msr or self.use_mir):
                raise ValueError("use_msr and use_mir are both False: that is fusion='baseline'")

    # ----------------------------------------------------------------------------------------- #
    @property
    def d(self) -> int:
        return self.d_model

    @property
    def has_gia(self) -> bool:
        """Whether GIA direction units exist (MSR module, eqs. 2-7)."""
        return self.fusion == "giamic" and self.use_msr

    @property
    def has_mig(self) -> bool:
        """Whether MIG blocks exist (MIR module, eqs. 8-12) and L_MIR is defined."""
        return self.fusion == "giamic" and self.use_mir

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Modality pairs of eq. (5)/(16) whose two members are both present, in paper order."""
        return tuple(p for p in PAIRS if p[0] in self.modalities and p[1] in self.modalities)

    @property
    def uses_fe(self) -> bool:
        return len(self.modalities) > 1 or self.unimodal_use_fe

    # ----------------------------------------------------------------------------------------- #
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["modalities"] = list(self.modalities)
        out["fe_posenc"] = list(self.fe_posenc)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GIAMICConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown GIAMICConfig fields {unknown}")
        kw = dict(d)
        for k in ("modalities", "fe_posenc"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def to_json_file(self, path: str | os.PathLike) -> None:
        from giamic.utils.io import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "GIAMICConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def replace(self, **overrides: Any) -> "GIAMICConfig":
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> "GIAMICConfig":
        """A named Table 2 row (``giamic.models.variants.VARIANTS``) with optional overrides."""
        from giamic.models.variants import variant_config

        return variant_config(name, **overrides)

    @classmethod
    def tiny(cls, variant: str = "full", **overrides: Any) -> "GIAMICConfig":
        """Small sizes of the same architecture, for tests and CPU demos (d=32, 2 heads)."""
        small = dict(
            input_dims={"video": 24, "speech": 40, "text": 32},
            d_model=32,
            fe_heads=2,
            fe_ffn=64,
        )
        small.update(overrides)
        return cls.from_variant(variant, **small)
