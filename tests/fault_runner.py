"""Run one giamic command in this process with a fault injected at a chosen moment (for tests/test_faults.py).

    python tests/fault_runner.py kill PATTERN N -- ARGV...
        SIGKILL this process right before the N-th atomic write whose destination matches the
        ``fnmatch`` pattern PATTERN is renamed into place: the temporary file is complete, the
        destination not yet replaced, the worst moment for a crash.
    python tests/fault_runner.py hold SIGNAL_DIR -- ARGV...
        Once the command holds its output folder's lock, create SIGNAL_DIR/held and wait until
        SIGNAL_DIR/release exists, then carry on: a second process can meet the lock for sure.

The command itself is the real ``giamic.cli.main``; only the fault is added.
"""
from __future__ import annotations

import fnmatch
import os
import signal
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    mode, params, command = argv[0], argv[1:sep], argv[sep + 1:]
    from giamic.utils import io as gio

    if mode == "kill":
        pattern, n = params[0], int(params[1])
        real_replace = os.replace
        seen = [0]

        def replace(src, dst, *a, **k):
            if gio.TEMP_PATTERN.match(Path(src).name) and fnmatch.fnmatch(str(dst), pattern):
                seen[0] += 1
                if seen[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    elif mode == "hold":
        signals = Path(params[0])
        real_clean = gio.remove_stale_temps

        def clean_then_hold(directory):
            out = real_clean(directory)
            (signals / "held").touch()
            deadline = time.monotonic() + 300
            while not (signals / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return out

        gio.remove_stale_temps = clean_then_hold
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from giamic.cli import main as giamic_main

    return giamic_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
