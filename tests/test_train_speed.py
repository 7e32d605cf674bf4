"""What makes training cheap must not change what it computes: the optimizer implementations, the
clipping shortcut, the checkpoint cadence and background writer, the checkpoint file layout, and
the thread policy."""
from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import pipeline_for, synthetic_dataset, synthetic_inputs, tiny_config

from giamic.errors import ConfigError
from giamic.train import checkpoint as ckpt
from giamic.train.config import load_config
from giamic.train.distributed import DistInfo
from giamic.train.recipe import (
    InterruptAfter,
    Interrupted,
    TrainingRecipe,
    UnitSpec,
    build_optimizer,
    clip_grad_norm,
    clipped_step,
    global_grad_norm,
    optimizer_impl,
    train_unit,
)
from giamic.train.report import read_predictions
from giamic.train.threads import ThreadPlan, apply_threads, available_cores, plan_threads, worker_init


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_per_group=16)


def _spec(ds, fold_index=0, seed=0):
    f = ds.folds[fold_index]
    return UnitSpec(seed=seed, fold_name=f.name, fold_number=fold_index + 1, test_group=f.test_group,
                    train_ids=list(f.train), test_ids=list(f.test))


# -- optimizer ---------------------------------------------------------------------------------------
def _reference_adam(params, grads_per_step, lr, betas, eps, wd, decoupled):
    """Adam / AdamW as written in their papers, in float64."""
    b1, b2 = betas
    p = [x.detach().double().clone() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            if decoupled:
                p[i] = p[i] * (1 - lr * wd)
            elif wd:
                g = g + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat, vhat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            p[i] = p[i] - lr * mhat / (vhat.sqrt() + eps)
    return p


@pytest.mark.parametrize("optimizer,wd", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.01)])
def test_every_optimizer_implementation_matches_the_reference_within_1e6(optimizer, wd):
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7), (1,)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) * 10 ** k for s in shapes] for k in (-3, -1, 0, 1, -2)]
    lr, betas, eps = 1e-3, (0.9, 0.999), 1e-8
    ref = _reference_adam(start, grads, lr, betas, eps, wd, decoupled=optimizer == "adamw")
    built = {}
    for impl in ("auto", "fused", "foreach", "for_loop"):
        cfg = load_config("tiny", [f"train.optimizer={optimizer}", f"train.optimizer_impl={impl}", f"train.lr={lr}",
                                   f"train.weight_decay={wd}"])
        params = [torch.nn.Parameter(x.clone()) for x in start]
        opt = build_optimizer(cfg, params)
        built[impl] = optimizer_impl(opt)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        for p, r, s0 in zip(params, ref, start):
            assert float((r - s0.double()).abs().max()) > 1e-4  # moved by 100x the tolerance
            assert float((p.detach().double() - r).abs().max()) <= 1e-6, (impl, optimizer, wd)
    # auto is the fused kernel on a CPU (torch has one); the others are what they say
    assert built == {"auto": "fused", "fused": "fused", "foreach": "foreach", "for_loop": "for_loop"}


def test_optimizer_choice_is_typed_recorded_and_keeps_older_fingerprints(tmp_path, data):
    with pytest.raises(ConfigError, match="optimizer_impl must be one of"):
        load_config("tiny", ["train.optimizer_impl=turbo"])
    # auto leaves the hash of older versions (which had no such key); an explicit choice enters it
    assert load_config("paper", ["train.optimizer_impl=auto"]).fingerprint() == "ce3da09c9140e2ba"
    assert load_config("paper", ["train.optimizer_impl=for_loop"]).fingerprint() != "ce3da09c9140e2ba"
    assert load_config("paper", ["train.checkpoint_every=3", "train.checkpoint_async=false",
                                 "train.checkpoint_interval_s=5"]).fingerprint() == "ce3da09c9140e2ba"
    ds, feats = data
    results = {}
    for impl in ("auto", "for_loop"):
        inputs = synthetic_inputs(ds, feats)
        results[impl] = train_unit(tiny_config("train.max_epochs=2", f"train.optimizer_impl={impl}"), inputs, _spec(ds),
                                   tmp_path / impl, DistInfo(), pipeline_for(inputs))
    assert results["auto"]["runtime"] == {"optimizer": "adam", "optimizer_impl": "fused", "device": "cpu",
                                          "cpu_threads": 1}
    assert results["for_loop"]["runtime"]["optimizer_impl"] == "for_loop"
    # The same mathematics: the two runs select the same epoch and predict the same, up to rounding.
    for k in ("wa", "ua", "confusion", "best_epoch"):
        assert results["auto"][k] == results["for_loop"][k], k
    pa = read_predictions(tmp_path / "auto" / "predictions.csv", ds.classes)["probs"]
    pb = read_predictions(tmp_path / "for_loop" / "predictions.csv", ds.classes)["probs"]
    assert np.abs(pa - pb).max() < 1e-4


