"""One training unit: a (variant, seed, fold) trained, selected on validation, tested once.

This is the whole recipe in one readable loop (spec §5; §2 items 27, 38, 39, 47, 48):

1. split the fold's training part into train / validation (``giamic.train.splits``); the test part
   stays sealed;
2. build the model (``build_model``), the optimizer (``build_optimizer``) and, with
   ``train.micro_batch_size``, gradient accumulation to the effective batch;
3. per epoch: reshuffle (a permutation fixed by seed, fold and epoch), train with autocast and
   gradient clipping, evaluate on validation, log, keep the best-UA weights, write a checkpoint,
   stop early after ``train.patience`` epochs without improvement;
4. load the best weights, open the test part (the only time it is read), write its predictions,
   the model directory (contract §4) and ``result.json`` (written last: the unit is done).

A unit killed at any point resumes from its last per-epoch checkpoint and ends with the same
result as an uninterrupted run: weights, optimizer moments, RNG states (Python, NumPy, torch),
epoch, best metric and early-stop counter are all restored, and the data order is a pure function
of (seed, fold, epoch).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from giamic.modeldir import PipelineSpec, TrainingFacts, save_model_dir
from giamic.train import checkpoint as ckpt
from giamic.train.batches import Batch, ModelInputs, UnitDataset
from giamic.train.config import RunConfig
from giamic.train.distributed import DistInfo, all_gather_objects, barrier, shard
from giamic.train.metrics import score
from giamic.train.report import PREDICTIONS_FILE, RESULT_FILE, write_predictions
from giamic.train.splits import FoldSplit, LeakageError, make_fold_split
from giamic.utils.io import save_safetensors_atomic, write_json_atomic, write_text_atomic
from giamic.utils.seed import seed_everything

INTERRUPT_ENV = "GIAMIC_INTERRUPT_AFTER_STEPS"
BEST_FILE = "best.safetensors"
LOG_FILE = "log.csv"
INVARIANT_FILE = "invariant.safetensors"


class Interrupted(RuntimeError):
    """Raised by the test hook (``GIAMIC_INTERRUPT_AFTER_STEPS``) to simulate a killed run."""


class UnitConfigChanged(RuntimeError):
    """A unit's saved checkpoint or result was produced by a different configuration."""


# -- builders ---------------------------------------------------------------------------------------
def build_model(cfg: RunConfig, input_dims: dict[str, int], num_classes: int):
    """The fusion model of ``cfg.model`` (variant on a size preset, plus overrides) whose input
    widths are the encoders' ``dim`` (issue #5: ``input_dims`` from the encoders)."""
    from giamic import GIAMIC, GIAMICConfig

    import dataclasses

    kw = dict(cfg.model.overrides)
    known = {f.name for f in dataclasses.fields(GIAMICConfig)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown}: model.<key> must be a GIAMICConfig field "
                         f"({', '.join(sorted(known))})")
    kw["num_classes"] = num_classes
    if cfg.model.size == "tiny":
        mcfg = GIAMICConfig.tiny(cfg.model.variant, **kw)
    else:
        mcfg = GIAMICConfig.from_variant(cfg.model.variant, **kw)
    mcfg = mcfg.replace(input_dims={m: int(input_dims[m]) for m in mcfg.modalities})
    return GIAMIC(mcfg)


def model_modalities(cfg: RunConfig) -> list[str]:
    """The modalities a variant reads (without building it)."""
    from giamic import GIAMICConfig

    base = GIAMICConfig.tiny(cfg.model.variant) if cfg.model.size == "tiny" else GIAMICConfig.from_variant(cfg.model.variant)
    mods = cfg.model.overrides.get("modalities")
    if mods is not None:
        base = base.replace(modalities=tuple(mods))
    return list(base.modalities)


def build_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """Adam, fixed learning rate, one parameter group (spec §5)."""
    t = cfg.train
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)


