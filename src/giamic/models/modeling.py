"""``GIAMIC``: the fusion model (embedding module, MSR, MIR, fusion eq. 13, classifier eq. 17).

Contract (docs/architecture.md; every equation in docs/model.md)::

    out = model(features={"video": xv, "speech": xs, "text": xt},   # [B,T,D_in] float
                masks={"video": mv, "speech": ms, "text": mt},      # [B,T] bool, True = real
                labels=y)                                            # optional [B] int64

Padding is exact for every variant: the model computes on the valid rows only, stored contiguously
(``giamic.models.rows``; docs/model.md): padded input rows are never read, each row attends to the
valid rows of its own sample, the convolution of eq. (11) reads padded positions as zeros, and all
means run over valid rows. Whatever sits in padded positions never changes logits or losses.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from giamic.models.config import ABBREV, GIAMICConfig
from giamic.models.feature_extractor import FeatureExtractor, InputProjection
from giamic.models.loss import joint_loss, mic_loss_rows
from giamic.models.mir import MIR
from giamic.models.msr import MSR
from giamic.models.ops import random_source, zero_pad
from giamic.models.rows import Concat, Rows

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

    def _guard(self, mask: Tensor) -> Tensor:
        if self.config.empty_modality != "guard":
            return mask
        # A modality with no valid position gets position 0 marked valid, with a zero input row
        # (docs/decisions.md, empty modality).
        first = torch.zeros_like(mask)
        first[:, 0] = True
        return mask | (first & ~mask.any(1, keepdim=True))

    def embed(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[dict, dict]:
        """Eq. (1) on the padded tensors: ``H_x [B,T,d]`` per modality (padded rows zero) and the
        (guarded) masks. The literal form (reference, tests); ``forward`` uses ``embed_rows``."""
        h: dict[str, Tensor] = {}
        m: dict[str, Tensor] = {}
        for x in self.config.modalities:
            e = zero_pad(features[x], masks[x])  # padded rows -> exact zeros (even if they held NaN/inf)
            mk = self._guard(masks[x])
            if x in self.input_proj:
                e = self.input_proj[x](e)
            e = self.fe[x](e, mk) if x in self.fe else zero_pad(e, mk)
            h[x], m[x] = e, mk
        return h, m

    def embed_rows(self, features: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[dict, dict]:
        """Eq. (1) on packed rows: ``H_x [n_x,d]`` (the valid rows of ``embed``'s output) and
        their ``Rows`` (of the guarded masks). Padded input rows are never read."""
        h: dict[str, Tensor] = {}
        rows: dict[str, Rows] = {}
        for x in self.config.modalities:
            guarded = self.config.empty_modality == "guard" and not bool(masks[x].any(1).all())
            mk = self._guard(masks[x]) if guarded else masks[x]
            r = Rows.of(mk)
            e = r.pack(features[x])
            if guarded:
                e = torch.where(r.pack(masks[x])[:, None], e, 0)  # a guarded row is a zero vector
            if x in self.input_proj:
                e = self.input_proj[x](e)
            h[x], rows[x] = (self.fe[x].forward_rows(e, r) if x in self.fe else e), r
        return h, rows

    def forward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        labels: Tensor | None = None,
    ) -> GIAMICOutput:
        self._check_inputs(features, masks, labels)
        cfg = self.config
        h, rows = self.embed_rows(features, masks)
        mods = cfg.modalities
        invariant: dict[str, Tensor] = {}
        gates: dict[str, Tensor] = {}
        ratios: dict[str, Tensor] = {}
        loss_mir = next(self.parameters()).new_zeros((), dtype=torch.float32)

        if cfg.fusion == "baseline":
            # Table 2 baseline: time-concatenated FE outputs, masked mean over all valid rows.
            total = sum(rows[x].sum(h[x]) for x in mods)
            count = sum(rows[x].counts for x in mods)
            z = total / count[:, None].to(total.dtype)
        else:
            msr, gates = self.msr(h, rows) if self.msr is not None else (h, {})  # w/o MSR: H_M
            vst = Concat([rows[x] for x in mods])  # the valid rows of H_VST (eq. 8) and H^MSR (eq. 7)
            count = vst.rows.counts[:, None]
            parts: list[Tensor] = []
            if cfg.use_msr:
                parts += [rows[x].sum(msr[x]) for x in mods]  # H^MSR, eq. (7)
            n_parts = 1 if cfg.use_msr else 0
            if self.mir is not None:
                h_vst = vst.join([h[x] for x in mods])  # eq. (8)
                mig, ratios = self.mir(h_vst, vst, msr, rows)  # eqs. (9)-(11)
                for x in mods:
                    s = vst.rows.sum(mig[x])
                    parts.append(s)
                    invariant[x] = s / count.to(s.dtype)
                n_parts += len(mods)
                idx = {x: i for i, x in enumerate(mods)}
                loss_mir = mic_loss_rows([mig[x] for x in mods], vst.rows, [(idx[a], idx[b]) for a, b in cfg.pairs],
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

    def forward_backward(
        self,
        features: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        labels: Tensor,
        micro_batch_size: int | None = None,
        loss_weight: float = 1.0,
        amp_dtype: torch.dtype | None = None,
        workers: int | None = None,
    ) -> GIAMICOutput:
        """Forward and backward of one training batch: adds to every parameter's ``.grad`` the
        gradient of ``loss_weight * out.loss`` of the whole batch.

        The batch runs as micro-batches of at most ``micro_batch_size`` samples
        (``default_micro_batch_size`` of the device when None; 0 = the whole batch), each
        micro-batch's loss weighted by its share of the batch; with the default size, a batch with
        too few valid rows to share (``MIN_MICRO_BATCH_ROWS``) runs in one pass. Both loss terms are batch means of
        per-utterance terms and no layer couples utterances (eq. 19; docs/model.md), so the summed
        gradient is the whole batch's, up to float rounding.

        ``workers`` micro-batches run at a time, each on its own thread with one intra-op thread
        (default on a CPU: ``torch.get_num_threads()``; 1 elsewhere, or with ``fast_dropout``
        off, whose masks come from the shared generator). A batch is then cut into at least
        ``workers`` micro-batches. Each thread's operations run without the fork and join of an
        intra-op team, which on a CPU costs a small operation more than its work, and far more
        when other processes hold the cores. Every micro-batch draws its dropout masks from its
        own generator, seeded from torch's default generator in order, and the gradients are
        added in micro-batch order: the result does not depend on thread timing.

        ``amp_dtype`` runs the forward passes under autocast. Returns the batch's output, detached:
        logits, pooled, gates and invariant vectors concatenated, loss terms as batch means, and
        ``mig_residual_ratio`` as the size-weighted mean of the micro-batches' ratios (exact for
        one micro-batch). For several processes (DDP), call the model per micro-batch instead.
        """
        B = labels.shape[0]
        dev = labels.device
        rows = min(int(masks[m].sum()) for m in self.config.modalities)
        mb, workers = micro_batch_plan(B, dev, micro_batch_size, workers, self.config.fast_dropout, rows)
        parts: list = [slice(s, min(s + mb, B)) for s in range(0, B, mb)]

        def size(part) -> int:
            return part.stop - part.start if isinstance(part, slice) else len(part)

        def run(part: slice, generator: torch.Generator | None) -> tuple[GIAMICOutput, Tensor]:
            amp = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
            with random_source(generator), amp:
                out = self({k: v[part] for k, v in features.items()}, {k: v[part] for k, v in masks.items()},
                           labels[part])
            return out, out.loss.float() * (loss_weight * size(part) / B)

        outs: list[tuple[int, GIAMICOutput]] = []
        if workers == 1:
            for part in parts:
                out, loss = run(part, None)
                loss.backward()
                outs.append((size(part), out))
            return _join_outputs(outs, B)

        params = [p for p in self.parameters() if p.requires_grad]
        # Threads run side by side, so the step lasts as long as the slowest micro-batch: give
        # each about the same number of valid rows (the work scales with them), not a contiguous
        # slice. Utterances are then returned in batch order.
        parts = balanced_parts(masks, len(parts), mb)
        seeds = torch.randint(0, 2**62, (len(parts),)).tolist()

        def task(i: int) -> tuple[GIAMICOutput, tuple]:
            gen = torch.Generator(dev).manual_seed(seeds[i])
            out, loss = run(parts[i], gen)
            return out, torch.autograd.grad(loss, params, allow_unused=True)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one intra-op thread each; the pool's threads start with it
        try:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(task, range(len(parts))))
        finally:
            torch.set_num_threads(threads)
        for j, p in enumerate(params):
            grads = [r[1][j] for r in results if r[1][j] is not None]
            if not grads:
                continue
            total = grads[0]
            for g in grads[1:]:
                total = total + g
            p.grad = total if p.grad is None else p.grad + total
        joined = _join_outputs([(size(part), r[0]) for part, r in zip(parts, results)], B)
        return _reorder(joined, torch.argsort(torch.cat(parts)).to(dev))

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


def default_micro_batch_size(device: str | torch.device) -> int:
    """Micro-batch size of ``GIAMIC.forward_backward`` when none is given: 16 on a CPU, where a
    paper-size step of 32 runs faster as micro-batches of 16 than in one pass (smaller
    activations, out of freshly mapped memory; bench/fusion.py); 0 (the whole batch) elsewhere."""
    return 16 if torch.device(device).type == "cpu" else 0


# Splitting a batch pays off only while each micro-batch's matrix products are compute-bound: every
# micro-batch reads all weights and writes a whole gradient, so with few rows per weight matrix (one
# feature vector per utterance, say) the split multiplies the memory traffic instead (bench/train.py,
# "vectors": 1.6x slower in micro-batches on threads than in one pass).
MIN_MICRO_BATCH_ROWS = 128


def micro_batch_plan(batch: int, device: str | torch.device, micro_batch_size: int | None = None,
                     workers: int | None = None, fast_dropout: bool = True,
                     rows: int | None = None) -> tuple[int, int]:
    """``(micro-batch size, workers)`` that ``GIAMIC.forward_backward`` uses for these arguments.

    ``rows``: the fewest valid rows any modality has in the batch. With the default micro-batch
    size, a batch whose micro-batches would get fewer than ``MIN_MICRO_BATCH_ROWS`` of them runs in
    one pass."""
    dev = torch.device(device)
    mb = default_micro_batch_size(dev) if micro_batch_size is None else micro_batch_size
    mb = batch if mb <= 0 else mb
    if workers is None:
        workers = torch.get_num_threads() if dev.type == "cpu" and fast_dropout else 1
    workers = max(1, min(workers, batch))
    mb = min(mb, -(-batch // workers))
    if micro_batch_size is None and rows is not None and rows * mb < MIN_MICRO_BATCH_ROWS * batch:
        return batch, 1
    return mb, workers


def balanced_parts(masks: Mapping[str, Tensor], n_parts: int, size: int) -> list[Tensor]:
    """Split a batch into ``n_parts`` groups of at most ``size`` utterances with about equal numbers
    of valid rows (all modalities together): the longest utterance first, each into the group with
    the fewest rows that has room. Returns each group's batch indices, ascending."""
    cost = sum(m.sum(1) for m in masks.values()).tolist()
    members: list[list[int]] = [[] for _ in range(n_parts)]
    loads = [0] * n_parts
    for i in sorted(range(len(cost)), key=lambda i: (-cost[i], i)):
        k = min((k for k in range(n_parts) if len(members[k]) < size), key=lambda k: (loads[k], k))
        members[k].append(i)
        loads[k] += cost[i]
    device = next(iter(masks.values())).device
    return [torch.tensor(sorted(m), dtype=torch.long, device=device) for m in members if m]