@pytest.mark.parametrize("scale", [1e-4, 10.0])
def test_clipping_inside_the_fused_step_is_clip_then_step(scale):
    """clipped_step with fused Adam/AdamW: within 1e-6 of clip_grad_norm_ + a for-loop step, over
    several steps, clipped (scale 10) and not (scale 1e-4)."""
    for cls in (torch.optim.Adam, torch.optim.AdamW):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Tanh(), torch.nn.Linear(40, 5))
        r = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Tanh(), torch.nn.Linear(40, 5))
        r.load_state_dict(m.state_dict())
        # eps = 1: Adam's update then depends on the gradient's scale, so a missing clip would show
        oa = cls(m.parameters(), lr=1e-2, weight_decay=0.01, eps=1.0, fused=True)
        ob = cls(r.parameters(), lr=1e-2, weight_decay=0.01, eps=1.0, foreach=False)
        gen = torch.Generator().manual_seed(2)
        for _ in range(4):
            x = torch.randn(8, 30, generator=gen)
            for mod, opt in ((m, oa), (r, ob)):
                opt.zero_grad()
                (mod(x).square().sum() * scale).backward()
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in m.parameters()]))
            assert (norm > 1.5) if scale > 1 else (norm < 0.5)  # the clipped and the unclipped case
            clipped_step(oa, list(m.parameters()), 1.0)
            torch.nn.utils.clip_grad_norm_(list(r.parameters()), 1.0)
            ob.step()
            assert getattr(oa, "grad_scale", None) is None  # not left for the next step
        diff = max(float((p - q).detach().abs().max()) for p, q in zip(m.parameters(), r.parameters()))
        assert diff < 1e-6, (cls, diff)


def test_global_grad_norm_matches_torch_and_keeps_non_finite_values():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(s, generator=gen) * 3 for s in [(300, 200), (200,), (7, 3, 5)]]
    ref = torch.nn.utils.get_total_norm(grads, 2.0)
    exact = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
    assert abs(float(global_grad_norm(grads)) - exact) <= 1e-6 * exact and abs(float(ref) - exact) <= 1e-6 * exact
    assert math.isinf(float(global_grad_norm([*grads, torch.tensor([math.inf])])))
    assert math.isnan(float(global_grad_norm([*grads, torch.tensor([math.nan])])))
    strided = [torch.randn(6, 4, generator=gen)[:, ::2]]  # not contiguous: torch's own function
    assert torch.equal(global_grad_norm(strided), torch.nn.utils.get_total_norm(strided, 2.0))


@pytest.mark.parametrize("scale", [1e-4, 10.0])
def test_clipping_shortcut_gives_torchs_bits(scale):
    gen = torch.Generator().manual_seed(1)
    a = [torch.nn.Parameter(torch.zeros(s)) for s in [(40, 30), (30,), (8, 40)]]
    b = [torch.nn.Parameter(torch.zeros(s)) for s in [(40, 30), (30,), (8, 40)]]
    for p, q in zip(a, b):
        p.grad = torch.randn(p.shape, generator=gen) * scale
        q.grad = p.grad.clone()
    clip_grad_norm(a, 1.0)
    torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a, b))
    norm = math.sqrt(sum(float(p.grad.double().square().sum()) for p in a))
    assert (norm < 1e-1) if scale < 1 else (abs(norm - 1.0) < 1e-5)  # untouched / clipped to 1


