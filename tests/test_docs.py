"""The documentation as tests: every command block of README.md and docs/*.md runs, or says why not.

A command block is a fenced block tagged ``bash``/``sh``/``shell``/``console``, or an untagged one
whose first line starts like a command (``giamic ...``, ``torchrun``, ``python``, ``pip``, ``hf``).
Each one either runs here or carries, on the line before its fence, the marker

    <!-- docs-test: skip (the reason, e.g. needs IEMOCAP) -->

and is reported as skipped with that reason (``pytest -ra`` lists them). The blocks that run are
those a user runs on a generated corpus; the blocks of one file run in order, in one temporary
folder, so a later block uses what an earlier one made. Their commands run through the CLI's own
entry point (``giamic.cli.main``), exactly as written, with a few options appended only to keep
this test short: a smaller generated corpus, fewer epochs and one fold (:data:`FAST`). A command
that exits non-zero fails the test with its output.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
COMMAND_TAGS = {"bash", "sh", "shell", "console"}
COMMAND_START = re.compile(r"^(giamic |torchrun |python|\.venv/|pip |hf )")
OUTPUT_LINE = re.compile(r"^giamic [\w-]+: ")  # "giamic prepare: error: ..." is output, not a command

#: Options appended to a documented command (when it does not set them itself) so that the whole
#: test stays short: a corpus of 40 utterances instead of 200, two epochs, the first fold only.
FAST: dict[str, list[tuple[str, str]]] = {
    "make-corpus": [("--n-per-dialog", "4"), ("--dialogs-per-session", "2")],
    "cv": [("--set", "train.max_epochs=2"), ("--folds", "fold1")],
    "train": [("--set", "train.max_epochs=2")],
}


def with_fast_options(argv: list[str]) -> list[str]:
    """``argv`` with the :data:`FAST` options of its command that it does not set itself."""
    extra: list[str] = []
    for opt, value in FAST.get(argv[0] if argv else "", []):
        if opt == "--set":
            given = any(a.startswith(value.split("=")[0] + "=") for a in argv)
        else:
            given = opt in argv
        if not given:
            extra += [opt, value]
    return argv + extra


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    tag: str
    text: str
    skip: str | None  # the reason given by the marker, or None: the block runs

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT) if self.file.is_relative_to(ROOT) else self.file}:{self.line}"


def command_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The command blocks of one markdown file, in order, with their skip reasons."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(`{3,})\s*([\w-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, tag, start = m.group(1), m.group(2).lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        body = lines[start + 1:j]
        first = next((ln for ln in body if ln.strip()), "")
        is_command = tag in COMMAND_TAGS or (not tag and COMMAND_START.match(first) and not OUTPUT_LINE.match(first))
        if is_command:
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            mark = SKIP_MARK.search(lines[k]) if k >= 0 else None
            blocks.append(Block(path, start + 1, tag, "\n".join(body), mark.group("reason") if mark else None))
        i = j + 1
    return blocks


def commands(block: Block) -> list[list[str]]:
    """The commands of a block: ``\\`` continuations joined, comments dropped, ``&&`` split."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    out = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        cmd: list[str] = []
        for t in tokens + ["&&"]:
            if t == "&&":
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(t)
    return out


def run_block(block: Block, capsys) -> None:
    """Run every command of ``block`` in the current folder; fail with the command and its output."""
    from giamic.cli import main

    for cmd in commands(block):
        assert cmd[0] == "giamic", (
            f"{block.where}: `{shlex.join(cmd)}` is not a giamic command; this test runs giamic commands only, "
            f"so mark the block with <!-- docs-test: skip (reason) -->")
        argv = with_fast_options(cmd[1:])
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: an unknown option or a missing argument
            rc = e.code
        out = capsys.readouterr()
        assert rc == 0, (f"{block.where}: `{shlex.join(cmd)}` exited {rc}\n--- stdout\n{out.out[-3000:]}"
                         f"\n--- stderr\n{out.err[-3000:]}")


ALL_BLOCKS = [b for f in DOC_FILES for b in command_blocks(f)]
RUN_FILES = sorted({b.file for b in ALL_BLOCKS if b.skip is None})


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: p.name)
def test_documented_commands_run(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for block in command_blocks(path):
        if block.skip is None:
            run_block(block, capsys)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.skip], ids=lambda b: b.where)
def test_documented_commands_not_run_here(block):
    pytest.skip(f"{block.where}: {block.skip}")


def test_the_step_by_step_cpu_path_is_among_the_blocks_run():
    run = [b for b in ALL_BLOCKS if b.skip is None]
    readme = "\n".join(b.text for b in run if b.file.name == "README.md")
    for step in ("giamic make-corpus", "giamic prepare", "giamic extract", "--preset cpu", "giamic cv", "giamic predict"):
        assert step in readme, step
    assert len(ALL_BLOCKS) > len(run) > 0


def test_a_broken_documented_command_fails_the_test(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("Text.\n\n<!-- docs-test: skip (needs IEMOCAP) -->\n```bash\ngiamic prepare /IEMOCAP --out d\n```\n\n"
                   "```\ngiamic prepare: error: this is output\n```\n\n"
                   "```bash\ngiamic make-corpus c --no-such-option  # a typo in the docs\n```\n", encoding="utf-8")
    blocks = command_blocks(doc)
    assert [(b.line, b.skip) for b in blocks] == [(4, "needs IEMOCAP"), (12, None)]
    assert commands(blocks[1]) == [["giamic", "make-corpus", "c", "--no-such-option"]]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match=r"doc.md:12: `giamic make-corpus c --no-such-option` exited 2"):
        run_block(blocks[1], capsys)
    other = command_blocks(doc, "```sh\npip install giamic\n```\n")
    with pytest.raises(AssertionError, match="not a giamic command"):
        run_block(other[0], capsys)


def test_fast_options_are_appended_only_when_the_command_does_not_set_them():
    assert with_fast_options(["cv", "d", "--out", "r"]) == ["cv", "d", "--out", "r", "--set", "train.max_epochs=2",
                                                             "--folds", "fold1"]
    assert with_fast_options(["cv", "d", "--set", "train.max_epochs=9", "--folds", "fold2"]) == [
        "cv", "d", "--set", "train.max_epochs=9", "--folds", "fold2"]
    assert with_fast_options(["predict", "x"]) == ["predict", "x"]


def test_continuations_and_chains_are_split_into_commands(tmp_path):
    b = Block(tmp_path / "x.md", 1, "bash", 'giamic a --x "one two" \\\n    --y 1   # note\ngiamic b && giamic c', None)
    assert commands(b) == [["giamic", "a", "--x", "one two", "--y", "1"], ["giamic", "b"], ["giamic", "c"]]
