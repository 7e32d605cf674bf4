"""Shared helpers for the speed scripts in ``bench/`` (stable API, imported by every bench).

* ``measure_matmul_flops(n, dtype, device)``: this machine's dense matmul FLOP/s, measured now.
* ``time_fn(fn, warmup, iters)``: median wall time of ``fn()`` in seconds (device-synchronised).
* ``count_flops(fn)``: FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter``.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def synchronize(device: str | torch.device | None = None) -> None:
    dev = torch.device(device) if device is not None else None
    if (dev is None and torch.cuda.is_available()) or (dev is not None and dev.type == "cuda"):
        torch.cuda.synchronize(dev)


def time_fn(fn: Callable[[], object], warmup: int = 1, iters: int = 3, device: str | torch.device | None = None) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_matmul_flops(n: int = 2048, dtype: str | torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", warmup: int = 2, iters: int = 5) -> float:
    """Achieved FLOP/s of one dense ``n x n @ n x n`` matmul (``2 n^3`` FLOPs), median of ``iters``."""
    dt = resolve_dtype(dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    sec = time_fn(lambda: torch.mm(a, b), warmup=warmup, iters=iters, device=device)
    return 2.0 * n**3 / sec


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of one call of ``fn`` (forward and backward ops it runs), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def fmt_flops(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "
