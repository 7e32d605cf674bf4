"""The README's quick start and CI must agree (CI runs the README's test command)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README has no Quick start bash block"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _normalise(cmd: str) -> str:
    # CI may run pip quietly; otherwise the command must be the same.
    return re.sub(r"\s+", " ", cmd.replace(" -q", "")).strip()


def test_quick_start_has_two_commands_setup_then_run():
    cmds = _quick_start_commands()
    assert len(cmds) == 2
    assert "giamic demo" in cmds[0] and "pytest" in cmds[1]
    for c in cmds:
        assert c.startswith("python3 -m venv .venv && "), c


def test_ci_runs_the_readme_test_command():
    test_cmd = _normalise(_quick_start_commands()[1])
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [_normalise(ln) for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert test_cmd in ci_lines, f"CI does not run the README's test command: {test_cmd!r}"


def test_cli_exposes_every_pipeline_command():
    from giamic.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    expected = {"prepare", "make-corpus", "extract", "import-features", "train", "cv", "demo", "reproduce", "predict", "transcribe", "render-crops"}
    assert expected <= set(sub.choices), sorted(expected - set(sub.choices))
