"""The ``giamic`` command line: a thin dispatcher and the one place where errors are reported.

Each stage of the pipeline owns its subcommands in a ``commands.py`` module beside its code
(data → features → train/evaluate → experiments → inference); this file collects them, sets up
the log (``-v``/``-q``, :func:`giamic.log.setup`) and turns every error a user can meet into one
line on stderr::

    giamic <command>: error: <path>: <what is wrong and what to do>

A :class:`giamic.errors.GiamicError` exits with its ``exit_code``; an ``OSError`` (no space left,
permission denied, read-only file system, a file where a folder must be) is translated by
:func:`giamic.errors.from_os_error` and exits 1; Ctrl-C exits 130. Any other exception is a bug
in giamic and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from giamic.errors import EXIT_INTERRUPTED, EXIT_USAGE, GiamicError, from_os_error
from giamic.utils.memory import keep_freed_memory

# Order follows the pipeline: data -> features -> train/evaluate -> inference -> experiments.
COMMAND_MODULES = (
    "giamic.data.commands",  # prepare, make-corpus, render-crops
    "giamic.features.commands",  # extract, import-features
    "giamic.train.commands",  # train, cv
    "giamic.inference.commands",  # predict, transcribe
    "giamic.inference.analyze_commands",  # analyze, serve
    "giamic.experiments.commands",  # demo, reproduce, tsne
)

EPILOG = """\
output:
  Results (tables, JSON) go to stdout; progress and notes go to stderr (-q: warnings only,
  -v: debug detail). Progress bars are drawn only when stderr is a terminal.

exit codes:
  0    success
  1    an error: one line on stderr, "giamic <command>: error: <path>: <what is wrong>"
       (a bad file, a missing model, no space left, a read-only folder, ...);
       predict and transcribe: some inputs failed, the others' results are printed
  2    bad usage: an unknown option or an invalid setting;
       predict and transcribe: nothing could run (bad model directory, unknown ASR model)
  130  interrupted (Ctrl-C); finished work is kept and a rerun resumes
  A traceback is a bug in giamic: please report it with the command that caused it.

Run "giamic COMMAND --help" for the options of one command.
"""


def _add_verbosity(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("-v", "--verbose", action="count", default=default,
                   help="more detail on stderr (-v: debug messages)")
    p.add_argument("-q", "--quiet", action="count", default=default,
                   help="less on stderr: warnings and errors only")


def _command_modules():
    for name in COMMAND_MODULES:
        try:
            yield importlib.import_module(name)
        except ModuleNotFoundError as e:  # a stage not installed in this build: its commands are absent
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                continue
            raise


def build_parser() -> argparse.ArgumentParser:
    from giamic import __version__

    parser = argparse.ArgumentParser(
        prog="giamic",
        description="GIA-MIC multimodal emotion recognition (video + speech + text).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"giamic {__version__}",
                        help="print the version of giamic and exit")
    _add_verbosity(parser, 0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="one step of the pipeline:")
    for module in _command_modules():
        module.register(sub)
    for p in sub.choices.values():  # -v/-q are accepted after the command too
        _add_verbosity(p, argparse.SUPPRESS)
    return parser


def error_line(command: str | None, err: GiamicError) -> str:
    """The one line printed for ``err``: ``giamic <command>: error: <message>``."""
    prog = f"giamic {command}" if command else "giamic"
    return f"{prog}: error: {err}"


def main(argv: list[str] | None = None) -> int:
    from giamic import log

    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(int(getattr(args, "verbose", 0) or 0) - int(getattr(args, "quiet", 0) or 0))
    keep_freed_memory()  # giamic.utils.memory: large tensors reuse freed memory
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    command = getattr(args, "command", None)
    try:
        return int(args.func(args) or 0)
    except GiamicError as e:
        print(error_line(command, e), file=sys.stderr)
        return e.exit_code
    except OSError as e:  # disk full, permission denied, read-only file system, a file in the way
        err = from_os_error(e)
        print(error_line(command, err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"giamic {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
