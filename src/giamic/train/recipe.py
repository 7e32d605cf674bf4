"""One training unit as a recipe: a (variant, seed, fold) trained, selected on validation, tested once.

:class:`TrainingRecipe` holds the unit's state; each step of the recipe is one short method, and
:meth:`TrainingRecipe.run` is the whole loop::

    recipe = TrainingRecipe(cfg, inputs, spec, unit_dir, info, pipeline)
    recipe.setup()                      # threads, split, model, optimizer; resume a checkpoint
    while not recipe.training_done:
        stats = recipe.train_epoch()    # one pass over the training part
        val = recipe.validate()         # the only signal model selection sees
        recipe.end_epoch(stats, val)    # log row, best weights, early stopping
        recipe.save_checkpoint()        # everything needed to resume exactly
    result = recipe.test()              # best weights; the sealed test part, read once

(:meth:`~TrainingRecipe.run` writes the resume checkpoint on a cadence instead of after every
epoch, see below.)

1. :meth:`~TrainingRecipe.setup` applies the thread policy (``giamic.train.threads``), splits the
   fold's training part into train / validation (``giamic.train.splits``; the test part stays
   sealed), seeds the unit, builds the model (:func:`build_model`), the optimizer
   (:func:`build_optimizer`: fused Adam where the device has it) and, with
   ``train.micro_batch_size``, gradient accumulation to the effective batch; a checkpoint left by a
   killed run is loaded.
2. :meth:`~TrainingRecipe.train_epoch` trains on a permutation fixed by (seed, fold, epoch), with
   autocast and gradient clipping.
3. :meth:`~TrainingRecipe.validate` and :meth:`~TrainingRecipe.end_epoch` score the validation
   part, keep the best weights when the epoch improves (validation UA, ties to the lower loss; a
   host copy, which the resume checkpoints carry, and ``best.safetensors``) and stop early after
   ``train.patience`` epochs without improvement.
4. :meth:`~TrainingRecipe.test` loads the best weights, opens the test part (the only time it is
   read), writes its predictions, the model directory and ``result.json`` (written last: the unit
   is done).

Files cost little time (docs/decisions.md, "Training: checkpoint cadence and background writes"):
:meth:`~TrainingRecipe.run` writes a resume checkpoint after the first epoch that ends
``train.checkpoint_interval_s`` seconds after the previous one (or every ``train.checkpoint_every``
epochs), none after the last epoch, and with ``train.checkpoint_async`` it writes checkpoints, the
best weights and the log on a background thread: the tensors are copied to host memory while the
next steps' forward and backward run, and the optimizer waits for that copy only. Called one by
one, the step methods write before they return.

A unit killed at any point resumes from its last checkpoint and ends with the same result as an
uninterrupted run: weights, optimizer moments, RNG states (Python, NumPy, torch), epoch, best
weights, best metric and early-stop counter are all restored, and the data order is a pure function
of (seed, fold, epoch) (docs/decisions.md, "Training: seeds, data order and exact resume").

Hooks are :class:`Callback` objects given to the recipe: :class:`InterruptAfter` raises
:class:`Interrupted` after a number of optimizer steps (how the tests kill a run), :class:`OnEpoch`
calls a function with each epoch's log row. :func:`train_unit` builds a recipe and runs it.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from giamic.errors import TrainError
from giamic.log import progress
from giamic.modeldir import PipelineSpec, TrainingFacts, save_model_dir
from giamic.train import checkpoint as ckpt
from giamic.train.batches import Batch, ModelInputs, UnitDataset
from giamic.train.config import RunConfig
from giamic.train.distributed import DistInfo, all_gather_objects, barrier, shard
from giamic.train.metrics import score
from giamic.train.report import PREDICTIONS_FILE, RESULT_FILE, write_predictions
from giamic.train.splits import FoldSplit, LeakageError, make_fold_split
from giamic.train.threads import ThreadPlan, apply_threads, plan_threads, worker_init
from giamic.utils.io import save_safetensors_atomic, write_json_atomic, write_text_atomic
from giamic.utils.memory import keep_freed_memory
from giamic.utils.seed import seed_everything

log = logging.getLogger(__name__)

BEST_FILE = "best.safetensors"
LOG_FILE = "log.csv"
INVARIANT_FILE = "invariant.safetensors"
CHECKPOINT_DIR = "checkpoint"
# Where a unit's time goes (TrainingRecipe.timings): forward and backward, the optimizer update
# (with clipping), validation, checkpoints and best weights (the part the training waits for), data
# loading, setup, and the test with the model directory.
TIMED_PHASES = ("step", "optimizer", "validation", "checkpoint", "data", "setup", "test")


class Interrupted(RuntimeError):
    """Raised by :class:`InterruptAfter` to simulate a killed run."""


class UnitConfigChanged(TrainError):
    """A unit's saved checkpoint or result was produced by a different configuration."""


