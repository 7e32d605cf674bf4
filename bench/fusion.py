"""Speed of one GIA-MIC training step (forward + backward) at paper dimensions.

Prints, in one run: seconds per step of the model and of the literal formulation of the equations
(``giamic.models.reference``), the FLOPs per step counted by ``torch.utils.flop_counter`` for both,
the achieved FLOP/s, and this machine's dense matmul FLOP/s measured in the same run (before and
after the timed steps; the ratio uses the larger of the two).

    .venv/bin/python bench/fusion.py                      # B=32, K=180, M=299, N=64, d=768, fp32, CPU
    .venv/bin/python bench/fusion.py --batch 4 --iters 2  # quicker
    .venv/bin/python bench/fusion.py --device cuda --dtype bf16
    .venv/bin/python bench/fusion.py --micro-batch 8      # also: the step as micro-batches of 8
    .venv/bin/python bench/fusion.py --no-padding         # every utterance at full length

The fast path is a training step as the model offers it, ``GIAMIC.forward_backward``: on a CPU
the batch runs as micro-batches (at most ``default_micro_batch_size``, 16, and at least one per
thread), as many at a time as torch has threads, each on its own thread with one intra-op thread;
their losses are weighted by their share and their gradients summed. Every loss term is a batch
mean of per-utterance terms and no layer couples utterances, so the gradient is the full batch's.
The row "one pass" is the same step as one forward and one backward over the whole batch with
torch's intra-op threads. ``--micro-batch MB`` adds a row with micro-batches of MB. The FLOPs of a
multi-threaded step are counted on the same micro-batches run in turn (the counter sees one
thread).

"Model FLOPs" are those of the literal formulation (what the equations cost on the padded batch);
the fast path runs fewer (exact rewrites skip redundant products, and it computes on the valid
rows only: the batch's valid fraction is printed), so model FLOPs / time is the throughput at
which the equations are evaluated, and can exceed the matmul rate. "Own FLOP/s" divides the FLOPs
each implementation actually runs by its time: how busy it keeps the machine.
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
from giamic.models.modeling import micro_batch_plan  # noqa: E402
from giamic.models.reference import reference_forward  # noqa: E402
from giamic.utils.memory import keep_freed_memory  # noqa: E402


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
    ap.add_argument("--micro-batch", type=int, default=0, help="also time the step as micro-batches of this size")
    ap.add_argument("--no-padding", action="store_true", help="every utterance at full length (no padded rows)")
    ap.add_argument("--default-allocator", action="store_true",
                    help="keep the C library's allocator defaults (giamic processes keep freed memory: "
                         "giamic.utils.memory)")
    args = ap.parse_args(argv)
    if not args.default_allocator:
        keep_freed_memory()  # as giamic train does

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
        if args.no_padding:
            lens[:] = T[m]
        masks[m] = (torch.arange(T[m])[None] < lens[:, None]).to(dev)
    labels = torch.randint(0, cfg.num_classes, (B,), generator=g).to(dev)
    amp = torch.autocast(dev.type, dtype=dt) if dt != torch.float32 else nullcontext()

    def step(micro_batch_size=None, workers=None):
        def run():
            model.zero_grad(set_to_none=True)
            model.forward_backward(feats, masks, labels, micro_batch_size,
                                   amp_dtype=dt if dt != torch.float32 else None, workers=workers)
        return run

    # The FLOP counter sees only this thread's operations: count each step with one worker (the
    # same operations on the same micro-batches, run in turn).
    def counted(micro_batch_size=None):
        return step(micro_batch_plan(B, dev, micro_batch_size, None, cfg.fast_dropout)[0], 1)

    plan = micro_batch_plan(B, dev, None, None, cfg.fast_dropout, min(int(masks[m].sum()) for m in cfg.modalities))
    step_fast = step()
    steps = {"giamic, one pass": step(0, 1)}  # extra rows
    if args.micro_batch:
        steps[f"giamic, micro-batches of {args.micro_batch}"] = step(args.micro_batch)

    def step_ref():
        model.zero_grad(set_to_none=True)
        with amp:
            r = reference_forward(model, feats, masks)
            loss = F.cross_entropy(r["logits"].float(), labels) + cfg.gamma * r["loss_mir"]
        loss.backward()

    valid = {m: float(masks[m].float().mean()) for m in cfg.modalities}
    print(f"allocator: {'C library defaults' if args.default_allocator else 'freed memory kept (giamic.utils.memory)'}")
    print(f"device={dev} dtype={args.dtype} threads={torch.get_num_threads()} variant={args.variant} "
          f"B={B} K={args.K} M={args.M} N={args.N} d={cfg.d_model} params={model.num_parameters():,}")
    print("valid fraction of the padded rows: " + ", ".join(f"{m} {v:.2f}" for m, v in valid.items())
          + "; fast path: {} micro-batch(es) of <= {}, {} at a time".format(-(-B // plan[0]), *plan))
    peak = measure_matmul_flops(args.matmul_n, dt, dev)
    print(f"dense matmul ({args.matmul_n}^3, {args.dtype}): {fmt_flops(peak)}FLOP/s")
    flops_fast = count_flops(counted())
    with_ref = not args.no_reference and cfg.fusion == "giamic"
    flops_model = count_flops(step_ref) if with_ref else flops_fast
    flops = {"giamic, one pass": count_flops(step(0, 1))}
    if args.micro_batch:
        flops[f"giamic, micro-batches of {args.micro_batch}"] = count_flops(counted(args.micro_batch))
    # Interleave the implementations (one timed step each, in turn) so that load from other
    # processes on a shared machine hits all alike; report the median of each.
    runs = {"giamic (fast path)": step_fast, **steps}
    if with_ref:
        runs["literal reference"] = step_ref
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.iters):
        for name, fn in runs.items():
            t = time_fn(fn, 0, 1, dev)
            if i >= args.warmup:
                times[name].append(t)
    flops.update({"giamic (fast path)": flops_fast, "literal reference": flops_model})
    peak_after = measure_matmul_flops(args.matmul_n, dt, dev)
    print(f"dense matmul again after the runs: {fmt_flops(peak_after)}FLOP/s (contention check)")
    # Load from other processes only lowers a measurement: the larger one is the better estimate
    # of the machine's peak (and gives the more conservative ratio).
    peak = max(peak, peak_after)
    print(f"{'implementation':30s} {'s/step':>8s} {'counted FLOPs':>14s} {'model FLOP/s':>13s} {'/ matmul':>9s} "
          f"{'own FLOP/s / matmul':>20s}")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, t in med.items():
        print(f"{name:30s} {t:8.3f} {fmt_flops(flops[name]):>13s} {fmt_flops(flops_model / t):>12s} "
              f"{flops_model / t / peak:9.2f} {flops[name] / t / peak:20.2f}")
    if with_ref:
        print(f"speed-up of the fast path over the literal formulation: {med['literal reference'] / med['giamic (fast path)']:.2f}x "
              f"(fast path runs {flops_fast / flops_model:.3f} of the literal FLOPs)")


if __name__ == "__main__":
    main()