# -- checkpoint files ----------------------------------------------------------------------------------
def test_streamed_safetensors_files_read_back_exactly(tmp_path):
    tensors = {"w": torch.randn(3, 4), "h": torch.randn(5).half(), "b": torch.randn(2, 2).bfloat16(),
               "i": torch.arange(7, dtype=torch.int64), "flag": torch.tensor([True, False, True]),
               "u8": torch.arange(5, dtype=torch.uint8), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
               "strided": torch.randn(4, 6)[:, ::2]}
    ckpt.write_safetensors(tmp_path / "x.safetensors", tensors, {"epoch": "3"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"epoch": "3"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary file left


def _model_and_adam(seed: int):
    torch.manual_seed(seed)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, fused=True)
    m(torch.randn(5, 4)).square().sum().backward()
    opt.step()
    return m, opt


def test_a_checkpoint_is_what_its_state_file_names(tmp_path, monkeypatch):
    m, opt = _model_and_adam(0)
    ckpt.save_checkpoint(tmp_path, {"model": m}, opt, {"epoch": 1, "best_epoch": 1})
    state = ckpt.read_state(tmp_path)
    assert state["files"] == {"model": "model-e0001.safetensors", "optimizer": "optimizer-e0001.safetensors",
                              "best": "model-e0001.safetensors"}
    w1 = m.weight.detach().clone()
    # Killed while epoch 2 is written: its tensors are on disk, its state.json is not.
    with torch.no_grad():
        m.weight.add_(1.0)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, {"model": m}, opt, {"epoch": 2, "best_epoch": 1})
    monkeypatch.undo()
    assert (tmp_path / "model-e0002.safetensors").is_file()
    m2, opt2 = _model_and_adam(5)
    assert ckpt.load_checkpoint(tmp_path, {"model": m2}, opt2)["epoch"] == 1
    assert torch.equal(m2.weight, w1)  # the complete checkpoint, not the newer weights
    # The next complete checkpoint keeps the best epoch's file and drops everything else.
    snap = ckpt.Snapshot.take(3, {"model": m}, opt, {"epoch": 3, "best_epoch": 1}, best_epoch=1)
    snap.capture()
    snap.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-e0001.safetensors", "model-e0003.safetensors",
                                                         "optimizer-e0003.safetensors", "state.json"]
    best = ckpt.load_best_weights(tmp_path, ckpt.read_state(tmp_path))
    assert torch.equal(best["model.weight"], w1)


def test_checkpoints_of_older_versions_still_load(tmp_path):
    m, opt = _model_and_adam(0)
    # the layout older versions wrote: fixed file names, no "files" in state.json
    ckpt.write_safetensors(tmp_path / "model.safetensors", ckpt.module_weights({"model": m}))
    opt_t = ckpt.optimizer_tensors(opt)[0]
    # param groups as older versions saved them: torch's default implementation flags (fused None)
    opt_s = ckpt.optimizer_tensors(torch.optim.Adam(m.parameters(), lr=1e-2))[1]
    assert opt_s["param_groups"][0]["fused"] is None
    rng_t, rng_s = ckpt.rng_state()
    ckpt.write_safetensors(tmp_path / "optimizer.safetensors", {**opt_t, **rng_t})
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 4, "optimizer": opt_s, "rng": rng_s}))
    m2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-2, fused=True)
    assert ckpt.load_checkpoint(tmp_path, {"model": m2}, opt2)["epoch"] == 4
    assert torch.equal(m.weight, m2.weight) and ckpt.load_best_weights(tmp_path, ckpt.read_state(tmp_path)) is None
    assert opt2.param_groups[0]["fused"] is True  # the optimizer keeps its own implementation
    x = torch.randn(2, 4)
    for mod, o in ((m, opt), (m2, opt2)):
        o.zero_grad()
        mod(x).sum().backward()
        o.step()
    assert torch.equal(m.weight, m2.weight)