# -- builders ---------------------------------------------------------------------------------------
def build_model(cfg: RunConfig, input_dims: dict[str, int], num_classes: int):
    """The fusion model of ``cfg.model`` (variant on a size preset, plus the fields it sets) whose
    input widths are the encoders' ``dim``."""
    from giamic import GIAMIC

    return GIAMIC(cfg.model.giamic_config(num_classes=num_classes, input_dims=input_dims))


def model_modalities(cfg: RunConfig) -> list[str]:
    """The modalities the model of ``cfg`` reads (without building it)."""
    return list(cfg.model.giamic_config().modalities)


def build_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """Adam (or AdamW), fixed learning rate, one parameter group (the paper's recipe), computed as
    ``train.optimizer_impl`` says: ``auto`` is the fused kernel where the parameters' device has
    one (CPU, CUDA) and the batched ``foreach`` kernels otherwise (:func:`optimizer_impl` tells
    which was built). Every choice computes the same update, up to floating-point rounding."""
    t = cfg.train
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    kw = {"lr": t.lr, "betas": tuple(t.betas), "eps": t.eps, "weight_decay": t.weight_decay}
    params = list(params)
    if t.optimizer_impl in ("auto", "fused"):
        try:
            return cls(params, fused=True, **kw)
        except RuntimeError as e:  # a device or dtype without the fused kernel
            if t.optimizer_impl == "fused":
                raise TrainError(f"train.optimizer_impl=fused is not available here ({e}); use auto or foreach") from None
    return cls(params, foreach=t.optimizer_impl != "for_loop", **kw)


def optimizer_impl(opt: torch.optim.Optimizer) -> str:
    """``fused``, ``foreach`` or ``for_loop``: how ``opt`` computes its update."""
    group = opt.param_groups[0]
    if group.get("fused"):
        return "fused"
    return "foreach" if group.get("foreach") else "for_loop"


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_``, the same numbers: on CPU the multiplication by the
    clipping coefficient is skipped when that coefficient is clamped to 1 (a multiplication by 1.0
    changes no bit; on a GPU, testing it would cost a synchronisation)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if grads[0].device.type != "cpu":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if bool(max_norm / (total + 1e-6) >= 1.0):  # NaN compares False: clipped (to NaN) as torch does
        return
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


