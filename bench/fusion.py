"""Speed of one GIA-MIC training step (forward + backward) at paper dimensions.

Prints, in one run: seconds per step of the model and of the literal formulation of the equations
(``giamic.models.reference``), the FLOPs per step counted by ``torch.utils.flop_counter`` for both,
the achieved FLOP/s, and this machine's dense matmul FLOP/s measured in the same run (before and
after the timed steps; the ratio uses the larger of the two).

    .venv/bin/python bench/fusion.py                      # B=32, K=180, M=299, N=64, d=768, fp32, CPU
    .venv/bin/python bench/fusion.py --batch 4 --iters 2  # quicker
    .venv/bin/python bench/fusion.py --device cuda --dtype bf16
    .venv/bin/python bench/fusion.py --micro-batch 8      # also: the B=32 step as 4 accumulated micro-batches

``--micro-batch MB`` adds a row for the same step computed as B/MB micro-batches whose losses are
scaled by MB/B and accumulated (``train.micro_batch_size`` in the recipe). Every loss term is a
batch mean of per-utterance terms and no layer couples utterances, so the gradient is the full
batch's; on a CPU the smaller activations stay in cache.

"Model FLOPs" are those of the literal formulation (what the equations cost); the fast path runs
fewer (exact rewrites skip redundant products), so model FLOPs / time is the fair throughput.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import count_flops, fmt_flops, measure_matmul_flops, resolve_dtype, time_fn  # noqa: E402

from giamic import GIAMIC, GIAMICConfig  # noqa: E402
from giamic.models.reference import reference_forward  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--K", type=int, default=180)
    ap.add_argument("--M", type=int, default=299)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--variant", default="full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the literal formulation (giamic.models.reference)")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=0, help="also time the step as accumulated micro-batches")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    dt = resolve_dtype(args.dtype)
    cfg = GIAMICConfig.from_variant(args.variant)
    model = GIAMIC(cfg).to(dev).train()
    B, T = args.batch, {"video": args.K, "speech": args.M, "text": args.N}
    g = torch.Generator().manual_seed(0)
    feats, masks = {}, {}
    for m in cfg.modalities:
        feats[m] = torch.randn(B, T[m], cfg.input_dims[m], generator=g).to(dev)
        lens = torch.randint(max(1, T[m] // 2), T[m] + 1, (B,), generator=g)
        lens[0] = T[m]
        masks[m] = (torch.arange(T[m])[None] < lens[:, None]).to(dev)
    labels = torch.randint(0, cfg.num_classes, (B,), generator=g).to(dev)
    amp = torch.autocast(dev.type, dtype=dt) if dt != torch.float32 else nullcontext()

    def step_fast():
        model.zero_grad(set_to_none=True)
        with amp:
            out = model(feats, masks, labels)
        out.loss.backward()

    def step_micro():
        model.zero_grad(set_to_none=True)
        mb = args.micro_batch
        for s in range(0, B, mb):
            part = slice(s, min(s + mb, B))
            with amp:
                out = model({k: v[part] for k, v in feats.items()}, {k: v[part] for k, v in masks.items()},
                            labels[part])
            (out.loss * ((part.stop - part.start) / B)).backward()

    def step_ref():
        model.zero_grad(set_to_none=True)
        with amp:
            r = reference_forward(model, feats, masks)
            loss = F.cross_entropy(r["logits"].float(), labels) + cfg.gamma * r["loss_mir"]
        loss.backward()

    print(f"device={dev} dtype={args.dtype} threads={torch.get_num_threads()} variant={args.variant} "
          f"B={B} K={args.K} M={args.M} N={args.N} d={cfg.d_model} params={model.num_parameters():,}")
    peak = measure_matmul_flops(args.matmul_n, dt, dev)
    print(f"dense matmul ({args.matmul_n}^3, {args.dtype}): {fmt_flops(peak)}FLOP/s")
    flops_fast = count_flops(step_fast)
    with_ref = not args.no_reference and cfg.fusion == "giamic"
    flops_model = count_flops(step_ref) if with_ref else flops_fast
    # Interleave the two implementations (one timed step each, in turn) so that load from other
    # processes on a shared machine hits both alike; report the median of each.
    with_micro = 0 < args.micro_batch < B
    t_fast, t_ref, t_micro = [], [], []
    for i in range(args.warmup + args.iters):
        tf = time_fn(step_fast, 0, 1, dev)
        tr = time_fn(step_ref, 0, 1, dev) if with_ref else 0.0
        tm = time_fn(step_micro, 0, 1, dev) if with_micro else 0.0
        if i >= args.warmup:
            t_fast.append(tf)
            t_ref.append(tr)
            t_micro.append(tm)
    rows = [("giamic (fast path)", statistics.median(t_fast), flops_fast)]
    if with_micro:
        rows.append((f"giamic, {-(-B // args.micro_batch)}x{args.micro_batch} accum", statistics.median(t_micro),
                     flops_fast))
    if with_ref:
        rows.append(("literal reference", statistics.median(t_ref), flops_model))
    peak_after = measure_matmul_flops(args.matmul_n, dt, dev)
    print(f"dense matmul again after the runs: {fmt_flops(peak_after)}FLOP/s (contention check)")
    # Load from other processes only lowers a measurement: the larger one is the better estimate
    # of the machine's peak (and gives the more conservative ratio).
    peak = max(peak, peak_after)
    print(f"{'implementation':22s} {'s/step':>8s} {'counted FLOPs':>14s} {'model FLOP/s':>13s} {'/ matmul':>9s}")
    for name, t, fl in rows:
        print(f"{name:22s} {t:8.3f} {fmt_flops(fl):>13s} {fmt_flops(flops_model / t):>12s} "
              f"{flops_model / t / peak:9.2f}")
    if with_ref:
        print(f"speed-up of the fast path over the literal formulation: {rows[-1][1] / rows[0][1]:.2f}x "
              f"(fast path runs {flops_fast / flops_model:.3f} of the literal FLOPs)")


if __name__ == "__main__":
    main()
