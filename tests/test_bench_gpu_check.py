"""``bench/gpu_check.py`` on a machine without CUDA: every check skips with a clear line, exit 0."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this test checks the CPU-only behaviour")
def test_gpu_check_skips_cleanly_without_cuda():
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 6 and all("skipped: no CUDA device" in x for x in lines)
    assert [x.split()[0] for x in lines] == ["matmul", "fusion", "wavlm", "wavlm-ckpt", "clip", "ddp"]