def global_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``grads`` together (``torch.nn.utils.get_total_norm``). On a CPU, with
    fp32 gradients, the sum of per-tensor dot products: the same number up to float rounding, in
    half the time of per-tensor norms (the BLAS dot reads the gradient once, vectorised)."""
    if grads[0].device.type != "cpu" or any(g.dtype != torch.float32 or not g.is_contiguous() for g in grads):
        return torch.nn.utils.get_total_norm(grads, 2.0)
    flat = [g.view(-1) for g in grads]
    return torch.stack([torch.dot(g, g) for g in flat]).sum().sqrt()


def clipped_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], max_norm: float) -> None:
    """Clip the gradients to the global norm ``max_norm`` (0: no clipping) and take the optimizer's
    step: the update of ``clip_grad_norm_`` then ``optimizer.step()``.

    A fused optimizer takes the clipping coefficient into its kernel instead (the ``grad_scale``
    its step divides every gradient by, the hook torch's ``GradScaler`` uses): the gradients are
    then read once for the norm and once by the update, without a pass that rewrites them. On a
    small model's step that pass costs as much as a tenth of the step. Dividing by ``1/c``
    instead of multiplying by ``c`` changes the update by float rounding only (tested within 1e-6
    of the two separate steps)."""
    fused = bool(optimizer.param_groups[0].get("fused")) and getattr(optimizer, "_step_supports_amp_scaling", False)
    grads = [p.grad for p in params if p.grad is not None] if max_norm > 0 else []
    if not grads or not fused:
        if grads:
            clip_grad_norm(params, max_norm)
        optimizer.step()
        return
    total = global_grad_norm(grads)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if grads[0].device.type == "cpu" and bool(coef >= 1.0):  # NaN compares False: divided into NaN
        optimizer.step()
        return
    optimizer.grad_scale = (1.0 / coef).to(torch.float32)  # read by the fused step (torch.optim.Adam)
    try:
        optimizer.step()
    finally:
        optimizer.grad_scale = None


def precision_of(cfg: RunConfig, device: torch.device) -> str:
    p = cfg.train.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return p


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast (docs/decisions.md, "Training: precision"); a no-op context for fp32. The
    model computes the MIC softmaxes in fp32 itself."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def epoch_order(n: int, seed: int, fold_number: int, epoch: int) -> list[int]:
    """The training order of one epoch: a permutation determined by (seed, fold, epoch) alone, so
    resume and any number of processes see the same order."""
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
    if rows and not np.isfinite(logits).all():  # never turn NaN/inf into a label (argmax would)
        bad = [ids[r[0]] for r in rows if not np.isfinite(r[1]).all()]
        raise TrainError(f"the model gives non-finite logits (NaN or inf) for {len(bad)} of {len(ids)} utterance(s), "
                         f"e.g. {bad[0]}: training diverged; try a lower learning rate or train.precision=fp32")
    invariant = None
    if collect_invariant and rows and rows[0][2]:
        invariant = {m: np.stack([r[2][m] for r in rows]) for m in rows[0][2]}
    return EvalResult(ids=list(ids), labels=inputs.labels(ids), logits=logits,
                      loss=sum(g[1] for g in gathered) / n, loss_ce=sum(g[2] for g in gathered) / n,
                      invariant=invariant)


# -- what a unit is, and what it keeps between epochs ----------------------------------------------
@dataclass
class UnitSpec:
    seed: int
    fold_name: str
    fold_number: int  # 1-based position in folds.json (enters the seeds of the unit)
    test_group: str
    train_ids: list[str]
    test_ids: list[str]


@dataclass
class TrainState:
    """The scalars a checkpoint carries besides weights, optimizer and RNG (``state.json``)."""

    epoch: int = 0  # epochs finished
    best_metric: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement (early stopping)
    global_step: int = 0  # optimizer steps
    history: list[dict] = field(default_factory=list)  # the log rows, one per epoch
    stopped: bool = False  # early-stopped

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass
class EpochStats:
    """One process's training statistics of one epoch (merged over processes by ``end_epoch``)."""

    sums: dict[str, list[float]] = field(default_factory=dict)  # key -> [weighted sum, weight]
    n_seen: int = 0  # utterances trained on (weight > 0)
    wait_s: float = 0.0  # seconds spent waiting for data
    optim_s: float = 0.0  # seconds in the optimizer update (clipping, step)
    time_s: float = 0.0  # seconds of the whole epoch

    def add(self, key: str, value: float, weight: float) -> None:
        _stat_add(self.sums, key, value, weight)

    def mean(self, key: str) -> float:
        s, w = self.sums[key]
        return s / w


def _stat_add(acc: dict[str, list[float]], key: str, value: float, weight: float) -> None:
    s = acc.setdefault(key, [0.0, 0.0])
    s[0] += value * weight
    s[1] += weight


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


# -- hooks ------------------------------------------------------------------------------------------
class Callback:
    """Hooks into a :class:`TrainingRecipe`; a subclass overrides the ones it needs."""

    def on_step(self, recipe: "TrainingRecipe", step: int) -> None:
        """After each optimizer step; ``step`` is the unit's step count (``state.global_step``)."""

    def on_epoch_end(self, recipe: "TrainingRecipe", row: dict) -> None:
        """After each epoch's files (log, best weights, a checkpoint when one is due) are handed to
        the writer; ``row`` is the epoch's log row."""


class InterruptAfter(Callback):
    """Raise :class:`Interrupted` after ``steps`` optimizer steps of this run: a killed run, for
    the resume tests."""

    def __init__(self, steps: int):
        self.steps = steps
        self.seen = 0

    def on_step(self, recipe: "TrainingRecipe", step: int) -> None:
        self.seen += 1
        if self.seen >= self.steps:
            raise Interrupted(f"interrupted after {self.seen} optimizer steps")


class OnEpoch(Callback):
    """Call ``fn(row)`` with each epoch's log row."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def on_epoch_end(self, recipe: "TrainingRecipe", row: dict) -> None:
        self.fn(row)


# -- the recipe -------------------------------------------------------------------------------------
class TrainingRecipe:
    """Train, select and test one (variant, seed, fold) unit into ``unit_dir``.

    Args:
        cfg: the run configuration.
        inputs: the unit's model inputs (cached features, online speech); may be None when the unit
            is finished (``run`` then only returns the stored result).
        spec: which seed and fold, and the fold's train and test utterances.
        unit_dir: the unit's output directory (checkpoint, log, predictions, model directory).
        info: the process's place in a distributed run (``DistInfo()`` for one process).
        pipeline: the model directory's :class:`~giamic.modeldir.PipelineSpec` (encoders,
            preprocessing), to which the unit's training facts are added; None for a finished unit.
        dataset_groups: utterance -> dialog, for ``data.val_mode: dialog_group``.
        callbacks: :class:`Callback` hooks (progress, interruption, tests).
    """

    def __init__(self, cfg: RunConfig, inputs: ModelInputs | None, spec: UnitSpec, unit_dir: str | Path,
                 info: DistInfo, pipeline: PipelineSpec | None = None, dataset_groups: dict[str, str] | None = None,
                 callbacks: Sequence[Callback] = ()):
        self.cfg, self.inputs, self.spec, self.info = cfg, inputs, spec, info
        self.unit_dir = Path(unit_dir)
        self.pipeline = pipeline
        self.dataset_groups = dataset_groups
        self.callbacks = list(callbacks)
        self.fingerprint = cfg.fingerprint()
        self.state = TrainState()
        self.ready = False
        # Writing files: in the background inside run() (train.checkpoint_async), at once otherwise.
        self.background = False
        self._writer = ckpt.BackgroundWriter()
        self._best: dict[str, torch.Tensor] | None = None  # host copy of the best epoch's weights
        self._new_best = 0  # an epoch whose weights are still to be copied into _best
        self._checkpoint_time = time.monotonic()
        self._checkpoint_epoch = 0
        self.threads: ThreadPlan | None = None
        self.timings: dict[str, float] = defaultdict(float)  # seconds per phase (setup, data, step, ...)

    @property
    def result_path(self) -> Path:
        return self.unit_dir / RESULT_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.unit_dir / CHECKPOINT_DIR

    @property
    def training_done(self) -> bool:
        """Early-stopped, or ``train.max_epochs`` reached: the test part may be opened."""
        return self.state.stopped or self.state.epoch >= self.cfg.train.max_epochs

    @property
    def name(self) -> str:
        return f"{self.spec.fold_name} seed {self.spec.seed}"

    # -- the whole loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        """Train (or resume) until early stopping or the last epoch, then test; return ``result.json``.

        Files are written in the background (``train.checkpoint_async``) and the resume checkpoint
        on its cadence (:meth:`checkpoint_due`); whatever was queued is on disk when this returns
        or raises."""
        done = self.finished_result()
        if done is not None:
            return done
        t0 = time.perf_counter()
        self.setup()
        self.background = self.cfg.train.checkpoint_async
        try:
            while not self.training_done:
                stats = self.train_epoch()
                val = self.validate()
                row = self.end_epoch(stats, val)
                self.write_epoch_files(checkpoint=self.checkpoint_due())
                for cb in self.callbacks:
                    cb.on_epoch_end(self, row)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self._writer.close()
            raise
        finally:
            self.background = False
        result = self.test()
        self._log_timings(time.perf_counter() - t0)
        return result

    def finished_result(self) -> dict | None:
        """The stored result of a finished unit (None if unfinished); refused if its configuration
        differs."""
        if not self.result_path.is_file():
            return None
        done = json.loads(self.result_path.read_text(encoding="utf-8"))
        if done.get("fingerprint") != self.fingerprint:
            raise UnitConfigChanged(f"finished with another configuration (fingerprint {done.get('fingerprint')} "
                                    f"vs {self.fingerprint}); use a new --out or delete it", self.unit_dir)
        return done

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Split the fold, seed the unit, build model and optimizer, resume a checkpoint if any."""
        t0 = time.perf_counter()
        cfg, spec, inputs, device = self.cfg, self.spec, self.inputs, self.info.device
        if inputs is None:
            raise TrainError("an unfinished unit needs its model inputs", self.unit_dir)
        self.threads = plan_threads(cfg.train.cpu_threads, cfg.data.num_workers, device.type)
        apply_threads(self.threads)
        keep_freed_memory()  # the steps reuse their memory instead of faulting it in again
        self.precision = precision_of(cfg, device)
        labels = {u: inputs.label(u) for u in spec.train_ids}
        self.split: FoldSplit = make_fold_split(
            spec.fold_name, spec.fold_number, spec.train_ids, spec.test_ids, labels, seed=spec.seed,
            mode=cfg.data.val_mode, fraction=cfg.data.val_fraction, groups=self.dataset_groups)
        inputs.fit_standardization(self.split.train)  # training split only (data.standardize)
        seed_everything(unit_seed(spec.seed, spec.fold_number))
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.model = build_model(cfg, inputs.input_dims, len(inputs.classes))
        self.net = TrainNet(self.model, inputs).to(device)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg, self.params)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.state = TrainState()
        self.load_checkpoint()
        self._checkpoint_time, self._checkpoint_epoch = time.monotonic(), self.state.epoch
        self.train_net = self._distributed(self.net)
        # GIAMIC.forward_backward where nothing else takes part in the step: one process, no
        # loss scaling, no encoder trained with the fusion model (cached features).
        self._model_step = (hasattr(self.model, "forward_backward") and not self.info.distributed
                            and self.scaler is None and self.net.speech is None
                            and self.precision in ("fp32", "bf16"))
        self.ready = True
        if self.info.is_main:
            log.info("%s: %s (%s), %s", self.name, type(self.optimizer).__name__, self.runtime["optimizer_impl"],
                     self.threads.describe() if device.type == "cpu" else f"device {device}")
        self.timings["setup"] += time.perf_counter() - t0

    @property
    def runtime(self) -> dict[str, Any]:
        """How this unit computes (recorded in ``result.json``): optimizer implementation, device,
        intra-op threads. None of it changes the fingerprint."""
        return {"optimizer": self.cfg.train.optimizer, "optimizer_impl": optimizer_impl(self.optimizer),
                "device": str(self.info.device), "cpu_threads": self.threads.intra_op if self.threads else None}

    def _distributed(self, net: nn.Module) -> nn.Module:
        """``net`` under DDP when several processes train (``net`` itself otherwise)."""
        if not self.info.distributed:
            return net
        # WavLM's layerdrop skips whole layers at random, so some parameters get no gradient in a
        # step: DDP must look for them (find_unused_parameters) instead of waiting forever.
        find_unused = {"auto": self.inputs.online_speech is not None, "true": True,
                       "false": False}[self.cfg.train.ddp_find_unused]
        device = self.info.device
        return nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused)

    def _require_setup(self) -> None:
        if not self.ready:
            raise TrainError("the recipe is not set up: call setup() first", self.unit_dir)

    # -- checkpoints ------------------------------------------------------------------------------
    def load_checkpoint(self) -> bool:
        """Restore weights, optimizer, RNG states and :class:`TrainState` from the unit's checkpoint;
        False when there is none."""
        if not ckpt.has_checkpoint(self.checkpoint_dir):
            return False
        saved = ckpt.read_state(self.checkpoint_dir)
        if saved.get("fingerprint") != self.fingerprint:
            raise UnitConfigChanged(f"belongs to another configuration (fingerprint {saved.get('fingerprint')} "
                                    f"vs {self.fingerprint}); use a new --out or delete it", self.checkpoint_dir)
        restored = ckpt.load_checkpoint(self.checkpoint_dir, self.net.parts(), self.optimizer)
        self.state = TrainState.from_dict(restored)
        self._best = ckpt.load_best_weights(self.checkpoint_dir, saved)
        if self._best is None and self.state.best_epoch and (self.unit_dir / BEST_FILE).is_file():
            self._best = load_file(str(self.unit_dir / BEST_FILE))  # a checkpoint of an older version
        log.info("%s: resuming after epoch %d (%s)", self.name, self.state.epoch, self.checkpoint_dir)
        return True

    def checkpoint_due(self) -> bool:
        """Whether the epoch just ended gets a resume checkpoint: ``train.checkpoint_every`` epochs
        or ``train.checkpoint_interval_s`` seconds after the previous one (or the unit's start),
        and never after the last epoch (the test follows at once; a test killed midway resumes from
        the previous checkpoint and ends the same)."""
        t = self.cfg.train
        if self.training_done:
            return False
        if t.checkpoint_every and self.state.epoch - self._checkpoint_epoch >= t.checkpoint_every:
            return True
        return time.monotonic() - self._checkpoint_time >= t.checkpoint_interval_s

    def save_checkpoint(self) -> None:
        """Write the log and a complete checkpoint of the finished epochs (rank 0) now, then wait
        for all processes."""
        self._require_setup()
        background, self.background = self.background, False
        try:
            self.write_epoch_files(checkpoint=True)
        finally:
            self.background = background
        barrier(self.info)

    def write_epoch_files(self, checkpoint: bool) -> None:
        """Hand the files of the epoch just ended to the writer: the best weights if it improved
        (every process keeps a host copy, rank 0 writes ``best.safetensors``), the log, and a
        resume checkpoint if ``checkpoint``. In the background (``self.background``) only the copy
        of the tensors must end before the next optimizer update; otherwise all is written now."""
        t0 = time.perf_counter()
        s, main = self.state, self.info.is_main
        new_best, self._new_best = self._new_best, 0
        live_best = ckpt.module_weights(self.net.parts()) if new_best else None
        # After the last epoch inside run(), best.safetensors would be removed with the checkpoint
        # moments later (the model directory gets the same weights): only the host copy is made.
        best_file = bool(new_best) and (not self.background or not self.training_done or self.cfg.train.keep_checkpoints)
        log_text = _log_csv(s.history) if main else None
        snap = None
        if checkpoint and main:
            snap = ckpt.Snapshot.take(s.epoch, self.net.parts(), self.optimizer,
                                      {**dataclasses.asdict(s), "fingerprint": self.fingerprint},
                                      best_epoch=s.best_epoch, best=self._best)
        if checkpoint:
            self._checkpoint_time, self._checkpoint_epoch = time.monotonic(), s.epoch

        def capture() -> None:
            if new_best:
                self._best = ckpt.copy_to_host(live_best, into=self._best)
            if snap is not None:
                snap.capture(weights=self._best if new_best == snap.epoch else None)

        def write() -> None:
            if not main:
                return
            if best_file:
                ckpt.write_safetensors(self.unit_dir / BEST_FILE, self._best, {"epoch": str(new_best)})
            write_text_atomic(self.unit_dir / LOG_FILE, log_text)
            if snap is not None:
                snap.write(self.checkpoint_dir)

        self._writer.submit(capture, write, background=self.background)
        self.timings["checkpoint"] += time.perf_counter() - t0

    # -- one epoch --------------------------------------------------------------------------------
    def _plan(self, order: list[str]) -> list[list[tuple[list[str], float]]]:
        """Per optimizer step, this process's micro-batches as (utterances, loss weight).

        Every process gets the same number of micro-batches per global batch, so every process calls
        backward equally often; a process with no utterance left repeats one with weight 0. The
        weight turns the local mean loss into this process's share of the global-batch mean."""
        t, info = self.cfg.train, self.info
        micro = t.micro_batch_size or t.batch_size
        steps = []
        for start in range(0, len(order), t.batch_size):
            gb = order[start:start + t.batch_size]
            local = shard(gb, info)
            n_micro = max(1, math.ceil(math.ceil(len(gb) / info.world_size) / micro))
            chunks = []
            for k in range(n_micro):
                chunk = local[k * micro:(k + 1) * micro]
                weight = len(chunk) * info.world_size / len(gb)
                if not chunk:
                    chunk, weight = gb[:1], 0.0
                chunks.append((chunk, weight))
            steps.append(chunks)
        return steps

    def _loader(self, order: list[str], steps: list[list[tuple[list[str], float]]], epoch: int):
        random_crop = self.cfg.data.audio_crop == "random_train" and self.inputs.online_speech is not None
        ds = UnitDataset(self.inputs, order, self.spec.seed, self.spec.fold_number, epoch, random_crop)
        pos = {u: i for i, u in enumerate(order)}
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(
            ds, batch_sampler=[[pos[u] for u in chunk] for micro in steps for chunk, _ in micro],
            collate_fn=self.inputs.collate, num_workers=workers, worker_init_fn=worker_init if workers else None,
            pin_memory=self.info.device.type == "cuda")

    def train_epoch(self, epoch: int | None = None) -> EpochStats:
        """One pass over the training part in the order of (seed, fold, ``epoch``); ``epoch``
        defaults to the next one. Returns this process's statistics."""
        self._require_setup()
        epoch = self.state.epoch + 1 if epoch is None else epoch
        spec, t = self.spec, self.cfg.train
        self.split.assert_sealed()
        self.inputs.phase = "train"
        self.net.train()
        order = [self.split.train[i] for i in epoch_order(len(self.split.train), spec.seed, spec.fold_number, epoch)]
        steps = self._plan(order)
        loader = self._loader(order, steps, epoch)
        stats = EpochStats()
        t0 = time.perf_counter()
        batches = iter(loader)
        self.optimizer.zero_grad(set_to_none=True)
        if t.progress and self.info.is_main:
            steps = progress(steps, desc=f"{self.name} epoch {epoch}", total=len(steps), unit="step")
        for micro_batches in steps:
            for k, (_, weight) in enumerate(micro_batches):
                tw = time.perf_counter()
                batch = next(batches).to(self.info.device)
                stats.wait_s += time.perf_counter() - tw
                self._forward_backward(batch, weight, last=k == len(micro_batches) - 1, stats=stats)
            to = time.perf_counter()
            self._optimizer_step()
            stats.optim_s += time.perf_counter() - to
            for cb in self.callbacks:
                cb.on_step(self, self.state.global_step)
        stats.time_s = time.perf_counter() - t0
        self.timings["data"] += stats.wait_s
        self.timings["step"] += stats.time_s - stats.wait_s - stats.optim_s
        self.timings["optimizer"] += stats.optim_s
        return stats

    def _forward_backward(self, batch: Batch, weight: float, last: bool, stats: EpochStats) -> None:
        """Accumulate the gradient of one micro-batch (DDP synchronises on the last one of a step)."""
        # Both loss terms are batch means (docs/decisions.md, "Training: losses, batches and
        # several processes"); the weight makes this process's share of the global-batch mean.
        if self._model_step:
            # The fusion model's own step: on a CPU, micro-batches on threads (docs/model.md).
            amp = {"bf16": torch.bfloat16}.get(self.precision)
            out = self.model.forward_backward(dict(batch.features), dict(batch.masks), batch.labels,
                                              loss_weight=weight, amp_dtype=amp)
        else:
            sync = contextlib.nullcontext() if (last or not self.info.distributed) else self.train_net.no_sync()
            with sync:
                with autocast(self.info.device, self.precision):
                    out = self.train_net(batch)
                loss = out.loss.float() * weight
                (self.scaler.scale(loss) if self.scaler else loss).backward()
        if weight > 0:
            nb = len(batch)
            stats.n_seen += nb
            stats.add("train_loss", float(out.loss.detach()), nb)
            stats.add("train_ce", float(out.loss_ce.detach()), nb)
            stats.add("train_mir", float(out.loss_mir.detach()), nb)
            for k, g in out.gates.items():
                stats.add(f"gate_{k}", float(g.detach().float().mean()), nb)
            for k, r in out.mig_residual_ratio.items():
                stats.add(f"mig_ratio_{k}", float(r.detach()), nb)

    def _optimizer_step(self) -> None:
        """Unscale (fp16), clip, step, clear the gradients."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
            if self.cfg.train.grad_clip > 0:
                clip_grad_norm(self.params, self.cfg.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            clipped_step(self.optimizer, self.params, self.cfg.train.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1

    def validate(self) -> dict[str, float]:
        """Loss, WA, UA and macro-F1 on the validation part (the same on every process)."""
        self._require_setup()
        t0 = time.perf_counter()
        self.inputs.phase = "val"
        val = evaluate(self.net, self.inputs, self.split.val, self.info, self.precision, self.cfg.train.eval_batch_size)
        vs = score(val.labels, val.preds, len(self.inputs.classes))
        self.timings["validation"] += time.perf_counter() - t0
        return {"val_loss": val.loss, "val_ce": val.loss_ce, "val_wa": vs.wa, "val_ua": vs.ua,
                "val_macro_f1": vs.macro_f1}

    def end_epoch(self, stats: EpochStats, val: dict[str, float], epoch: int | None = None) -> dict:
        """Close the epoch: merge every process's statistics into its log row, keep the weights if
        validation improved, count towards early stopping. Returns the row."""
        epoch = self.state.epoch + 1 if epoch is None else epoch
        gathered = all_gather_objects(self.info, (stats.sums, stats.n_seen, stats.wait_s))
        merged: dict[str, list[float]] = {}
        for sums, _, _ in gathered:
            for k, (s, w) in sums.items():
                _stat_add(merged, k, s / max(w, 1e-12), w)
        row: dict[str, Any] = {"epoch": epoch}
        for k in ("train_loss", "train_ce", "train_mir"):
            row[k] = merged[k][0] / merged[k][1]
        row.update(val)
        row.update({"train_time_s": stats.time_s, "utt_per_s": sum(g[1] for g in gathered) / max(stats.time_s, 1e-9),
                    "data_wait_share": stats.wait_s / max(stats.time_s, 1e-9)})
        for k in sorted(merged):
            if k.startswith(("gate_", "mig_ratio_")):
                row[k] = merged[k][0] / merged[k][1]

        improved = self._select(epoch, row)
        row["best"] = int(improved)
        s = self.state
        s.history.append(row)
        s.epoch = epoch
        if s.bad_epochs >= self.cfg.train.patience:
            s.stopped = True  # early stopping (docs/decisions.md, "Training: model selection and early stopping")
        log.debug("%s epoch %d: train loss %.4f, val UA %.4f WA %.4f loss %.4f%s%s", self.name, epoch,
                  row["train_loss"], row["val_ua"], row["val_wa"], row["val_loss"], " (best)" if improved else "",
                  ", early stop" if s.stopped else "")
        return row

    def _select(self, epoch: int, row: dict) -> bool:
        """Whether ``epoch`` is the best so far (``train.select_on``, ties to the lower validation
        loss); its weights are then kept (a host copy, and ``best.safetensors``: at once when the
        step methods are called one by one, with the epoch's other files inside :meth:`run`)."""
        s = self.state
        metric, loss = row[self.cfg.train.select_on], row["val_loss"]
        improved = metric > s.best_metric or (metric == s.best_metric and loss < s.best_loss)
        if not improved:
            s.bad_epochs += 1
            return False
        s.best_metric, s.best_loss, s.best_epoch, s.bad_epochs = metric, loss, epoch, 0
        self._new_best = epoch
        if not self.background:
            self.write_epoch_files(checkpoint=False)
        return True

    # -- the test, once ---------------------------------------------------------------------------
    def test(self) -> dict:
        """Load the best weights, read the sealed test part once, write predictions, the model
        directory and ``result.json``; return the result. Refused before training is done."""
        self._require_setup()
        t0 = time.perf_counter()
        s, spec, t = self.state, self.spec, self.cfg.train
        if not self.training_done:
            raise TrainError(f"training is not finished (epoch {s.epoch} of at most {t.max_epochs}); "
                             "the test part stays sealed until model selection is over", self.unit_dir)
        if self.split.test_opened:
            raise LeakageError(f"{spec.fold_name}: the test part was already read")
        if s.best_epoch == 0:
            raise TrainError("no epoch was evaluated", self.unit_dir)
        if self._best is None:
            raise TrainError(f"the weights of the best epoch {s.best_epoch} are missing", self.unit_dir)
        ckpt.load_weights(self._best, self.net.parts())
        test_ids = self.split.open_test()
        leak = set(test_ids) & (set(self.split.train) | set(self.split.val))
        if leak:
            raise LeakageError(f"{spec.fold_name}: test utterances in train/val: {sorted(leak)[:3]}")
        self.inputs.phase = "test"
        collect = bool(getattr(self.model.config, "has_mig", False))
        test = evaluate(self.net, self.inputs, test_ids, self.info, self.precision, t.eval_batch_size,
                        collect_invariant=collect)
        self.inputs.phase = "other"
        ts = score(test.labels, test.preds, len(self.inputs.classes))
        best_row = next(r for r in s.history if r["epoch"] == s.best_epoch)
        result = {"seed": spec.seed, "fold": spec.fold_name, "fold_number": spec.fold_number,
                  "test_group": spec.test_group, "variant": self.cfg.model.variant, **ts.to_dict(),
                  "best_epoch": s.best_epoch, "epochs_run": s.epoch, "early_stopped": s.stopped,
                  "best_val": {"ua": best_row["val_ua"], "wa": best_row["val_wa"], "loss": best_row["val_loss"]},
                  "n_train": len(self.split.train), "n_val": len(self.split.val), "fingerprint": self.fingerprint,
                  "runtime": self.runtime}
        tw = time.perf_counter()
        self._writer.close()  # every queued file is on disk before the unit's outputs
        self.timings["checkpoint"] += time.perf_counter() - tw
        t0 += time.perf_counter() - tw
        if self.info.is_main:
            self._write_outputs(test, best_row, result)
        barrier(self.info)
        self.timings["test"] += time.perf_counter() - t0
        return result

    def _log_timings(self, total: float) -> None:
        """One line: where the unit's time went (``self.timings``)."""
        if not self.info.is_main or total <= 0:
            return
        parts = ", ".join(f"{k} {self.timings.get(k, 0.0):.2f} s ({100 * self.timings.get(k, 0.0) / total:.1f} %)"
                          for k in TIMED_PHASES)
        log.info("%s: %d epoch(s) in %.2f s: %s", self.name, self.state.epoch, total, parts)

    def _write_outputs(self, test: EvalResult, best_row: dict, result: dict) -> None:
        """Predictions, invariant representations, the model directory, then ``result.json`` (the
        unit is done) and the removal of the checkpoint."""
        d, spec = self.unit_dir, self.spec
        write_predictions(d / PREDICTIONS_FILE, test.ids, test.labels, test.probs, self.inputs.classes)
        if test.invariant:
            save_safetensors_atomic({m: torch.from_numpy(v) for m, v in test.invariant.items()},
                                    d / INVARIANT_FILE, metadata={"ids": json.dumps(test.ids)})
        pipe = self.pipeline.with_training(TrainingFacts(
            seed=spec.seed, fold=spec.fold_name, test_group=spec.test_group, best_epoch=self.state.best_epoch,
            val_ua=best_row["val_ua"], val_wa=best_row["val_wa"]))
        save_model_dir(d / "model", self.model, pipe, speech_encoder=self.net.speech,
                       standardization=self.inputs.standardization)
        write_json_atomic(self.result_path, result)
        if not self.cfg.train.keep_checkpoints:  # optimizer state is large (WavLM: ~4 GB); the model dir stays
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            (d / BEST_FILE).unlink(missing_ok=True)


def train_unit(cfg: RunConfig, inputs: ModelInputs | None, spec: UnitSpec, unit_dir: str | Path, info: DistInfo,
               pipeline: PipelineSpec | None, dataset_groups: dict[str, str] | None = None,
               interrupt_after_steps: int | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train, select and test one unit with a :class:`TrainingRecipe`; return its ``result.json``.

    ``interrupt_after_steps`` raises :class:`Interrupted` after that many optimizer steps of this
    call (:class:`InterruptAfter`); ``on_epoch`` is called with each epoch's log row (:class:`OnEpoch`).
    """
    callbacks: list[Callback] = []
    if interrupt_after_steps is not None:
        callbacks.append(InterruptAfter(interrupt_after_steps))
    if on_epoch is not None:
        callbacks.append(OnEpoch(on_epoch))
    return TrainingRecipe(cfg, inputs, spec, unit_dir, info, pipeline, dataset_groups, callbacks).run()
