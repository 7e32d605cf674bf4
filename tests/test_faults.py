"""Faults a user meets: each is one error line naming the path, a non-zero exit, and nothing lost.

One table: the command, the expected exit code, a fragment of the expected message, the fault to
simulate. A full disk and a read-only folder are simulated by patching the one place where giamic
creates output files (``giamic.utils.io._open_temp``): tests run as root, for whom ``chmod`` stops
nothing, and mounting a small file system needs privileges a test machine may not have. A folder in
use is a real second giamic process (``tests/fault_runner.py hold``) holding the folder's lock while
the row's command runs. Every row checks that the files written before it (corpus, prepared dataset,
feature caches, a finished run) are byte-identical afterwards.

A second table kills a command during each kind of atomic write (prepare's files, a feature chunk's
array and manifest, the store's index, a training checkpoint, the best weights, the model
directory, the report): the kill is injected right before the N-th matching write is renamed into
place (the temporary file is complete, the destination not yet replaced), in this process or, for
some rows, as a real SIGKILL of a subprocess. The rerun must remove the stale temporary file, finish,
and give the same files as an uninterrupted run.
"""
from __future__ import annotations

import csv
import errno
import fnmatch
import io
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from giamic.cli import main
from giamic.utils import io as gio


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A generated corpus, its prepared dataset with the demo features, a finished one-fold run and a
    plain file (where a folder is expected)."""
    from giamic.data.democorpus import make_corpus

    root = tmp_path_factory.mktemp("faults").resolve()
    make_corpus(root / "corpus", seed=1, n_per_dialog=2, dialogs_per_session=2, fps=5.0, size=(240, 160))
    counts = root / "corpus" / "expected_counts.json"
    assert main(["-q", "prepare", str(root / "corpus"), "--out", str(root / "data"),
                 "--expected-counts", str(counts)]) == 0
    assert main(["-q", "extract", str(root / "data"), "--encoders", "tiny-clip-untrained,tiny-wavlm-untrained,minilm",
                 "--frozen-speech", "--no-progress"]) == 0
    assert main(["-q", "cv", str(root / "data"), *CV, "--out", str(root / "run")]) == 0
    (root / "afile").write_text("not a folder\n")
    assert (root / "run" / "report.json").is_file()
    corrupt = root / "corrupt-model"
    shutil.copytree(root / "run" / "seed0" / "fold1" / "model", corrupt)
    _flip_data_bytes(corrupt / "model.safetensors")
    video = sorted((root / "corpus").rglob("*.avi"))[0]
    return {"root": root, "corpus": root / "corpus", "counts": counts, "data": root / "data",
            "run": root / "run", "file": root / "afile", "new": root / "new", "corrupt": corrupt, "video": video}


def _flip_data_bytes(path: Path) -> None:
    """Invert 64 bytes in the middle of a safetensors file's data region (its header stays valid)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    mid = start + (len(raw) - start) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    path.write_bytes(bytes(raw))


# Two epochs with a resume checkpoint after the first (none follows the last epoch), so that a run
# writes a checkpoint, the best weights and the model directory.
CV = ["--config", "demo", "--variant", "full", "--folds", "fold1", "--set", "train.max_epochs=2",
      "--set", "train.checkpoint_every=1"]