def test_background_writer_copies_at_once_writes_behind_and_reports_errors():
    w = ckpt.BackgroundWriter()
    release, events, threads = threading.Event(), [], []

    def capture():
        threads.append(threading.get_ident())
        events.append("captured")

    def write():
        release.wait(5)
        events.append("written")

    w.submit(capture, write, background=True)
    # the copy ran on this thread before submit returned; the write still waits
    assert events == ["captured"] and threads == [threading.get_ident()] and w.pending
    release.set()
    w.wait()
    assert events == ["captured", "written"] and not w.pending
    # the next job's copy starts only once the previous write has ended (the buffers are reused)
    release.clear()
    w.submit(lambda: None, write, background=True)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    t0 = time.perf_counter()
    w.submit(lambda: events.append("second copy"), lambda: None, background=True)
    assert time.perf_counter() - t0 >= 0.15 and events[-2:] == ["written", "second copy"]
    w.wait()

    def broken():
        raise OSError("disk full")

    w.submit(lambda: None, broken, background=True)
    with pytest.raises(OSError, match="disk full"):
        w.wait()
    w.submit(lambda: None, broken, background=True)
    while w.pending:
        time.sleep(0.01)
    with pytest.raises(OSError, match="disk full"):  # reported at the next epoch's files, not at the end
        w.submit(lambda: None, lambda: None, background=True)
    w.wait()
    # a failed copy writes nothing
    with pytest.raises(OSError, match="disk full"):
        w.submit(broken, lambda: events.append("should not happen"), background=True)
    w.close()
    assert "should not happen" not in events
    # at once: both phases before submit returns
    w.submit(lambda: events.append("c"), lambda: events.append("w"), background=False)
    assert events[-2:] == ["c", "w"]
    # the background thread yields to the training threads (a higher nice value than this thread's)
    import os

    nice = []
    w.submit(lambda: None, lambda: nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
             background=True)
    w.close()
    assert nice[0] > os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


# -- cadence and resume ---------------------------------------------------------------------------------
def test_checkpoint_cadence(tmp_path, data, monkeypatch):
    ds, feats = data
    written = []
    real = ckpt.Snapshot.write
    monkeypatch.setattr(ckpt.Snapshot, "write", lambda self, d: (written.append(self.epoch), real(self, d))[1])
    cases = {"default": [], "every2": ["train.checkpoint_every=2"], "always": ["train.checkpoint_interval_s=0"]}
    for name, sets in cases.items():
        written.clear()
        inputs = synthetic_inputs(ds, feats)
        train_unit(tiny_config("train.max_epochs=5", "train.patience=10", "train.keep_checkpoints=true", *sets), inputs,
                   _spec(ds), tmp_path / name, DistInfo(), pipeline_for(inputs))
        # by time (10 minutes): none in a run of seconds; never after the last epoch (the test follows)
        expected = {"default": [], "every2": [2, 4], "always": [1, 2, 3, 4]}[name]
        assert written == expected, name
        assert (tmp_path / name / "checkpoint").exists() == bool(expected)
        assert (tmp_path / name / "best.safetensors").is_file() and (tmp_path / name / "log.csv").is_file()
        assert len((tmp_path / name / "log.csv").read_text().splitlines()) == 1 + 5
    # best.safetensors is written when an epoch improves, except after the last epoch when it is not
    # kept (it would be removed at once; the model directory has the weights)
    best_writes = []
    real_write = ckpt.write_safetensors

    def record(path, tensors, metadata=None):
        if path.name == "best.safetensors":
            best_writes.append(int(metadata["epoch"]))
        return real_write(path, tensors, metadata)

    monkeypatch.setattr(ckpt, "write_safetensors", record)
    inputs = synthetic_inputs(ds, feats)
    train_unit(tiny_config("train.max_epochs=3", "train.patience=10"), inputs, _spec(ds), tmp_path / "lean", DistInfo(),
               pipeline_for(inputs))
    rows = (tmp_path / "lean" / "log.csv").read_text().splitlines()
    best_col = rows[0].split(",").index("best")
    improved = [i + 1 for i, r in enumerate(rows[1:]) if r.split(",")[best_col] == "1"]
    assert improved and best_writes == [e for e in improved if e < 3]
    assert not (tmp_path / "lean" / "best.safetensors").exists()


