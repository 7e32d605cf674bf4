"""Per-epoch training checkpoints in safe formats, for exact resume (docs/decisions.md, "Training:
seeds, data order and exact resume").

A checkpoint directory holds

* ``model.safetensors``: every trainable module's state (fusion model, and the speech encoder when
  it is fine-tuned), keys prefixed by module name;
* ``optimizer.safetensors``: the optimizer's per-parameter tensors (Adam ``exp_avg``,
  ``exp_avg_sq``, ``step``) keyed ``state.<param index>.<name>``, plus the RNG states of torch (CPU
  and CUDA), NumPy and Python as integer tensors;
* ``state.json``: scalars: epoch, best metric and epoch, early-stop counter, the optimizer's
  param-group hyper-parameters, the history of per-epoch logs, the NumPy/Python RNG scalars, and the
  run fingerprint that must match on resume.

Files are written atomically and ``state.json`` last, so a directory whose ``state.json`` exists is
complete. Nothing is ever unpickled: tensors come back through ``safetensors`` and scalars through
JSON.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from giamic.utils.io import save_safetensors_atomic, write_json_atomic

STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"


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


# -- optimizer ---------------------------------------------------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if not key.startswith("state."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    groups = []
    for g in scalars["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


# -- whole checkpoint --------------------------------------------------------------------------------
def save_checkpoint(ckpt_dir: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    scalars: dict[str, Any]) -> None:
    """Write one complete checkpoint (model + optimizer + RNG + ``scalars``) into ``ckpt_dir``."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    save_safetensors_atomic(weights, ckpt_dir / MODEL_FILE)
    opt_t, opt_s = optimizer_tensors(optimizer)
    rng_t, rng_s = rng_state()
    save_safetensors_atomic({**opt_t, **rng_t}, ckpt_dir / OPTIM_FILE)
    write_json_atomic(ckpt_dir / STATE_FILE, {**scalars, "optimizer": opt_s, "rng": rng_s})


def has_checkpoint(ckpt_dir: str | Path) -> bool:
    return (Path(ckpt_dir) / STATE_FILE).is_file()


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / STATE_FILE).read_text(encoding="utf-8"))


def load_module_weights(ckpt_dir: str | Path, modules: dict[str, torch.nn.Module]) -> None:
    load_module_weights_file(Path(ckpt_dir) / MODEL_FILE, modules)


def load_module_weights_file(path: str | Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load a ``{module name}.{key}`` safetensors file into ``modules`` (strict)."""
    weights = load_file(str(path))
    for name, m in modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        m.load_state_dict(sd, strict=True)


def load_checkpoint(ckpt_dir: str | Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer, restore_rng: bool = True) -> dict[str, Any]:
    """Restore modules, optimizer and (optionally) RNG states; return the scalars."""
    ckpt_dir = Path(ckpt_dir)
    state = read_state(ckpt_dir)
    load_module_weights(ckpt_dir, modules)
    tensors = load_file(str(ckpt_dir / OPTIM_FILE))
    load_optimizer(optimizer, tensors, state["optimizer"])
    if restore_rng:
        set_rng_state(tensors, state["rng"])
    return state
