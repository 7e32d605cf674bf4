"""The ``giamic`` command line: a thin dispatcher.

Each stage of the pipeline owns its subcommands in a ``commands.py`` module beside its code
(data → features → train/evaluate → inference); this file only collects them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Order follows the pipeline: data -> features -> train/evaluate -> inference.
COMMAND_MODULES = (
    "giamic.data.commands",  # prepare, make-corpus
    "giamic.features.commands",  # extract
    "giamic.train.commands",  # train, cv, demo, reproduce
    "giamic.inference.commands",  # predict, transcribe
    "giamic.inference.analyze_commands",  # analyze, serve
)


def build_parser() -> argparse.ArgumentParser:
    from giamic import __version__

    parser = argparse.ArgumentParser(
        prog="giamic",
        description="GIA-MIC multimodal emotion recognition (video + speech + text).",
    )
    parser.add_argument("--version", action="version", version=f"giamic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a stage not installed in this build: its commands are absent
            if e.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The commands print their own progress; transformers' per-load weight bars would interleave.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