def test_kill_and_resume_when_the_best_epoch_is_older_than_the_checkpoint(tmp_path, data):
    ds, feats = data
    # lr 0: no epoch after the first improves, so the checkpoint at epoch 2 carries epoch 1's weights
    cfg = tiny_config("train.max_epochs=4", "train.patience=10", "train.lr=1e-12", "train.checkpoint_every=2",
                      "train.keep_checkpoints=true")
    spec = _spec(ds, 1)
    inputs = synthetic_inputs(ds, feats)
    full = train_unit(cfg, inputs, spec, tmp_path / "a", DistInfo(), pipeline_for(inputs))
    per_epoch = math.ceil(full["n_train"] / cfg.train.batch_size)
    killed = TrainingRecipe(cfg, inputs, spec, tmp_path / "b", DistInfo(), pipeline_for(inputs),
                            callbacks=[InterruptAfter(2 * per_epoch + 1)])
    with pytest.raises(Interrupted):
        killed.run()
    state = ckpt.read_state(tmp_path / "b" / "checkpoint")
    assert state["epoch"] == 2 and state["best_epoch"] == 1 and state["files"]["best"] == "best-e0001.safetensors"
    resumed = TrainingRecipe(cfg, inputs, spec, tmp_path / "b", DistInfo(), pipeline_for(inputs)).run()
    assert resumed == full and resumed["best_epoch"] == 1
    pa = read_predictions(tmp_path / "a" / "predictions.csv", ds.classes)
    pb = read_predictions(tmp_path / "b" / "predictions.csv", ds.classes)
    np.testing.assert_array_equal(pa["probs"], pb["probs"])


def test_a_unit_killed_under_an_older_version_resumes(tmp_path, data):
    """An older version's checkpoint (fixed names, best weights beside it) continues exactly."""
    ds, feats = data
    cfg = tiny_config("train.max_epochs=3", "train.checkpoint_every=1", "train.keep_checkpoints=true")
    spec = _spec(ds)
    inputs = synthetic_inputs(ds, feats)
    full = train_unit(cfg, inputs, spec, tmp_path / "a", DistInfo(), pipeline_for(inputs))
    per_epoch = math.ceil(full["n_train"] / cfg.train.batch_size)
    killed = TrainingRecipe(cfg, inputs, spec, tmp_path / "b", DistInfo(), pipeline_for(inputs),
                            callbacks=[InterruptAfter(per_epoch + 2)])
    with pytest.raises(Interrupted):
        killed.run()
    d = tmp_path / "b" / "checkpoint"
    state = ckpt.read_state(d)
    files = state.pop("files")
    (d / files["model"]).rename(d / "model.safetensors")
    (d / files["optimizer"]).rename(d / "optimizer.safetensors")
    (d / "state.json").write_text(json.dumps(state))
    assert (tmp_path / "b" / "best.safetensors").is_file()
    resumed = TrainingRecipe(cfg, inputs, spec, tmp_path / "b", DistInfo(), pipeline_for(inputs)).run()
    assert resumed == full


# -- threads -------------------------------------------------------------------------------------------
def test_thread_policy_rules(tmp_path):
    assert plan_threads(3, cores=16, env={}) == ThreadPlan(3, 16, 1, 0, "train.cpu_threads")
    assert plan_threads(0, cores=16, env={"OMP_NUM_THREADS": "5"}).intra_op == 5
    # the cores given, shared by the run's processes on this machine, less the CPU run's data workers
    assert plan_threads(0, cores=16, env={}).intra_op == 16
    assert plan_threads(0, cores=16, env={"LOCAL_WORLD_SIZE": "4"}).intra_op == 4
    assert plan_threads(0, num_workers=2, cores=16, env={"LOCAL_WORLD_SIZE": "4"}).intra_op == 2
    assert plan_threads(0, num_workers=2, device_type="cuda", cores=16, env={"LOCAL_WORLD_SIZE": "4"}).intra_op == 4
    assert plan_threads(0, num_workers=8, cores=2, env={}).intra_op == 1  # never below one
    # a CPU quota caps the affinity mask (docker --cpus=2.5 on a 16-core machine: 3 cores)
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert available_cores(affinity=16, cgroup_root=tmp_path) == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(affinity=16, cgroup_root=tmp_path) == 16
    assert available_cores(affinity=6, cgroup_root=tmp_path / "absent") == 6


class _ThreadsSeen(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        from threadpoolctl import threadpool_info

        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        return torch.get_num_threads(), max(blas, default=1)


def test_threads_are_applied_and_data_workers_get_one_each():
    apply_threads(ThreadPlan(2, 2, 1, 1, "cores"))
    assert torch.get_num_threads() == 2
    loader = torch.utils.data.DataLoader(_ThreadsSeen(), batch_size=None, num_workers=1, worker_init_fn=worker_init)
    torch_threads, blas_threads = next(iter(loader))
    assert (int(torch_threads), int(blas_threads)) == (1, 1)
    apply_threads(ThreadPlan(1, 2, 1, 0, "train.cpu_threads"))
    assert torch.get_num_threads() == 1
