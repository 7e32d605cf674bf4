"""Training throughput with cached features: utterances per second and the share of step time
spent waiting on data.

It writes a synthetic prepared dataset whose features live in real on-disk feature stores
(memory-mapped fp16 chunks, ``giamic import-features``), then runs one epoch of the real training
loop (``giamic.train.recipe.train_unit``) for each size and prints the figures the loop logs per epoch
(``utt_per_s``, ``data_wait_share``) plus the step time. Sizes:

* ``tiny``: the demo preset's model (d = 32) at the demo's slot lengths (8 / 99 / 32);
* ``paper``: the paper-size fusion model (d = 768, 50.4 M parameters) at the paper's slot lengths
  (K = 180, M = 299, N = 64) with CLIP/WavLM/RoBERTa widths, speech cached (frozen-WavLM mode).

Usage: ``.venv/bin/python bench/train.py [--sizes tiny paper] [--n 96] [--threads 1] [--workers 0]``.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {
    # dims, lengths, batch, preset
    "tiny": ({"video": 32, "speech": 32, "text": 384}, {"video": 8, "speech": 99, "text": 32}, 32, "demo"),
    "paper": ({"video": 768, "speech": 1024, "text": 768}, {"video": 180, "speech": 299, "text": 64}, 8, "paper"),
}


def make_data(root: Path, n: int, dims: dict, lengths: dict) -> dict[str, str]:
    from giamic.data import Utterance, folds_leave_one_group_out, write_dataset
    from giamic.features import import_features

    rng = np.random.default_rng(0)
    classes = ["neu", "ang", "hap", "sad"]
    utts = [Utterance(utt_id=f"G{i % 5}_u{i:04d}", label=classes[i % 4], group=f"G{i % 5}", dialog=f"G{i % 5}_d{i % 3}")
            for i in range(n)]
    write_dataset(root, name="bench", classes=classes, utterances=utts, folds=folds_leave_one_group_out(utts),
                  fold_scheme="logo", source="bench/train.py")
    keys = {}
    for m, d in dims.items():
        src = root / f"src-{m}"
        src.mkdir()
        for u in utts:
            t = int(rng.integers(lengths[m] // 2, lengths[m] + 1))
            np.save(src / f"{u.utt_id}.npy", rng.normal(size=(t, d)).astype(np.float16))
        keys[m] = import_features(root, f"bench-{m}", m, src).key
    return keys


def run(size: str, n: int, threads: int, workers: int, epochs: int) -> dict:
    from giamic.data import load_dataset
    from giamic.train.config import load_config
    from giamic.train.distributed import DistInfo
    from giamic.train.recipe import UnitSpec, train_unit
    from giamic.train.cv import InputFactory

    dims, lengths, batch, preset = SIZES[size]
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        keys = make_data(root, n, dims, lengths)
        sets = [f"encoders.{m}_key={k}" for m, k in keys.items()] + [
            "encoders.speech_mode=cached", f"train.batch_size={batch}", f"train.max_epochs={epochs}",
            f"train.patience={epochs + 1}", "train.progress=false", f"data.num_workers={workers}",
            f"data.max_frames={lengths['video']}", f"data.max_tokens={lengths['text']}", "train.precision=fp32"]
        cfg = load_config(preset, sets, data_dir=str(root))
        ds = load_dataset(root)
        factory = InputFactory(cfg, ds, torch.device("cpu"))
        inputs = factory.for_unit()
        f = ds.folds[0]
        spec = UnitSpec(0, f.name, 1, f.test_group, list(f.train), list(f.test))
        t0 = time.perf_counter()
        train_unit(cfg, inputs, spec, Path(tmp) / "unit", DistInfo(), factory.pipeline(inputs.lengths))
        total = time.perf_counter() - t0
        rows = list(csv.DictReader(open(Path(tmp) / "unit" / "log.csv")))
    last = rows[-1]
    n_train = len(spec.train_ids) - round(0.1 * len(spec.train_ids))
    steps = -(-n_train // batch)
    return {"size": size, "batch": batch, "lengths": lengths, "utt_per_s": float(last["utt_per_s"]),
            "data_wait_share": float(last["data_wait_share"]),
            "step_s": float(last["train_time_s"]) / steps, "unit_s": total, "epochs": len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "paper"], choices=list(SIZES))
    ap.add_argument("--n", type=int, default=120, help="utterances in the synthetic dataset (default 120)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs; the last one is reported (default 2)")
    args = ap.parse_args()
    print(f"training throughput on {torch.get_num_threads()} -> {args.threads} CPU thread(s), cached features, "
          f"{args.n} utterances (fold 1: {int(args.n * 0.8 * 0.9)} training), last of {args.epochs} epoch(s)")
    print(f"{'size':>6} {'batch':>5} {'slots K/M/N':>12} {'utt/s':>8} {'step s':>8} {'data wait':>9}")
    for size in args.sizes:
        r = run(size, args.n, args.threads, args.workers, args.epochs)
        L = r["lengths"]
        print(f"{r['size']:>6} {r['batch']:>5} {L['video']:>4}/{L['speech']}/{L['text']:<3} {r['utt_per_s']:>8.1f} "
              f"{r['step_s']:>8.3f} {100 * r['data_wait_share']:>8.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
