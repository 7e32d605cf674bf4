"""What one training unit costs beyond its forward, backward and optimizer steps.

For each row it writes a synthetic prepared dataset whose features live in real on-disk feature
stores (memory-mapped fp16, ``giamic import-features``), then runs ``giamic train`` on it as a
separate process (start-up, data loading, validation, checkpoints, the test, the report and the
plots included) and, in a separate process with the same thread settings, a bare loop of the same
model's steps on the same batches: forward, backward, fused Adam, nothing else. Rows:

* ``paper``: the paper-size full model (d = 768) on cached features at the paper's slot lengths
  (K = 180 frames, M = 299 WavLM frames, N = 64 tokens; CLIP/WavLM/RoBERTa widths), batch 8;
* ``vectors``: the paper-size V+S model on imported single vectors (one row per modality and
  utterance: a per-clip CLIP vector and a WavLM vector), 672 utterances of 4 classes, batch 32;
* ``tiny``: the tiny preset's model (d = 32) at the demo's slot lengths (8 / 99 / 32).

Modes, each a ``giamic train`` run of the same unit (same seed, so the same result up to the
optimizer's rounding):

* ``old``: the settings before the current ones: Adam one tensor at a time
  (``train.optimizer_impl=for_loop``), a resume checkpoint after every epoch written before the
  next step (``train.checkpoint_every=1``, ``train.checkpoint_async=false``);
* ``new``: the defaults (fused Adam, a resume checkpoint every 10 minutes, files written in the
  background);
* ``every``: the defaults with a resume checkpoint after every epoch (``train.checkpoint_every=1``).

Printed per row and mode: wall seconds of the ``giamic train`` process, its ratio to the bare loop
(and the ratio of CPU seconds, which other processes on a shared machine disturb less), and the
share of that wall time spent in the optimizer update (with clipping), checkpoints and best weights
(the part training waits for), validation, data loading, and outside the epochs (start-up, setup,
test, report, plots); then the largest difference between the ``old`` and ``new`` selected weights
and test probabilities.

The bare loop runs twice per round: with the C library's default allocator, and with the freed
memory kept as ``giamic`` keeps it (``giamic.utils.memory``: glibc's mmap threshold at 32 MiB, no
heap trimming). ``x bare`` is the ratio to the first; the line ``bare, kept memory`` shows how much
of the difference is the allocator rather than what ``giamic train`` does besides the steps.

Usage: ``python bench/train.py [--rows vectors tiny paper] [--modes old new every] [--threads 1]
[--repeat 1] [--epochs N]``. Ratios come from one invocation, so old and new see the same machine
load; with ``--repeat`` the rounds interleave the modes and the fastest round of each is shown.
The load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    dims: dict  # feature width per modality
    lengths: dict  # per-utterance rows per modality: (min, max)
    n: int  # utterances
    batch: int
    epochs: int
    preset: str
    sets: tuple[str, ...] = ()


ROWS = {
    "paper": Row({"video": 768, "speech": 1024, "text": 768}, {"video": (90, 180), "speech": (150, 299), "text": (32, 64)},
                 n=40, batch=8, epochs=2, preset="paper",
                 sets=("data.max_frames=180", "data.max_tokens=64")),
    "vectors": Row({"video": 768, "speech": 1024}, {"video": (1, 1), "speech": (1, 1)},
                   n=672, batch=32, epochs=10, preset="paper", sets=("model.variant=VS",)),
    "tiny": Row({"video": 32, "speech": 32, "text": 384}, {"video": (4, 8), "speech": (50, 99), "text": (16, 32)},
                n=240, batch=32, epochs=6, preset="demo", sets=("data.max_frames=8", "data.max_tokens=32")),
}
MODES = {
    "old": ("train.optimizer_impl=for_loop", "train.checkpoint_every=1", "train.checkpoint_async=false"),
    "new": (),
    "every": ("train.checkpoint_every=1",),
}
PHASES = ("step", "optimizer", "validation", "checkpoint", "data", "setup", "test")
TIMING_LINE = re.compile(r": (\d+) epoch\(s\) in ([\d.]+) s: (.*)$")


def make_data(root: Path, row: Row) -> dict[str, str]:
    """A prepared dataset of ``row.n`` utterances in 5 groups with imported fp16 features."""
    from giamic.data import Utterance, folds_leave_one_group_out, write_dataset
    from giamic.features import import_features

    rng = np.random.default_rng(0)
    classes = ["neu", "ang", "hap", "sad"]
    utts = [Utterance(utt_id=f"G{i % 5}_u{i:04d}", label=classes[i % 4], group=f"G{i % 5}", dialog=f"G{i % 5}_d{i % 3}")
            for i in range(row.n)]
    write_dataset(root, name="bench", classes=classes, utterances=utts, folds=folds_leave_one_group_out(utts),
                  fold_scheme="logo", source="bench/train.py")
    keys = {}
    for m, d in row.dims.items():
        src = root / f"src-{m}"
        src.mkdir()
        lo, hi = row.lengths[m]
        for i, u in enumerate(utts):
            x = rng.normal(size=(int(rng.integers(lo, hi + 1)), d)).astype(np.float16)
            x[:, i % 4] += 1.0  # a class signal, so validation and selection behave as on real data
            np.save(src / f"{u.utt_id}.npy", x)
        keys[m] = import_features(root, f"bench-{m}", m, src).key
    return keys


def overrides(row: Row, keys: dict[str, str], threads: int, mode: str) -> list[str]:
    return [*(f"encoders.{m}_key={k}" for m, k in keys.items()), "encoders.speech_mode=cached",
            f"train.batch_size={row.batch}", f"train.max_epochs={row.epochs}", f"train.patience={row.epochs + 1}",
            "train.precision=fp32", "train.device=cpu", f"train.cpu_threads={threads}", "train.progress=false",
            *row.sets, *MODES[mode]]


def run_unit(data: Path, out: Path, sets: list[str], preset: str, threads: int) -> dict:
    """``giamic train`` in a fresh process: wall seconds and the unit's own timing line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    # The command line's own entry point, with INFO logging on (the unit's timing line).
    entry = "import sys; from giamic.log import setup; setup(0); from giamic.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", entry, "train", str(data), "--out", str(out), "--fold", "fold1", "--seed", "0",
           "--config", preset, *(a for s in sets for a in ("--set", s))]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    if p.returncode:
        raise SystemExit(f"giamic train failed ({p.returncode}):\n{stderr[-3000:]}")
    phases, run_s, epochs = {}, None, None
    for line in stderr.splitlines():
        m = TIMING_LINE.search(line)
        if m:
            epochs, run_s = int(m.group(1)), float(m.group(2))
            for part in m.group(3).split(", "):
                name, sec = part.split(" ")[:2]
                phases[name] = float(sec)
    if run_s is None:
        raise SystemExit(f"no timing line in the output of giamic train:\n{stderr[-3000:]}")
    unit = out / "seed0" / "fold1"
    result = json.loads((unit / "result.json").read_text())
    probs = np.loadtxt(unit / "predictions.csv", delimiter=",", skiprows=1, usecols=range(3, 7), dtype=np.float64)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "run": run_s, "epochs": epochs, "phases": phases, "result": result, "probs": probs,
            "weights": unit / "model" / "model.safetensors"}


