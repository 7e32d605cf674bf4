"""Resume checkpoints in safe formats, for exact resume (docs/decisions.md, "Training: seeds, data
order and exact resume"), and the writer that puts them on disk without holding up training.

A checkpoint directory holds, for the epoch ``E`` it was taken after (``tag`` = ``e0005``):

* ``model-<tag>.safetensors``: every trainable module's state (fusion model, and the speech
  encoder when it is fine-tuned), keys prefixed by module name;
* ``optimizer-<tag>.safetensors``: the optimizer's per-parameter tensors (Adam ``exp_avg``,
  ``exp_avg_sq``, ``step``) keyed ``state.<param index>.<name>``, plus the RNG states of torch (CPU
  and CUDA), NumPy and Python as integer tensors;
* the best weights so far: the model file itself when the checkpoint's epoch is the best one,
  otherwise ``best-<tag of the best epoch>.safetensors`` (written once, shared by later
  checkpoints with the same best epoch);
* ``state.json``: scalars: epoch, best metric and epoch, early-stop counter, the optimizer's
  param-group hyper-parameters, the history of per-epoch logs, the NumPy/Python RNG scalars, the run
  fingerprint that must match on resume, and ``files``: the names of the three files above.

``state.json`` is written last (atomically) and names its files, so a checkpoint is exactly what
its ``state.json`` names: a kill while a newer checkpoint is being written leaves the previous one
whole, and files no ``state.json`` names are removed after the next commit. Directories written by
older versions (``model.safetensors`` / ``optimizer.safetensors``, no ``files``) still load.
Nothing is ever unpickled: tensors come back through ``safetensors`` and scalars through JSON.

Writing is split in two phases (:class:`Snapshot`, :class:`BackgroundWriter`): *capture* copies
the tensors to host memory, and must finish before the parameters or the optimizer state change
again; *write* streams the copies to disk and may overlap the next training steps.
"""
from __future__ import annotations

import copy
import json
import os
import random
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from giamic.utils.io import atomic_open, write_json_atomic

STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"  # the fixed names of older versions' checkpoints
OPTIM_FILE = "optimizer.safetensors"
_TAGGED = re.compile(r"^(model|optimizer|best)-e\d+\.safetensors$")


def epoch_tag(epoch: int) -> str:
    return f"e{int(epoch):04d}"


