"""Two processes (gloo, CPU) under DistributedDataParallel train the same model as one process."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from train_helpers import pipeline_for, synthetic_dataset, synthetic_inputs, tiny_config

from giamic.train.distributed import DistInfo, init_distributed
from giamic.train.recipe import UnitSpec, train_unit
from giamic.train.report import read_predictions

OVERRIDES = ("train.max_epochs=2", "train.batch_size=8", "train.lr=2e-3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec(ds):
    f = ds.folds[0]
    return UnitSpec(seed=0, fold_name=f.name, fold_number=1, test_group=f.test_group, train_ids=list(f.train),
                    test_ids=list(f.test))


def _worker(rank: int, world: int, port: int, runs: list[tuple[str, tuple[str, ...]]]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    assert info.world_size == world and info.rank == rank
    ds, feats = synthetic_dataset(n_per_group=13)  # 52 training utterances: a short last batch
    inputs = synthetic_inputs(ds, feats)
    try:
        for out_dir, overrides in runs:
            train_unit(tiny_config(*overrides), inputs, _spec(ds), out_dir, info, pipeline_for(inputs))
    finally:
        torch.distributed.destroy_process_group()


# Plain DDP, and DDP with accumulation: micro-batches of 2 per process make 2 accumulation steps
# per optimizer step, and the short last batch gives a process an empty share (weight 0).
RUNS = {"plain": OVERRIDES, "accumulation": OVERRIDES + ("train.micro_batch_size=2", "train.max_epochs=1")}


def test_two_processes_agree_with_one(tmp_path):
    ds, feats = synthetic_dataset(n_per_group=13)
    inputs = synthetic_inputs(ds, feats)
    for name, overrides in RUNS.items():
        train_unit(tiny_config(*overrides), inputs, _spec(ds), tmp_path / name / "one", DistInfo(), pipeline_for(inputs))
    runs = [(str(tmp_path / name / "two"), overrides) for name, overrides in RUNS.items()]
    mp.spawn(_worker, args=(2, _free_port(), runs), nprocs=2, join=True)
    for name, overrides in RUNS.items():
        _compare(tmp_path / name, ds, tiny_config(*overrides).train.max_epochs)


def _compare(run_dir, ds, epochs):
    one = json.loads((run_dir / "one" / "result.json").read_text())
    two = json.loads((run_dir / "two" / "result.json").read_text())
    assert two["best_epoch"] == one["best_epoch"] and two["confusion"] == one["confusion"]
    p1 = read_predictions(run_dir / "one" / "predictions.csv", ds.classes)
    p2 = read_predictions(run_dir / "two" / "predictions.csv", ds.classes)
    assert p1["utt_id"] == p2["utt_id"]
    np.testing.assert_allclose(p1["probs"], p2["probs"], atol=1e-5)
    w1 = load_file(str(run_dir / "one" / "model" / "model.safetensors"))
    w2 = load_file(str(run_dir / "two" / "model" / "model.safetensors"))
    compared = 0
    for k in w1:
        # The key bias of an attention has an analytically zero gradient (adding q.b_k to every
        # score of a row leaves the softmax unchanged), so what it receives is rounding noise, which
        # Adam scales up to lr-sized steps: its value is arbitrary and differs with summation order.
        a, b = w1[k], w2[k]
        if k.endswith(".k.bias"):
            continue
        if k.endswith("in_proj_bias"):  # nn.MultiheadAttention packs [q; k; v] biases
            third = a.shape[0] // 3
            a, b = torch.cat([a[:third], a[2 * third:]]), torch.cat([b[:third], b[2 * third:]])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        compared += 1
    assert compared > 50
    # Both logged every epoch; the per-epoch training losses (global-batch means) agree.
    l1 = (run_dir / "one" / "log.csv").read_text().splitlines()
    l2 = (run_dir / "two" / "log.csv").read_text().splitlines()
    assert len(l1) == len(l2) == epochs + 1
    for r1, r2 in zip(l1[1:], l2[1:]):
        np.testing.assert_allclose([float(x) for x in r1.split(",")[1:4]], [float(x) for x in r2.split(",")[1:4]],
                                   rtol=1e-5)
