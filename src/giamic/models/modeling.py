"""``GIAMIC``: the fusion model (embedding module, MSR, MIR, fusion eq. 13, classifier eq. 17).

Contract (docs/architecture.md; every equation in docs/model.md)::

    out = model(features={"video": xv, "speech": xs, "text": xt},   # [B,T,D_in] float
                masks={"video": mv, "speech": ms, "text": mt},      # [B,T] bool, True = real
                labels=y)                                            # optional [B] int64

Padding is exact for every variant: padded input rows are replaced by zeros on entry, every
attention has a key padding mask, every sequence is re-zeroed before any convolution or pooling,
and all means are masked. Whatever sits in padded positions never changes logits or losses.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from giamic.models.config import ABBREV, GIAMICConfig
from giamic.models.feature_extractor import FeatureExtractor, InputProjection
from giamic.models.loss import joint_loss, mic_loss
from giamic.models.mir import MIR
from giamic.models.msr import MSR
from giamic.models.ops import masked_sum, zero_pad

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class GIAMICOutput:
    """What ``GIAMIC.forward`` returns (docs/architecture.md, docs/model.md)."""

    logits: Tensor  # [B,C], eq. (17) before the softmax
    loss_mir: Tensor  # scalar, eq. (16); 0 where the variant has no MIR
    pooled: Tensor  # [B,d], z of eq. (17)
    loss_ce: Tensor | None = None  # eq. (18), batch mean, when labels are given
    loss: Tensor | None = None  # eq. (19): loss_ce + gamma * loss_mir, when labels are given
    invariant: dict[str, Tensor] = field(default_factory=dict)  # modality -> masked mean of H_M^MIG
    gates: dict[str, Tensor] = field(default_factory=dict)  # "V<-S" etc. -> eq. (3) gate [B,d]
    mig_residual_ratio: dict[str, Tensor] = field(default_factory=dict)  # modality -> ||Z_M||/||H_VST||

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits.float(), dim=-1)


class GIAMIC(nn.Module):
    """GIA-MIC fusion model over precomputed encoder outputs (paper §2; docs/model.md).

    Sub-modules (state-dict prefixes): ``input_proj.<modality>`` (e.g. the speech projection),
    ``fe.<modality>`` (eq. 1), ``msr.blocks.<XY>.directions.<a>_from_<b>`` (eqs. 2-6),
    ``mir.blocks.<modality>`` (eqs. 8-11), ``classifier`` (eq. 17).
    """

    def __init__(self, config: GIAMICConfig | None = None):
        super().__init__()
        cfg = config if config is not None else GIAMICConfig()
        self.config = cfg
        d = cfg.d_model
        self.input_proj = nn.ModuleDict(
            {m: InputProjection(cfg.input_dims[m], d) for m in cfg.modalities if cfg.input_dims[m] != d}
        )
        self.fe = nn.ModuleDict({m: FeatureExtractor(cfg, m) for m in cfg.modalities} if cfg.uses_fe else {})
        self.msr = MSR(cfg) if cfg.has_gia else None
        self.mir = MIR(cfg) if cfg.has_mig else None
        self.classifier = nn.Linear(d, cfg.num_classes)

    # ------------------------------------------------------------------------------------------ #
    def _check_inputs(
        self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor], labels: Tensor | None
    ) -> int:
        cfg = self.config
        want = set(cfg.modalities)
        for what, got in (("features", features), ("masks", masks)):
            if not isinstance(got, Mapping):
                raise ValueError(f"{what} must be a dict modality -> tensor, got {type(got).__name__}")
            if set(got) != want:
                raise ValueError(
                    f"{what} keys {sorted(got)} do not match the model's modalities {list(cfg.modalities)} "
                    f"(missing {sorted(want - set(got))}, unexpected {sorted(set(got) - want)})"
                )
        batch = None
        for m in cfg.modalities:
            x, mk = features[m], masks[m]
            if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 3:
                raise ValueError(f"features[{m!r}] must be a float tensor [B,T,{cfg.input_dims[m]}], got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
            if x.shape[-1] != cfg.input_dims[m]:
                raise ValueError(f"features[{m!r}] has width {x.shape[-1]}, expected input_dims[{m!r}]="
                                 f"{cfg.input_dims[m]}")
            if not isinstance(mk, Tensor) or mk.dtype != torch.bool:
                raise ValueError(f"masks[{m!r}] must be a bool tensor (True = real), got "
                                 f"{getattr(mk, 'dtype', type(mk).__name__)}")
            if tuple(mk.shape) != tuple(x.shape[:2]):
                raise ValueError(f"masks[{m!r}] has shape {tuple(mk.shape)}, expected {tuple(x.shape[:2])} "
                                 f"to match features[{m!r}] {tuple(x.shape)}")
            if x.shape[1] == 0:
                raise ValueError(f"features[{m!r}] has zero time steps")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"batch sizes differ between modalities: {x.shape[0]} vs {batch}")
            batch = x.shape[0]
            if cfg.empty_modality == "error" and not bool(mk.any(1).all()):
                bad = (~mk.any(1)).nonzero().flatten().tolist()
                raise ValueError(f"samples {bad} have no valid position in {m!r} (empty_modality='error')")
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.dtype != torch.long or tuple(labels.shape) != (batch,):
                raise ValueError(f"labels must be an int64 tensor of shape ({batch},), got "
                                 f"{getattr(labels, 'dtype', type(labels).__name__)} "
                                 f"{tuple(getattr(labels, 'shape', ()))}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes):
                raise ValueError(f"labels must lie in [0, {cfg.num_classes}), got {labels.tolist()}")
        return batch

    def embed(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[dict, dict]:
        """Eq. (1): ``H_x`` per modality (padded rows zero) and the (guarded) masks."""
        h: dict[str, Tensor] = {}
        m: dict[str, Tensor] = {}
        for x in self.config.modalities:
            mk = masks[x]
            e = zero_pad(features[x], mk)  # padded rows -> exact zeros (even if they held NaN/inf)
            if self.config.empty_modality == "guard":
                # A modality with no valid position gets position 0 marked valid; its input row
                # was zeroed above, so it is a zero vector (docs/decisions.md, empty modality).
                first = torch.zeros_like(mk)
                first[:, 0] = True
                mk = mk | (first & ~mk.any(1, keepdim=True))
            if x in self.input_proj:
                e = self.input_proj[x](e)
            e = self.fe[x](e, mk) if x in self.fe else zero_pad(e, mk)
            h[x], m[x] = e, mk
        return h, m

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        labels: Tensor | None = None,
    ) -> GIAMICOutput:
        self._check_inputs(features, masks, labels)
        cfg = self.config
        h, m = self.embed(features, masks)
        mods = cfg.modalities
        invariant: dict[str, Tensor] = {}
        gates: dict[str, Tensor] = {}
        ratios: dict[str, Tensor] = {}
        loss_mir = next(self.parameters()).new_zeros((), dtype=torch.float32)

        if cfg.fusion == "baseline":
            # Table 2 baseline: time-concatenated FE outputs, masked mean over all valid rows.
            total = sum(masked_sum(h[x], m[x]) for x in mods)
            count = sum(m[x].sum(1) for x in mods)
            z = total / count[:, None].to(total.dtype)
        else:
            msr, gates = self.msr(h, m) if self.msr is not None else (h, {})  # w/o MSR: H_M stands in
            m_vst = torch.cat([m[x] for x in mods], 1)
            count = m_vst.sum(1)[:, None]
            parts: list[Tensor] = []
            if cfg.use_msr:
                parts += [masked_sum(msr[x], m[x]) for x in mods]  # H^MSR, eq. (7)
            n_parts = 1 if cfg.use_msr else 0
            if self.mir is not None:
                h_vst = torch.cat([h[x] for x in mods], 1)  # eq. (8)
                slots, start = {}, 0
                for x in mods:
                    slots[x] = (start, start + h[x].shape[1])
                    start += h[x].shape[1]
                mig, ratios = self.mir(h_vst, m_vst, msr, m, slots)  # eqs. (9)-(11)
                for x in mods:
                    s = mig[x].sum(1)  # MIG outputs are already zero at padded rows
                    parts.append(s)
                    invariant[x] = s / count.to(s.dtype)
                n_parts += len(mods)
                idx = {x: i for i, x in enumerate(mods)}
                loss_mir = mic_loss([mig[x] for x in mods], m_vst, [(idx[a], idx[b]) for a, b in cfg.pairs],
                                    cfg.mic_mode, cfg.mic_tau)  # eq. (16)
            # Eqs. (12), (13), (17): masked mean over the time concat [H^MSR, H^MIR] of length
            # n_parts * L, whose valid rows are n_parts copies of the valid rows of mu_VST.
            total = parts[0]
            for p in parts[1:]:
                total = total + p.to(total.dtype)
            z = total / (n_parts * count).to(total.dtype)
        logits = self.classifier(z)
        out = GIAMICOutput(logits=logits, loss_mir=loss_mir, pooled=z, invariant=invariant, gates=gates,
                           mig_residual_ratio=ratios)
        if labels is not None:
            out.loss_ce, out.loss = joint_loss(logits, labels, loss_mir, cfg.gamma)
        return out

    # ------------------------------------------------------------------------------------------ #
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` atomically into ``directory``."""
        from giamic.utils.io import save_safetensors_atomic, write_json_atomic

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        # The weights file carries its config too, so a weights/config mix-up is detected on load.
        save_safetensors_atomic(self.state_dict(), directory / WEIGHTS_NAME,
                                metadata={"format": "pt", "giamic_config": json.dumps(cfg, sort_keys=True)})
        write_json_atomic(directory / CONFIG_NAME, cfg)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "GIAMIC":
        """Load a directory written by ``save_pretrained``; strict, with clear errors."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found (expected {CONFIG_NAME} and {WEIGHTS_NAME} in {directory})")
        config = GIAMICConfig.from_json_file(cfg_path)
        with safe_open(str(w_path), framework="pt") as f:
            meta = f.metadata() or {}
        if "giamic_config" in meta:
            # Both sides through from_dict: a field added in a later version takes its default on
            # both, so directories written before it still load.
            saved = GIAMICConfig.from_dict(json.loads(meta["giamic_config"])).to_dict()
            if saved != config.to_dict():
                diff = sorted(k for k in saved if saved[k] != config.to_dict()[k])
                raise ValueError(f"{cfg_path} does not match the config stored with {w_path}: fields {diff} differ")
        model = cls(config)
        state = load_file(str(w_path), device=str(map_location))
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{w_path} does not fit the config in {cfg_path}: missing keys {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                             f"{' ...' if len(unexpected) > 10 else ''}")
        bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
               if tuple(state[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"{w_path} has tensors of the wrong shape for the config in {cfg_path}: {bad[:10]}")
        model.load_state_dict(state, strict=True)
        return model.to(map_location)


def modality_letters(config: GIAMICConfig) -> str:
    """``"VST"``-style short name of a config's modalities."""
    return "".join(ABBREV[m] for m in config.modalities)