# -- safetensors, streamed ---------------------------------------------------------------------------
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file, atomically (``giamic.utils.io.atomic_open``:
    temporary file, fsync, rename).

    ``safetensors.torch.load_file`` reads it back; the same tensors and metadata give the same
    bytes. Each tensor is streamed to the file from its own memory: no second copy of the whole file
    is built in memory, and the interpreter lock is free while the operating system copies, so a
    background write does not stall the training thread."""
    host = {k: _host(v) for k, v in tensors.items()}
    # Larger elements first: every tensor starts at a multiple of its element size (as save_file does).
    names = sorted(host, key=lambda k: (-host[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for k in names:
        t = host[k]
        if t.dtype not in _DTYPES:
            raise TypeError(f"{k}: dtype {t.dtype} cannot be written to a checkpoint")
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with atomic_open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for k in names:
            t = host[k]
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def _host(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


# -- RNG state --------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The RNG states of torch (CPU, CUDA), NumPy and Python as (tensors, JSON scalars)."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["rng.python"] = torch.tensor(list(internal), dtype=torch.int64)
    scalars = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
               "python": {"version": int(version), "gauss_next": gauss_next}}
    return tensors, scalars


def set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k].to(torch.uint8) for k in cuda])
    n = scalars["numpy"]
    np.random.set_state((n["kind"], tensors["rng.numpy.keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = scalars["python"]
    random.setstate((p["version"], tuple(int(x) for x in tensors["rng.python"].tolist()), p["gauss_next"]))


# -- module weights and optimizer state --------------------------------------------------------------
def module_weights(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The live state of ``modules`` as one ``{module name}.{key}`` mapping (no copy)."""
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def copy_to_host(tensors: dict[str, torch.Tensor], into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Host copies of ``tensors``; into the buffers of ``into`` where names, shapes and dtypes match
    (no fresh allocation: copying a model into a kept buffer is a memory copy, without page faults)."""
    out = {}
    for k, v in tensors.items():
        v = v.detach()
        buf = into.get(k) if into is not None else None
        if buf is not None and buf.shape == v.shape and buf.dtype == v.dtype and buf.device.type == "cpu":
            buf.copy_(v)
        else:
            buf = v.to("cpu", copy=True).contiguous()
        out[k] = buf
    return out


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's per-parameter tensors (live, no copy) and its param groups as JSON scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}


# How an optimizer computes its update, not what it has learnt: kept from the optimizer at hand.
_IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    """Restore the state of ``opt``. Hyper-parameters come from the checkpoint; how the update is
    computed (``fused``, ``foreach``) stays the optimizer's own."""
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if not key.startswith("state."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    own = opt.state_dict()["param_groups"]
    groups = []
    for i, g in enumerate(scalars["param_groups"]):
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        for k in _IMPLEMENTATION_FLAGS:
            if i < len(own) and k in own[i]:
                g[k] = own[i][k]
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


# -- whole checkpoint --------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """One checkpoint, detached from the training state once :meth:`capture` has run.

    Built at the end of an epoch with the RNG states and scalars of that moment; the weights and
    optimizer tensors are referenced live until :meth:`capture` copies them to host memory."""

    epoch: int
    scalars: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    optimizer_scalars: dict[str, Any]
    rng: dict[str, torch.Tensor]
    rng_scalars: dict[str, Any]
    best_epoch: int = 0
    best: dict[str, torch.Tensor] | None = None  # the best weights, when best_epoch != epoch
    captured: bool = field(default=False)

    @classmethod
    def take(cls, epoch: int, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
             scalars: dict[str, Any], best_epoch: int = 0, best: dict[str, torch.Tensor] | None = None) -> Snapshot:
        opt_t, opt_s = optimizer_tensors(optimizer)
        rng_t, rng_s = rng_state()
        return cls(epoch=int(epoch), scalars=copy.deepcopy(scalars), weights=module_weights(modules),
                   optimizer=opt_t, optimizer_scalars=opt_s, rng=rng_t, rng_scalars=rng_s,
                   best_epoch=int(best_epoch), best=best if best_epoch and best_epoch != epoch else None)

    def capture(self, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Copy the live tensors to host memory; ``weights``: a host copy of the same weights made
        already (the best weights of this very epoch), used instead of a second copy."""
        if not self.captured:
            self.weights = weights if weights is not None else copy_to_host(self.weights)
            self.optimizer = copy_to_host(self.optimizer)
            self.captured = True

    def write(self, ckpt_dir: str | Path) -> None:
        """Write the files, then commit with ``state.json``, then remove what no longer belongs."""
        ckpt_dir = Path(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tag = epoch_tag(self.epoch)
        files = {"model": f"model-{tag}.safetensors", "optimizer": f"optimizer-{tag}.safetensors", "best": None}
        write_safetensors(ckpt_dir / files["model"], self.weights, {"epoch": str(self.epoch)})
        write_safetensors(ckpt_dir / files["optimizer"], {**self.optimizer, **self.rng})
        if self.best_epoch == self.epoch:
            files["best"] = files["model"]
        elif self.best_epoch:
            files["best"] = _existing_best(ckpt_dir, self.best_epoch)
            if files["best"] is None:
                if self.best is None:
                    raise ValueError(f"the weights of the best epoch {self.best_epoch} are not at hand")
                files["best"] = f"best-{epoch_tag(self.best_epoch)}.safetensors"
                write_safetensors(ckpt_dir / files["best"], self.best, {"epoch": str(self.best_epoch)})
        write_json_atomic(ckpt_dir / STATE_FILE, {**self.scalars, "optimizer": self.optimizer_scalars,
                                                  "rng": self.rng_scalars, "files": files})
        keep = {f for f in files.values() if f}
        for p in ckpt_dir.iterdir():
            if p.name not in keep and (_TAGGED.match(p.name) or p.name in (MODEL_FILE, OPTIM_FILE)):
                p.unlink(missing_ok=True)


def _existing_best(ckpt_dir: Path, best_epoch: int) -> str | None:
    """A file of the committed checkpoint that already holds the weights of ``best_epoch``."""
    if not has_checkpoint(ckpt_dir):
        return None
    tag = epoch_tag(best_epoch)
    name = checkpoint_files(read_state(ckpt_dir)).get("best")
    if name in (f"model-{tag}.safetensors", f"best-{tag}.safetensors") and (ckpt_dir / name).is_file():
        return name
    return None


def save_checkpoint(ckpt_dir: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    scalars: dict[str, Any]) -> None:
    """Write one complete checkpoint (model + optimizer + RNG + ``scalars``) into ``ckpt_dir`` now.
    ``scalars["epoch"]`` names the files; ``scalars["best_epoch"]``, if it is that epoch, makes the
    model file the best weights too."""
    epoch = int(scalars.get("epoch", 0))
    best_epoch = int(scalars.get("best_epoch", 0))
    snap = Snapshot.take(epoch, modules, optimizer, scalars, best_epoch if best_epoch == epoch else 0)
    snap.write(ckpt_dir)


def has_checkpoint(ckpt_dir: str | Path) -> bool:
    return (Path(ckpt_dir) / STATE_FILE).is_file()


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / STATE_FILE).read_text(encoding="utf-8"))


def checkpoint_files(state: dict[str, Any]) -> dict[str, str | None]:
    """The files a ``state.json`` names (older versions: the fixed names, best weights outside)."""
    files = state.get("files") or {}
    return {"model": files.get("model", MODEL_FILE), "optimizer": files.get("optimizer", OPTIM_FILE),
            "best": files.get("best")}


def load_module_weights(ckpt_dir: str | Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load the weights of the checkpoint in ``ckpt_dir`` into ``modules``."""
    ckpt_dir = Path(ckpt_dir)
    load_module_weights_file(ckpt_dir / checkpoint_files(read_state(ckpt_dir))["model"], modules)


def load_module_weights_file(path: str | Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load a ``{module name}.{key}`` safetensors file into ``modules`` (strict)."""
    load_weights(load_file(str(path)), modules)


def load_weights(weights: dict[str, torch.Tensor], modules: dict[str, torch.nn.Module]) -> None:
    """Load a ``{module name}.{key}`` mapping into ``modules`` (strict)."""
    for name, m in modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        m.load_state_dict(sd, strict=True)


def load_best_weights(ckpt_dir: str | Path, state: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The best weights a checkpoint names (None for checkpoints of older versions, which kept them
    beside the checkpoint)."""
    name = checkpoint_files(state)["best"]
    return load_file(str(Path(ckpt_dir) / name)) if name else None


def load_checkpoint(ckpt_dir: str | Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer, restore_rng: bool = True) -> dict[str, Any]:
    """Restore modules, optimizer and (optionally) RNG states; return the scalars."""
    ckpt_dir = Path(ckpt_dir)
    state = read_state(ckpt_dir)
    files = checkpoint_files(state)
    load_module_weights_file(ckpt_dir / files["model"], modules)
    tensors = load_file(str(ckpt_dir / files["optimizer"]))
    load_optimizer(optimizer, tensors, state["optimizer"])
    if restore_rng:
        set_rng_state(tensors, state["rng"])
    return state


# -- writing in the background -----------------------------------------------------------------------
def _lower_priority(step: int = 10) -> None:
    """Lower the calling thread's scheduling priority (Linux: ``nice`` is per thread, and threads it
    starts inherit it): on a machine whose cores all train, the writer takes what the training
    threads leave instead of preempting them."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except (AttributeError, OSError):  # not Linux, or not permitted: the default priority
        pass


class BackgroundWriter:
    """Runs (capture, write) jobs: the capture (the copy of the tensors to host memory) at once on
    the calling thread, the write in order on one background thread, or at once when asked.

    The copy stays on the training thread on purpose: a tensor copy on a second thread starts a
    second team of intra-op threads, and on a machine whose cores all train the two teams
    preempt each other (measured: the training steps of a small-data unit 26 % slower). The copy
    is a memory copy (tens of milliseconds for the paper-size weights and moments); the write,
    serialising and syncing the file, runs no tensor kernel and leaves the interpreter lock
    free while the operating system copies. A job starts once the previous write has ended (the
    host buffers are reused), so the write of one epoch overlaps the training of the next.
    :meth:`wait` blocks until every write has finished and raises the first error of a job,
    which the next ``submit`` after a failure raises too."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []
        self._lock = threading.Lock()

    def submit(self, capture: Callable[[], None], write: Callable[[], None], background: bool) -> None:
        if not background:
            self.wait()
            capture()
            write()
            return
        # The previous job's write may still read buffers this capture refills (the host copy of
        # the best weights is reused): wait for it, and report its error if it failed.
        self.wait()
        capture()  # a failed copy raises here and writes nothing
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="giamic-writer",
                                            initializer=_lower_priority)
        with self._lock:
            self._writes.append(self._pool.submit(write))

    @property
    def pending(self) -> bool:
        return any(not f.done() for f in self._writes)

    def wait(self) -> None:
        """Wait for every queued job; re-raise the first error."""
        with self._lock:
            futures, self._writes = self._writes, []
        error = None
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001 - re-raised below, after every job has ended
                error = error or e
        if error is not None:
            raise error

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