def precision_of(cfg: RunConfig, device: torch.device) -> str:
    p = cfg.train.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return p


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast (spec §5 "Precision"); a no-op context for fp32. The model computes the
    MIC softmaxes in fp32 itself."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def epoch_order(n: int, seed: int, fold_number: int, epoch: int) -> list[int]:
    """The training order of one epoch: a permutation determined by (seed, fold, epoch) alone, so
    resume and any number of processes see the same order (spec §5 "Shuffling")."""
    g = torch.Generator().manual_seed(1_000_003 * (1000 * seed + fold_number) + epoch)
    return torch.randperm(n, generator=g).tolist()


def unit_seed(seed: int, fold_number: int) -> int:
    """Initialisation / dropout seed of a unit (the same rule as the validation split)."""
    return 1000 * seed + fold_number


# -- the network the optimizer sees ----------------------------------------------------------------
class TrainNet(nn.Module):
    """Fusion model plus, when fine-tuned, the speech encoder: one module for DDP and checkpoints."""

    def __init__(self, model: nn.Module, inputs: ModelInputs):
        super().__init__()
        self.model = model
        online = inputs.online_speech
        self.speech = online.module if online is not None else None
        self._online = online

    def forward(self, batch: Batch, with_labels: bool = True):
        features, masks = dict(batch.features), dict(batch.masks)
        if self._online is not None:
            features["speech"], masks["speech"] = self._online.encode(batch.waves, batch.wave_valid)
        return self.model(features=features, masks=masks, labels=batch.labels if with_labels else None)

    def parts(self) -> dict[str, nn.Module]:
        out = {"model": self.model}
        if self.speech is not None:
            out["speech_encoder"] = self.speech
        return out


# -- evaluation -------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    ids: list[str]
    labels: np.ndarray
    logits: np.ndarray  # [n, C] float32
    loss: float  # mean of the joint loss over batches, weighted by size
    loss_ce: float
    invariant: dict[str, np.ndarray] | None = None

    @property
    def probs(self) -> np.ndarray:
        z = self.logits - self.logits.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    @property
    def preds(self) -> np.ndarray:
        return self.logits.argmax(1)


@torch.no_grad()
def evaluate(net: TrainNet, inputs: ModelInputs, ids: list[str], info: DistInfo, precision: str,
             batch_size: int, collect_invariant: bool = False) -> EvalResult:
    """Logits for ``ids`` in eval mode, sharded over processes and gathered in order."""
    was_training = net.training
    net.eval()
    local = shard(list(range(len(ids))), info)
    rows: list[tuple[int, np.ndarray, dict]] = []
    loss_sum = ce_sum = 0.0
    for start in range(0, len(local), batch_size):
        idx = local[start:start + batch_size]
        batch = inputs.batch([ids[i] for i in idx]).to(info.device)
        with autocast(info.device, precision):
            out = net(batch)
        logits = out.logits.float().cpu().numpy()
        inv = {m: v.float().cpu().numpy() for m, v in out.invariant.items()} if collect_invariant else {}
        for j, i in enumerate(idx):
            rows.append((i, logits[j], {m: v[j] for m, v in inv.items()}))
        loss_sum += float(out.loss) * len(idx)
        ce_sum += float(out.loss_ce) * len(idx)
    net.train(was_training)
    gathered = all_gather_objects(info, (rows, loss_sum, ce_sum))
    rows = sorted((r for g in gathered for r in g[0]), key=lambda r: r[0])
    n = max(1, len(ids))
    logits = np.stack([r[1] for r in rows]) if rows else np.zeros((0, 0), np.float32)
    invariant = None
    if collect_invariant and rows and rows[0][2]:
        invariant = {m: np.stack([r[2][m] for r in rows]) for m in rows[0][2]}
    return EvalResult(ids=list(ids), labels=inputs.labels(ids), logits=logits,
                      loss=sum(g[1] for g in gathered) / n, loss_ce=sum(g[2] for g in gathered) / n,
                      invariant=invariant)