# (id, argv, exit code, message fragment, fault): fault = None or (kind, where); kind is "erofs" or
# "eacces" (no file can be created), or "enospc" (files can be created but every write fails);
# where = a folder (faults below it) or a file-name pattern. Kind "held": a real giamic process runs
# the same command and holds its output folder while the row runs ({pid} in the fragment is its PID).
ROWS = [
    ("prepare-out-is-a-file", ["prepare", "{corpus}", "--out", "{file}", "--expected-counts", "{counts}"], 1,
     "{file}: exists and is not a directory", None),
    ("cv-out-is-a-file", ["cv", "{data}", *CV, "--out", "{file}"], 1, "{file}: exists and is not a directory", None),
    ("train-out-is-a-file", ["train", "{data}", *CV[:4], "--out", "{file}"], 1,
     "{file}: exists and is not a directory", None),
    ("render-crops-out-is-a-file", ["render-crops", "{data}", "--out", "{file}"], 1,
     "{file}: exists and is not a directory", None),
    ("make-corpus-out-is-a-file", ["make-corpus", "{file}"], 1, "{file}: exists and is not a directory", None),
    ("prepare-missing-parent", ["prepare", "{corpus}", "--out", "/proc/giamic/x", "--expected-counts", "{counts}"], 1,
     "/proc/giamic/x: cannot create this folder", None),
    ("cv-missing-parent", ["cv", "{data}", *CV, "--out", "/proc/giamic/x"], 1, "/proc/giamic/x: cannot create this folder",
     None),
    ("render-crops-missing-parent", ["render-crops", "{data}", "--out", "/proc/giamic/x"], 1,
     "/proc/giamic/x: cannot create this folder", None),
    ("cv-parent-is-a-file", ["cv", "{data}", *CV, "--out", "{file}/run"], 1,
     "{file}/run: cannot create this folder: {file} is a file", None),
    ("extract-not-a-dataset", ["extract", "{corpus}", "--encoders", "minilm"], 1,
     "{corpus}: not a prepared dataset (no utterances.csv); run `giamic prepare` first", None),
    ("extract-no-such-folder", ["extract", "{root}/nowhere", "--encoders", "minilm"], 1,
     "{root}/nowhere: no such directory", None),
    ("cv-not-a-dataset", ["cv", "{corpus}", *CV, "--out", "{new}"], 1, "{corpus}: not a prepared dataset", None),
    ("prepare-read-only-folder", ["prepare", "{corpus}", "--out", "{data}", "--expected-counts", "{counts}"], 1,
     "{data}: cannot write in this folder: read-only file system", ("erofs", "{data}")),
    ("cv-read-only-folder", ["cv", "{data}", *CV, "--out", "{run}"], 1,
     "{run}: cannot write in this folder: permission denied", ("eacces", "{run}")),
    ("extract-read-only-dataset", ["extract", "{data}", "--encoders", "minilm", "--max-tokens", "8"], 1,
     "{data}/features: cannot write in this folder: read-only file system", ("erofs", "{data}")),
    ("prepare-disk-full", ["prepare", "{corpus}", "--out", "{data}", "--expected-counts", "{counts}"], 1,
     "{data}/utterances.csv: no space left on device", ("enospc", "{data}")),
    ("cv-disk-full-on-a-finished-run", ["cv", "{data}", *CV, "--out", "{run}"], 1,
     "{run}/config.yaml: no space left on device", ("enospc", "{run}")),
    ("cv-disk-full-while-training", ["cv", "{data}", *CV, "--out", "{new}"], 1,
     ".safetensors: no space left on device", ("enospc", "*.safetensors")),
    ("extract-disk-full", ["extract", "{data}", "--encoders", "minilm", "--max-tokens", "8", "--no-progress"], 1,
     "meta.json: no space left on device", ("enospc", "{data}")),
    ("prepare-folder-in-use", ["prepare", "{corpus}", "--out", "{data}", "--expected-counts", "{counts}"], 1,
     "{data}: output folder is in use by another giamic process (PID {pid})", ("held", None)),
    ("cv-folder-in-use", ["cv", "{data}", *CV, "--out", "{run}"], 1,
     "{run}: run folder is in use by another giamic process (PID {pid})", ("held", None)),
    ("extract-store-in-use", ["extract", "{data}", "--encoders", "minilm", "--no-progress"], 1,
     "is in use by another giamic process (PID {pid}); wait for it to finish", ("held", None)),
    ("predict-corrupted-weights", ["predict", "--model", "{corrupt}", "{video}", "--transcript", "hello there"], 2,
     "{corrupt}/model.safetensors: SHA-256", None),
]

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
    [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
RUNNER = Path(__file__).with_name("fault_runner.py")


def _is_lock(p: Path) -> bool:
    """The empty lock files of ``giamic.utils.io.output_lock`` are no output."""
    return p.name.startswith(".giamic") and p.name.endswith(".lock")


class _Holder:
    """A real giamic process running ``argv`` and holding its output folder until released."""

    def __init__(self, argv: list[str], signals: Path) -> None:
        signals.mkdir(parents=True, exist_ok=True)
        self.signals = signals
        self.proc = subprocess.Popen([sys.executable, str(RUNNER), "hold", str(signals), "--", "-q", *argv], env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while not (signals / "held").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out, err = self.proc.communicate()
                pytest.fail(f"the holding process did not take the lock (rc {self.proc.returncode}):\n{err}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self) -> tuple[int, str]:
        (self.signals / "release").touch()
        _, err = self.proc.communicate(timeout=300)
        return self.proc.returncode, err



class _FullDisk:
    """An open output file on a full disk: creating it worked, every write fails (ENOSPC)."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the kernel reports it: no file name

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _install_fault(monkeypatch, kind: str, where: str) -> list[str]:
    """Patch the output-file creator; returns the list of destinations the fault hit."""
    real = gio._open_temp
    hits: list[str] = []

    def applies(target: Path) -> bool:
        if os.sep in where:
            return target.is_relative_to(where)
        return fnmatch.fnmatch(target.name, where)

    def open_temp(directory, name, mode, encoding):
        target = Path(directory) / name
        if not applies(target):
            return real(directory, name, mode, encoding)
        hits.append(str(target))
        if kind in ("erofs", "eacces"):
            code = errno.EROFS if kind == "erofs" else errno.EACCES
            raise OSError(code, os.strerror(code), str(Path(directory) / f".{name}.x1y2z3.tmp"))
        f, tmp = real(directory, name, mode, encoding)
        return _FullDisk(f), tmp

    monkeypatch.setattr(gio, "_open_temp", open_temp)
    return hits


def _snapshot(*dirs: Path) -> dict[str, bytes]:
    out = {}
    for d in dirs:
        paths = [d] if d.is_file() else sorted(p for p in d.rglob("*") if p.is_file())
        for p in paths:
            if not _is_lock(p):
                out[str(p)] = p.read_bytes()
    return out


def _without_created(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    out = dict(snapshot)
    for k, v in snapshot.items():
        if k.endswith("report.json"):
            d = json.loads(v)
            d.pop("created", None)
            out[k] = json.dumps(d, sort_keys=True).encode()
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_fault_is_one_line_with_nothing_lost(world, row, monkeypatch, capsys, tmp_path):
    name, argv, code, fragment, fault = row
    fill = {k: str(v) for k, v in world.items()}
    argv = [a.format(**fill) for a in argv]
    earlier = (world["corpus"], world["data"], world["run"], world["file"])
    before = _snapshot(*earlier)
    holder = hits = None
    if fault and fault[0] == "held":
        holder = _Holder(argv, tmp_path / "signals")
        fill["pid"] = str(holder.pid)
    elif fault:
        hits = _install_fault(monkeypatch, fault[0], fault[1].format(**fill))
    fragment = fragment.format(**fill)
    try:
        rc = main(argv)
    except BaseException:  # noqa: BLE001 - a traceback is exactly what this test forbids
        pytest.fail(f"{name}: traceback instead of an error line:\n{traceback.format_exc()}")
    finally:
        if holder is not None:
            holder_rc, holder_err = holder.finish()
    err = capsys.readouterr().err
    monkeypatch.undo()
    if holder is not None:  # the first process was not disturbed: it finishes its work
        assert holder_rc == 0, (name, holder_err)
    command = f"giamic {argv[0]}: error:"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if ln.startswith(command)]
    assert rc == code, (name, rc, err)
    assert "Traceback" not in err
    assert len(error_lines) == 1 and lines[-1] == error_lines[0], (name, err)
    assert fragment in error_lines[0], (name, fragment, error_lines[0])
    if hits is not None:
        assert hits, f"{name}: the simulated fault was never reached"
    after = _snapshot(*earlier)
    if holder is not None:  # the holder reran its command: a report it rewrote has a new creation time
        before, after = _without_created(before), _without_created(after)
    assert after == before, f"{name}: an earlier output changed"
    stray = [p for p in world["root"].rglob("*.tmp")]
    assert not stray, f"{name}: temporary files left behind: {stray}"


def test_the_world_still_works_after_the_faults(world, capsys):
    """The dataset and the run the faults left alone are still usable: cv finds the unit done."""
    assert main(["cv", str(world["data"]), *CV, "--out", str(world["run"])]) == 0
    assert "done earlier" in capsys.readouterr().err


# -- a kill during each kind of atomic write, then a rerun -------------------------------------------
class _Killed(BaseException):
    """The injected kill: not an Exception, so no handler of giamic's turns it into an error line."""


PREPARE = ["prepare", "{corpus}", "--out", "{out}", "--expected-counts", "{counts}"]
EXTRACT = ["extract", "{out}", "--encoders", "minilm", "--chunk-size", "8", "--no-progress"]
TRAIN = ["cv", "{data}", *CV, "--out", "{out}"]

# (id, stage, argv, pattern of the destination, N: the N-th matching write is killed, how)
KILLS = [
    ("prepare-utterances-csv", "prepare", PREPARE, "*/utterances.csv", 1, "inject"),
    ("prepare-dataset-json", "prepare", PREPARE, "*/dataset.json", 1, "inject"),
    ("extract-meta", "extract", EXTRACT, "*/meta.json", 1, "inject"),
    ("extract-first-chunk-array", "extract", EXTRACT, "*/chunks/c-*.npy", 1, "inject"),
    ("extract-second-chunk-manifest", "extract", EXTRACT, "*/chunks/c-*.json", 2, "inject"),
    ("extract-index", "extract", EXTRACT, "*/index.json", 1, "inject"),
    ("cv-checkpoint-weights", "cv", TRAIN, "*/checkpoint/model-*.safetensors", 1, "inject"),
    ("cv-checkpoint-optimizer-sigkill", "cv", TRAIN, "*/checkpoint/optimizer-*.safetensors", 1, "sigkill"),
    ("cv-best-weights", "cv", TRAIN, "*/best.safetensors", 1, "inject"),
    ("cv-model-dir-weights", "cv", TRAIN, "*/model/model.safetensors", 1, "inject"),
    ("cv-model-dir-pipeline", "cv", TRAIN, "*/model/pipeline.json", 1, "inject"),
    ("cv-report", "cv", TRAIN, "*/report.json", 1, "inject"),
]


@pytest.fixture(scope="module")
def extract_reference(world):
    """The dataset of ``world`` without features, and an uninterrupted EXTRACT of it."""
    ref = world["root"] / "extract-reference"
    _bare_dataset(world["data"], ref)
    assert main(["-q", *[a.format(out=ref) for a in EXTRACT]]) == 0
    return ref


def _bare_dataset(data: Path, to: Path) -> None:
    to.mkdir(parents=True)
    for p in data.iterdir():
        if p.is_file() and not _is_lock(p):
            shutil.copy2(p, to / p.name)


def _outputs(root: Path) -> dict[str, bytes]:
    """Every output file under ``root`` with what may differ between two identical runs taken out:
    the report's creation time and the training log's wall-clock columns."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or _is_lock(p):
            continue
        data = p.read_bytes()
        if p.name == "report.json":
            d = json.loads(data)
            d.pop("created", None)
            data = json.dumps(d, sort_keys=True).encode()
        elif p.name == "log.csv":
            rows = list(csv.DictReader(io.StringIO(data.decode())))
            for r in rows:
                for k in ("train_time_s", "utt_per_s", "data_wait_share"):
                    r.pop(k, None)
            data = json.dumps(rows, sort_keys=True).encode()
        out[str(p.relative_to(root))] = data
    return out


def _temps(root: Path) -> list[Path]:
    from giamic.utils.io import TEMP_PATTERN

    return sorted(p for p in root.rglob("*") if TEMP_PATTERN.match(p.name))


@pytest.mark.parametrize("row", KILLS, ids=[r[0] for r in KILLS])
def test_kill_during_an_atomic_write_then_rerun_gives_the_uninterrupted_outputs(world, extract_reference, row,
                                                                                 tmp_path, monkeypatch):
    name, stage, argv, pattern, n, how = row
    out = tmp_path / "out"
    if stage == "extract":
        _bare_dataset(world["data"], out)
        reference, compare = extract_reference / "features", out / "features"
    elif stage == "prepare":
        reference, compare = world["data"], out
    else:
        reference, compare = world["run"], out
    fill = {k: str(v) for k, v in world.items()} | {"out": str(out)}
    argv = [a.format(**fill) for a in argv]

    if how == "sigkill":
        killed = subprocess.run([sys.executable, str(RUNNER), "kill", pattern, str(n), "--", "-q", *argv], env=ENV,
                                capture_output=True, text=True, timeout=600)
        assert killed.returncode == -9, (name, killed.returncode, killed.stderr)
    else:
        from giamic.utils import io as gio

        real_replace, real_unlink = os.replace, os.unlink
        seen, left = [0], []

        def replace(src, dst, *a, **k):
            if gio.TEMP_PATTERN.match(Path(src).name) and fnmatch.fnmatch(str(dst), pattern):
                seen[0] += 1
                if seen[0] == n:
                    left.append(str(src))
                    raise _Killed(str(dst))
            return real_replace(src, dst, *a, **k)

        def unlink(p, *a, **k):
            if str(p) in left:  # a killed process cleans nothing up
                return None
            return real_unlink(p, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "unlink", unlink)
        with pytest.raises(_Killed):
            main(["-q", *argv])
        monkeypatch.undo()
    stale = _temps(out)
    assert stale, f"{name}: the kill left no temporary file (it did not hit a write)"
    assert main(["-q", *argv]) == 0, name  # the rerun
    assert not _temps(out), f"{name}: temporary files left after the rerun: {_temps(out)}"
    got, want = _outputs(compare), _outputs(reference)
    if stage == "prepare":  # the reference dataset also holds the feature caches
        want = {k: v for k, v in want.items() if not k.startswith("features")}
    assert sorted(got) == sorted(want), name
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{name}: differ from an uninterrupted run: {differ}"
