"""Faults a user meets: each is one error line naming the path, a non-zero exit, and nothing lost.

One table: the command, the expected exit code, a fragment of the expected message, the fault to
simulate. A full disk and a read-only folder are simulated by patching the one place where giamic
creates output files (``giamic.utils.io._open_temp``): tests run as root, for whom ``chmod`` stops
nothing, and mounting a small file system needs privileges a test machine may not have. Every row
checks that the files written before it (corpus, prepared dataset, feature caches, a finished run)
are byte-identical afterwards.
"""
from __future__ import annotations

import errno
import fnmatch
import os
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
    return {"root": root, "corpus": root / "corpus", "counts": counts, "data": root / "data",
            "run": root / "run", "file": root / "afile", "new": root / "new"}


CV = ["--config", "demo", "--variant", "full", "--folds", "fold1", "--set", "train.max_epochs=1"]

# (id, argv, exit code, message fragment, fault): fault = None or (kind, where); kind is "erofs" or
# "eacces" (no file can be created), or "enospc" (files can be created but every write fails);
# where = a folder (faults below it) or a file-name pattern.
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
]


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
            out[str(p)] = p.read_bytes()
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_fault_is_one_line_with_nothing_lost(world, row, monkeypatch, capsys):
    name, argv, code, fragment, fault = row
    fill = {k: str(v) for k, v in world.items()}
    argv = [a.format(**fill) for a in argv]
    fragment = fragment.format(**fill)
    earlier = (world["corpus"], world["data"], world["run"], world["file"])
    before = _snapshot(*earlier)
    hits = _install_fault(monkeypatch, fault[0], fault[1].format(**fill)) if fault else None
    try:
        rc = main(argv)
    except BaseException:  # noqa: BLE001 - a traceback is exactly what this test forbids
        pytest.fail(f"{name}: traceback instead of an error line:\n{traceback.format_exc()}")
    err = capsys.readouterr().err
    monkeypatch.undo()
    command = f"giamic {argv[0]}: error:"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if ln.startswith(command)]
    assert rc == code, (name, rc, err)
    assert "Traceback" not in err
    assert len(error_lines) == 1 and lines[-1] == error_lines[0], (name, err)
    assert fragment in error_lines[0], (name, fragment, error_lines[0])
    if hits is not None:
        assert hits, f"{name}: the simulated fault was never reached"
    assert _snapshot(*earlier) == before, f"{name}: an earlier output changed"
    stray = [p for p in world["root"].rglob("*.tmp")]
    assert not stray, f"{name}: temporary files left behind: {stray}"


def test_the_world_still_works_after_the_faults(world, capsys):
    """The dataset and the run the faults left alone are still usable: cv finds the unit done."""
    assert main(["cv", str(world["data"]), *CV, "--out", str(world["run"])]) == 0
    assert "done earlier" in capsys.readouterr().err