# -- the unit ---------------------------------------------------------------------------------------
@dataclass
class UnitSpec:
    seed: int
    fold_name: str
    fold_number: int  # 1-based position in folds.json (spec §4.6 seed rule)
    test_group: str
    train_ids: list[str]
    test_ids: list[str]


def _interrupt_budget(explicit: int | None) -> int | None:
    if explicit is not None:
        return explicit
    v = os.environ.get(INTERRUPT_ENV)
    return int(v) if v else None


def _log_csv(history: list[dict]) -> str:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in keys})
    return buf.getvalue()


def _stat_add(acc: dict[str, list[float]], key: str, value: float, weight: float) -> None:
    s = acc.setdefault(key, [0.0, 0.0])
    s[0] += value * weight
    s[1] += weight


def train_unit(cfg: RunConfig, inputs: ModelInputs, spec: UnitSpec, unit_dir: str | Path, info: DistInfo,
               pipeline: PipelineSpec, dataset_groups: dict[str, str] | None = None,
               interrupt_after_steps: int | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train, select and test one unit; return its ``result.json`` dictionary.

    ``pipeline`` is the model directory's :class:`~giamic.modeldir.PipelineSpec` (encoders,
    preprocessing) to which the unit's training facts are added. ``interrupt_after_steps`` (or the environment variable
    ``GIAMIC_INTERRUPT_AFTER_STEPS``) raises :class:`Interrupted` after that many optimizer steps of
    this call: the resume test's way to kill a run.
    """
    unit_dir = Path(unit_dir)
    fingerprint = cfg.fingerprint()
    result_path = unit_dir / RESULT_FILE
    if result_path.is_file():
        done = json.loads(result_path.read_text(encoding="utf-8"))
        if done.get("fingerprint") != fingerprint:
            raise UnitConfigChanged(f"{unit_dir} was finished with another configuration (fingerprint "
                                    f"{done.get('fingerprint')} vs {fingerprint}); use a new --out or delete it")
        return done

    t = cfg.train
    device = info.device
    precision = precision_of(cfg, device)
    labels = {u: inputs.label(u) for u in spec.train_ids}
    split: FoldSplit = make_fold_split(spec.fold_name, spec.fold_number, spec.train_ids, spec.test_ids, labels,
                                       seed=spec.seed, mode=cfg.data.val_mode, fraction=cfg.data.val_fraction,
                                       groups=dataset_groups)

    seed_everything(unit_seed(spec.seed, spec.fold_number))
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    model = build_model(cfg, inputs.input_dims, len(inputs.classes))
    net = TrainNet(model, inputs).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    ckpt_dir = unit_dir / "checkpoint"
    state: dict[str, Any] = {"epoch": 0, "best_metric": -math.inf, "best_loss": math.inf, "best_epoch": 0,
                             "bad_epochs": 0, "global_step": 0, "history": [], "stopped": False}
    if ckpt.has_checkpoint(ckpt_dir):
        saved = ckpt.read_state(ckpt_dir)
        if saved.get("fingerprint") != fingerprint:
            raise UnitConfigChanged(f"{ckpt_dir} belongs to another configuration (fingerprint "
                                    f"{saved.get('fingerprint')} vs {fingerprint}); use a new --out or delete it")
        restored = ckpt.load_checkpoint(ckpt_dir, net.parts(), optimizer)
        state.update({k: restored[k] for k in state})

    find_unused = {"auto": inputs.online_speech is not None, "true": True, "false": False}[t.ddp_find_unused]
    train_net: nn.Module = net
    if info.distributed:
        # WavLM's layerdrop skips whole layers at random, so some parameters get no gradient in a
        # step: DDP must look for them (find_unused_parameters) instead of waiting forever.
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused)

    micro = t.micro_batch_size or t.batch_size
    budget = _interrupt_budget(interrupt_after_steps)
    steps_this_call = 0
    bar_enabled = t.progress and info.is_main
    random_crop = cfg.data.audio_crop == "random_train" and inputs.online_speech is not None

    epoch = state["epoch"]
    while not state["stopped"] and epoch < t.max_epochs:
        epoch += 1
        split.assert_sealed()
        inputs.phase = "train"
        net.train()
        order = [split.train[i] for i in epoch_order(len(split.train), spec.seed, spec.fold_number, epoch)]
        global_batches = [order[i:i + t.batch_size] for i in range(0, len(order), t.batch_size)]
        # Per process: a fixed number of micro-batches per global batch, so every process calls
        # backward equally often; a process with no utterance left repeats one with weight 0.
        plan: list[tuple[list[str], float, bool]] = []
        for gb in global_batches:
            local = shard(gb, info)
            n_micro = max(1, math.ceil(math.ceil(len(gb) / info.world_size) / micro))
            for k in range(n_micro):
                chunk = local[k * micro:(k + 1) * micro]
                weight = len(chunk) * info.world_size / len(gb)
                if not chunk:
                    chunk, weight = gb[:1], 0.0
                plan.append((chunk, weight, k == n_micro - 1))
        ds = UnitDataset(inputs, order, spec.seed, spec.fold_number, epoch, random_crop)
        pos = {u: i for i, u in enumerate(order)}
        loader = torch.utils.data.DataLoader(
            ds, batch_sampler=[[pos[u] for u in chunk] for chunk, _, _ in plan], collate_fn=inputs.collate,
            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
        stats: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        wait = 0.0
        n_seen = 0
        bar = None
        if bar_enabled:
            from tqdm import tqdm

            bar = tqdm(total=len(global_batches), desc=f"{spec.fold_name} seed {spec.seed} epoch {epoch}",
                       leave=False, dynamic_ncols=True)
        it = iter(loader)
        optimizer.zero_grad(set_to_none=True)
        for chunk, weight, last in plan:
            tw = time.perf_counter()
            batch = next(it).to(device)
            wait += time.perf_counter() - tw
            sync = contextlib.nullcontext() if (last or not info.distributed) else train_net.no_sync()
            with sync:
                with autocast(device, precision):
                    out = train_net(batch)
                # Both terms are batch means (spec §2 item 27); the weight turns the local mean
                # into this process's share of the global-batch mean.
                loss = out.loss.float() * weight
                (scaler.scale(loss) if scaler else loss).backward()
            if weight > 0:
                nb = len(batch)
                n_seen += nb
                _stat_add(stats, "train_loss", float(out.loss.detach()), nb)
                _stat_add(stats, "train_ce", float(out.loss_ce.detach()), nb)
                _stat_add(stats, "train_mir", float(out.loss_mir.detach()), nb)
                for k, g in out.gates.items():
                    _stat_add(stats, f"gate_{k}", float(g.detach().float().mean()), nb)
                for k, r in out.mig_residual_ratio.items():
                    _stat_add(stats, f"mig_ratio_{k}", float(r.detach()), nb)
            if last:
                if scaler:
                    scaler.unscale_(optimizer)
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                steps_this_call += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['train_loss'][0] / max(stats['train_loss'][1], 1):.3f}")
                if budget is not None and steps_this_call >= budget:
                    raise Interrupted(f"interrupted after {steps_this_call} optimizer steps (test hook)")
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - t0

        # Validation: the only signal model selection sees (spec §2 item 38).
        inputs.phase = "val"
        val = evaluate(net, inputs, split.val, info, precision, t.eval_batch_size)
        vs = score(val.labels, val.preds, len(inputs.classes))
        all_stats = all_gather_objects(info, (stats, n_seen, wait))
        merged: dict[str, list[float]] = {}
        for st, _, _ in all_stats:
            for k, (s, w) in st.items():
                _stat_add(merged, k, s / max(w, 1e-12), w)
        row: dict[str, Any] = {"epoch": epoch}
        for k in ("train_loss", "train_ce", "train_mir"):
            row[k] = merged[k][0] / merged[k][1]
        row.update({"val_loss": val.loss, "val_ce": val.loss_ce, "val_wa": vs.wa, "val_ua": vs.ua,
                    "val_macro_f1": vs.macro_f1, "train_time_s": train_time,
                    "utt_per_s": sum(a[1] for a in all_stats) / max(train_time, 1e-9),
                    "data_wait_share": wait / max(train_time, 1e-9)})
        for k in sorted(merged):
            if k.startswith(("gate_", "mig_ratio_")):
                row[k] = merged[k][0] / merged[k][1]

        metric = vs.ua if t.select_on == "val_ua" else vs.wa
        improved = metric > state["best_metric"] or (metric == state["best_metric"] and val.loss < state["best_loss"])
        if improved:
            state.update(best_metric=metric, best_loss=val.loss, best_epoch=epoch, bad_epochs=0)
            if info.is_main:
                weights = {f"{n}.{k}": v for n, m in net.parts().items() for k, v in m.state_dict().items()}
                save_safetensors_atomic(weights, unit_dir / BEST_FILE, metadata={"epoch": str(epoch)})
        else:
            state["bad_epochs"] += 1
        row["best"] = int(improved)
        state["history"].append(row)
        state["epoch"] = epoch
        if state["bad_epochs"] >= t.patience:
            state["stopped"] = True  # early stopping (spec §2 item 39)
        if info.is_main:
            write_text_atomic(unit_dir / LOG_FILE, _log_csv(state["history"]))
            ckpt.save_checkpoint(ckpt_dir, net.parts(), optimizer, {**state, "fingerprint": fingerprint})
        barrier(info)
        if on_epoch is not None:
            on_epoch(row)

    # -- selection is over: the best weights, then the test session, read once -------------------
    if state["best_epoch"] == 0:
        raise RuntimeError(f"{unit_dir}: no epoch was evaluated")
    ckpt.load_module_weights_file(unit_dir / BEST_FILE, net.parts())
    test_ids = split.open_test()
    leak = set(test_ids) & (set(split.train) | set(split.val))
    if leak:
        raise LeakageError(f"{spec.fold_name}: test utterances in train/val: {sorted(leak)[:3]}")
    inputs.phase = "test"
    collect = bool(getattr(model.config, "has_mig", False))
    test = evaluate(net, inputs, test_ids, info, precision, t.eval_batch_size, collect_invariant=collect)
    inputs.phase = "other"
    ts = score(test.labels, test.preds, len(inputs.classes))
    best_row = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    result = {"seed": spec.seed, "fold": spec.fold_name, "fold_number": spec.fold_number,
              "test_group": spec.test_group, "variant": cfg.model.variant, **ts.to_dict(),
              "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "early_stopped": state["stopped"],
              "best_val": {"ua": best_row["val_ua"], "wa": best_row["val_wa"], "loss": best_row["val_loss"]},
              "n_train": len(split.train), "n_val": len(split.val), "fingerprint": fingerprint}
    if info.is_main:
        write_predictions(unit_dir / PREDICTIONS_FILE, test.ids, test.labels, test.probs, inputs.classes)
        if test.invariant:
            save_safetensors_atomic({m: torch.from_numpy(v) for m, v in test.invariant.items()},
                                    unit_dir / INVARIANT_FILE, metadata={"ids": json.dumps(test.ids)})
        pipe = pipeline.with_training(TrainingFacts(seed=spec.seed, fold=spec.fold_name, test_group=spec.test_group,
                                                    best_epoch=state["best_epoch"], val_ua=best_row["val_ua"],
                                                    val_wa=best_row["val_wa"]))
        save_model_dir(unit_dir / "model", model, pipe, speech_encoder=net.speech)
        write_json_atomic(result_path, result)
        if not t.keep_checkpoints:  # optimizer state is large (WavLM: ~4 GB); the model dir stays
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            (unit_dir / BEST_FILE).unlink(missing_ok=True)
    barrier(info)
    return result
