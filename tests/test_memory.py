"""giamic.utils.memory: glibc keeps freed tensor memory (mmap threshold 32 MiB, no trimming)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import ctypes, ctypes.util, sys, time
    from giamic.utils import memory
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def faults():
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    if sys.argv[1] == "on":
        assert memory.keep_freed_memory() is True
    # a step's pattern: six 8 MiB blocks allocated, written and freed, four times. glibc's
    # default hands the freed 48 MiB back to the kernel (above its trim threshold) and every round
    # faults them in again; kept, the later rounds reuse mapped memory.
    n = 8 << 20
    rounds = []
    for _ in range(4):
        f0 = faults()
        blocks = [libc.malloc(n) for _ in range(6)]
        for p in blocks:
            ctypes.memset(p, 1, n)
        for p in blocks:
            libc.free(p)
        rounds.append(faults() - f0)
    print(rounds[-1])
""")


def _later_round_faults(mode: str, env: dict | None = None) -> int:
    out = subprocess.run([sys.executable, "-c", CHECK, mode], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_blocks_stay_mapped():
    pages = 6 * (8 << 20) // 4096
    # glibc's default: about one fault per page in every round (fewer with transparent huge pages)
    assert _later_round_faults("off") > pages // 8
    # kept: the later rounds reuse mapped memory
    assert _later_round_faults("on") < 50


def test_the_users_allocator_settings_stand(monkeypatch):
    from giamic.utils import memory

    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.setenv("GIAMIC_MALLOC", "default")
    assert memory.keep_freed_memory() is False
    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.delenv("GIAMIC_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert memory.keep_freed_memory() is False