def _reorder(out: GIAMICOutput, order: Tensor) -> GIAMICOutput:
    """``out`` with its per-utterance tensors (logits, pooled, gates, invariant) taken at ``order``."""
    return GIAMICOutput(
        logits=out.logits[order], loss_mir=out.loss_mir, pooled=out.pooled[order], loss_ce=out.loss_ce,
        loss=out.loss, invariant={k: v[order] for k, v in out.invariant.items()},
        gates={k: v[order] for k, v in out.gates.items()}, mig_residual_ratio=out.mig_residual_ratio)


def _join_outputs(outs: list[tuple[int, GIAMICOutput]], total: int) -> GIAMICOutput:
    """One detached ``GIAMICOutput`` for a batch computed as micro-batches ``(size, output)``."""
    def cat(get):
        return torch.cat([get(o).detach() for _, o in outs], 0)

    def mean(get):
        return sum(get(o).detach().float() * (n / total) for n, o in outs)

    first = outs[0][1]
    return GIAMICOutput(
        logits=cat(lambda o: o.logits), loss_mir=mean(lambda o: o.loss_mir), pooled=cat(lambda o: o.pooled),
        loss_ce=mean(lambda o: o.loss_ce), loss=mean(lambda o: o.loss),
        invariant={k: cat(lambda o, k=k: o.invariant[k]) for k in first.invariant},
        gates={k: cat(lambda o, k=k: o.gates[k]) for k in first.gates},
        mig_residual_ratio={k: mean(lambda o, k=k: o.mig_residual_ratio[k]) for k in first.mig_residual_ratio},
    )


def modality_letters(config: GIAMICConfig) -> str:
    """``"VST"``-style short name of a config's modalities."""
    return "".join(ABBREV[m] for m in config.modalities)
