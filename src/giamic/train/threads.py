"""The thread policy of a training process: use the cores it is given, and no more.

Three kinds of threads compete for a machine's cores while a unit trains:

* torch's intra-op threads (OpenMP/MKL inside each matmul, convolution, optimizer kernel) of
  every training process;
* the data-loader worker processes (``data.num_workers``), which read features or decode audio;
* BLAS thread pools outside torch (NumPy's OpenBLAS, used by metrics and the t-SNE figure).

The rules (:func:`plan_threads`; docs/reproducing.md, "Threads and several jobs on one machine"):

1. ``train.cpu_threads > 0`` is the number of intra-op threads of each training process.
2. Otherwise ``OMP_NUM_THREADS`` from the environment, if set (what torch itself reads).
3. Otherwise the cores this process may run on, i.e. its CPU affinity mask (``taskset``,
   ``numactl``, a container's cpuset), capped by a cgroup CPU quota (``docker --cpus``), divided
   among the training processes of the run on this machine (``LOCAL_WORLD_SIZE`` under
   ``torchrun``), less one core per data-loader worker when the model trains on the CPU.

Data-loader workers run with one intra-op thread and one BLAS thread each
(:func:`worker_init`); NumPy's BLAS in the training process gets the intra-op count. Two jobs side
by side therefore each get half the cores when each is started on half of them (``taskset -c``) or
with ``train.cpu_threads`` set to half. The thread count does not change a unit's fingerprint.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadPlan:
    """How many threads one training process uses, and why."""

    intra_op: int  # torch.set_num_threads, and the BLAS pools of this process
    cores: int  # the CPU cores this process may run on
    processes: int  # training processes of the run on this machine
    workers: int  # data-loader worker processes (one thread each)
    source: str  # "train.cpu_threads", "OMP_NUM_THREADS" or "cores"

    def describe(self) -> str:
        extra = f", {self.workers} data worker(s) of 1 thread" if self.workers else ""
        return (f"{self.intra_op} intra-op thread(s) ({self.source}; {self.cores} core(s) given, "
                f"{self.processes} process(es) on this machine{extra})")


def available_cores(affinity: int | None = None, cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = os.cpu_count() or 1
    cores = max(1, affinity)
    quota = _cgroup_quota(Path(cgroup_root) / "cpu.max")
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def _cgroup_quota(path: Path) -> float | None:
    """``cpu.max`` (``"QUOTA PERIOD"`` or ``"max PERIOD"``) as a number of cores; None if unlimited."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def plan_threads(cpu_threads: int = 0, num_workers: int = 0, device_type: str = "cpu",
                 env: Mapping[str, str] | None = None, cores: int | None = None) -> ThreadPlan:
    """The intra-op thread count of one training process (the rules of the module docstring)."""
    env = os.environ if env is None else env
    cores = available_cores() if cores is None else max(1, cores)
    try:
        processes = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        processes = 1
    workers = max(0, int(num_workers))
    if cpu_threads > 0:
        return ThreadPlan(int(cpu_threads), cores, processes, workers, "train.cpu_threads")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadPlan(int(omp), cores, processes, workers, "OMP_NUM_THREADS")
    share = cores // processes
    if device_type == "cpu":
        share -= workers
    return ThreadPlan(max(1, share), cores, processes, workers, "cores")


def apply_threads(plan: ThreadPlan) -> None:
    """Set torch's intra-op threads and this process's BLAS pools to ``plan.intra_op``."""
    import torch

    if torch.get_num_threads() != plan.intra_op:
        torch.set_num_threads(plan.intra_op)
    _limit_blas(plan.intra_op)


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of the training data loaders: one torch thread, one BLAS thread."""
    import torch

    torch.set_num_threads(1)
    _limit_blas(1)


def _limit_blas(n: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a dependency of scikit-learn; without it the BLAS pools keep their size
        return
    threadpool_limits(limits=n, user_api="blas")