def bare_loop(data: Path, sets: list[str], preset: str, threads: int, n_train: int,
              epochs: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``epochs`` passes of forward + backward + fused-Adam steps over
    ``n_train`` utterances (the unit's batch sizes, its last batch short) of the row's model, on
    batches built beforehand from the same feature stores."""
    from giamic.data import load_dataset
    from giamic.features import FeatureStore
    from giamic.train.config import load_config
    from giamic.train.batches import CachedModality, ModelInputs
    from giamic.train.recipe import build_model

    torch.set_num_threads(threads)
    cfg = load_config(preset, sets, data_dir=str(data))
    ds = load_dataset(data)
    sources = {}
    for m in ("video", "speech", "text"):
        key = getattr(cfg.encoders, f"{m}_key")
        if key and m in cfg.model.giamic_config().modalities:
            store = FeatureStore.open(data, key)
            cap = {"video": cfg.data.max_frames, "text": cfg.data.max_tokens}.get(m)
            longest = max(store.length(u.utt_id) for u in ds.utterances)
            sources[m] = CachedModality(m, store, min(cap, longest) if cap else longest, store.dim, {})
    inputs = ModelInputs(ds, ds.classes, sources)
    torch.manual_seed(0)
    model = build_model(cfg, inputs.input_dims, len(ds.classes))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    ids = [u.utt_id for u in ds.utterances]
    b = cfg.train.batch_size
    batches = [inputs.batch(ids[k:min(k + b, n_train)]) for k in range(0, n_train, b)]

    def step(batch):
        out = model(features=batch.features, masks=batch.masks, labels=batch.labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # first-call allocations, as the unit's first step has them too
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for batch in batches:
            step(batch)
    return time.perf_counter() - t0, time.process_time() - c0


BARE_CHILD = """
import json, sys
sys.path.insert(0, {bench!r})
from train import bare_loop
from pathlib import Path
print(json.dumps(bare_loop(Path({data!r}), {sets!r}, {preset!r}, {threads!r}, {n_train!r}, {epochs!r})))
"""
KEPT_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def bare_process(data: Path, sets: list[str], preset: str, threads: int, n_train: int, epochs: int,
                 kept_memory: bool) -> tuple[float, float]:
    """:func:`bare_loop` in a fresh process with the environment ``giamic train`` gets."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    for k in KEPT_MEMORY:
        env.pop(k, None)
    if kept_memory:
        env.update(KEPT_MEMORY)
    code = BARE_CHILD.format(bench=str(ROOT / "bench"), data=str(data), sets=list(sets), preset=preset,
                             threads=threads, n_train=n_train, epochs=epochs)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the bare loop failed:\n{out.stderr[-3000:]}")
    wall, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, cpu


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", default=["vectors", "tiny", "paper"], choices=list(ROWS))
    ap.add_argument("--modes", nargs="+", default=["old", "new", "every"], choices=list(MODES))
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every run (default 1)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of (every mode, then the bare loop); the fastest round of each is shown (default 1)")
    ap.add_argument("--epochs", type=int, help="epochs of every row (default: the row's own)")
    args = ap.parse_args()
    print(f"training cost, {args.threads} intra-op thread(s), fastest of {args.repeat} round(s); "
          f"load average before: {load()}")
    print("x bare: wall time of the giamic train process / wall time of the bare loop (default allocator); cpu x: the same with the "
          "processes' CPU time (less sensitive to other load). Shares are of the wall time.")
    print("ckpt/ep: checkpoint seconds as a share of the epochs' seconds (training, validation, checkpoints).")
    print(f"{'row':>8} {'mode':>6} {'epochs':>6} {'wall s':>8} {'x bare':>7} {'cpu x':>6} {'optim':>6} {'ckpt':>6} "
          f"{'ckpt/ep':>7} {'valid':>6} {'data':>6} {'other':>6}  optimizer")
    for name in args.rows:
        row = ROWS[name]
        if args.epochs:
            row = Row(**{**row.__dict__, "epochs": args.epochs})
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            keys = make_data(data, row)
            runs: dict[str, list[dict]] = {m: [] for m in args.modes}
            bare: list[tuple[float, float]] = []
            kept: list[tuple[float, float]] = []
            for r in range(args.repeat):
                for mode in args.modes:
                    runs[mode].append(run_unit(data, Path(tmp) / f"{mode}{r}", overrides(row, keys, args.threads, mode),
                                               row.preset, args.threads))
                first = runs[args.modes[0]][0]["result"]
                spe = -(-first["n_train"] // row.batch)
                for runs_of, kept_memory in ((bare, False), (kept, True)):
                    runs_of.append(bare_process(data, overrides(row, keys, args.threads, "new"), row.preset,
                                                args.threads, first["n_train"], first["epochs_run"], kept_memory))
            b_wall, b_cpu = min(b[0] for b in bare), min(b[1] for b in bare)
            for mode in args.modes:
                best = min(runs[mode], key=lambda r: r["wall"])
                wall, cpu, ph = best["wall"], min(r["cpu"] for r in runs[mode]), best["phases"]
                inside = sum(ph.get(k, 0.0) for k in ("step", "optimizer", "validation", "checkpoint", "data"))

                def share(x: float, wall: float = wall) -> str:
                    return f"{100 * x / wall:5.1f}%"

                print(f"{name:>8} {mode:>6} {best['epochs']:>6} {wall:>8.2f} {wall / b_wall:>6.2f}x {cpu / b_cpu:>5.2f}x "
                      f"{share(ph.get('optimizer', 0))} {share(ph.get('checkpoint', 0))} "
                      f"{share(ph.get('checkpoint', 0), inside):>7} {share(ph.get('validation', 0))} "
                      f"{share(ph.get('data', 0))} {share(wall - inside)}  {best['result']['runtime']['optimizer_impl']}",
                      flush=True)
            print(f"{name:>8} {'bare':>6} {first['epochs_run']:>6} {b_wall:>8.2f} {1:>6.2f}x {1:>5.2f}x  "
                  f"({spe} steps/epoch of batch {row.batch}: forward + backward + fused Adam; cpu {b_cpu:.2f} s)")
            k_wall = min(k[0] for k in kept)
            mode = "new" if "new" in runs else args.modes[-1]
            print(f"{name:>8} {'bare, kept memory':>17} {k_wall:>8.2f} {k_wall / b_wall:>6.2f}x of bare; "
                  f"giamic train ({mode}) / this: {min(r['wall'] for r in runs[mode]) / k_wall:.2f}x")
            if "old" in runs and "new" in runs:
                from safetensors.torch import load_file

                old, new = runs["old"][0], runs["new"][0]
                d = np.abs(old["probs"] - new["probs"]).max()
                wo, wn = load_file(str(old["weights"])), load_file(str(new["weights"]))
                dw = max(float((wo[k].double() - wn[k].double()).abs().max()) for k in wo)
                same = all(old["result"][k] == new["result"][k] for k in ("wa", "ua", "best_epoch"))
                print(f"{name:>8} old vs new (for-loop vs fused Adam): largest difference of a selected weight {dw:.1e}, "
                      f"of a test probability {d:.1e}; WA, UA and best epoch {'identical' if same else 'DIFFER'}")
    print(f"load average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
