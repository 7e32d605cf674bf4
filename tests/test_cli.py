"""The command line as a whole: every option documented, one error format, exit codes, -v/-q."""
from __future__ import annotations

import argparse
import logging
import sys
import types

import pytest

from giamic import cli
from giamic.errors import ConfigError, GiamicError


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("giamic",)):
    """``(command path, parser)`` for the top-level parser and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_of_every_command_has_help():
    parser = cli.build_parser()
    commands = [p for p, _ in _parsers(parser)]
    assert len(commands) >= 8 and ("giamic", "cv") in commands and ("giamic", "predict") in commands
    missing = []
    for path, p in _parsers(parser):
        for action in p._actions:
            text = action.help
            if text is None or text == argparse.SUPPRESS or not str(text).strip():
                missing.append(f"{' '.join(path)}: {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "options without help text:\n" + "\n".join(missing)


def test_help_lists_every_option_with_its_text():
    for path, p in _parsers(cli.build_parser()):
        text = " ".join(p.format_help().split())  # argparse wraps lines
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
            assert name in text, (path, name)
            first_words = " ".join(str(action.help).split()[:3]).replace("%%", "%")
            if "%(" not in first_words:
                assert first_words in text, (path, name, first_words)


def test_top_level_help_documents_exit_codes_and_logging(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for fragment in ("exit codes:", "130", "giamic <command>: error:", "-v, --verbose", "-q, --quiet", "traceback"):
        assert fragment.lower() in out.lower(), fragment


@pytest.fixture
def fake_commands(monkeypatch):
    """A ``boom`` command whose behaviour each test sets (``raise`` an exception or log lines)."""
    behaviour: dict = {}

    def register(sub):
        p = sub.add_parser("boom", help="test command")
        p.add_argument("--x", help="unused")
        p.set_defaults(func=lambda args: behaviour["run"]())

    module = types.ModuleType("giamic_fake_commands")
    module.register = register
    monkeypatch.setitem(sys.modules, "giamic_fake_commands", module)
    monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("giamic_fake_commands",))
    return behaviour


def _raise(e):
    def run():
        raise e
    return run


@pytest.mark.parametrize("exc, code, line", [
    (GiamicError("bad thing", "some/file.csv"), 1, "giamic boom: error: some/file.csv: bad thing"),
    (ConfigError("unknown key train.nope"), 2, "giamic boom: error: unknown key train.nope"),
    (OSError(28, "No space left on device", "/out/report.json"), 1,
     "giamic boom: error: /out/report.json: no space left on device"),
    (PermissionError(13, "Permission denied", "/out"), 1, "giamic boom: error: /out: permission denied"),
    (OSError(30, "Read-only file system", "/mnt/ro/x"), 1, "giamic boom: error: /mnt/ro/x: read-only file system"),
    (FileNotFoundError("run dir/seed0 holds no finished unit"), 1, "giamic boom: error: run dir/seed0 holds no finished unit"),
    (KeyboardInterrupt(), 130, "giamic boom: interrupted"),
])
def test_one_line_per_error_and_its_exit_code(fake_commands, capsys, exc, code, line):
    fake_commands["run"] = _raise(exc)
    assert cli.main(["boom"]) == code
    err = capsys.readouterr().err
    assert err.splitlines() == [line]


def test_a_bug_keeps_its_traceback(fake_commands):
    fake_commands["run"] = _raise(ValueError("internal inconsistency"))
    with pytest.raises(ValueError, match="internal inconsistency"):
        cli.main(["boom"])


def test_verbosity_options_before_and_after_the_command(fake_commands, capsys):
    log = logging.getLogger("giamic.fake")

    def run():
        log.debug("debug line")
        log.info("info line")
        log.warning("warning line")
        print("result")
        return 0

    fake_commands["run"] = run
    seen = {}
    for argv in (["boom"], ["-q", "boom"], ["boom", "--quiet"], ["-v", "boom"], ["boom", "-v"]):
        assert cli.main(argv) == 0
        out, err = capsys.readouterr()
        assert out == "result\n"
        seen[" ".join(argv)] = err.splitlines()
    assert seen["boom"] == ["info line", "warning: warning line"]
    assert seen["-q boom"] == seen["boom --quiet"] == ["warning: warning line"]
    assert seen["-v boom"] == seen["boom -v"] == ["debug line", "info line", "warning: warning line"]
    cli.main(["boom"])  # leave the default level for the next tests
    capsys.readouterr()
