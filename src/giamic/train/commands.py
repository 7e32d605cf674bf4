"""CLI of the training stage: ``giamic train`` and ``giamic cv``.

Every command takes the run configuration as a preset or file (``--preset``/``--config``, default
``paper``; ``--preset cpu`` is the CPU path of the README's step-by-step section)
plus ``--set section.key=value`` overrides (``giamic.train.config``); ``--print-config`` shows the
resolved configuration and exits. Several GPUs: ``torchrun --nproc_per_node N -m giamic cv ...``.
Errors are raised, never printed: ``giamic.cli.main`` reports them as one line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from giamic.errors import ConfigError
from giamic.utils.io import check_output_dir


def _config_args(p: argparse.ArgumentParser, default: str = "paper") -> None:
    p.add_argument("--preset", "--config", dest="config", default=default, metavar="PRESET|FILE",
                   help=f"a preset (paper: the paper's recipe, GPU; cpu: the CPU path with the demo's encoders and "
                        f"recipe; demo; tiny) or a YAML/JSON file (default {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def register(subparsers) -> None:
    cv = subparsers.add_parser(
        "cv", help="leave-one-group-out cross-validation of one variant over seeds: report.json/.md, plots",
        description="Train and test every fold (and seed) of DATA_DIR: per fold a model directory, test "
                    "predictions and a log; then report.json, report.md, confusion.png and curves.png in --out. "
                    "Finished folds are skipped, unfinished ones resumed.")
    cv.add_argument("data_dir", metavar="DATA_DIR", help="prepared dataset with extracted features")
    cv.add_argument("--out", required=True, type=Path,
                    help="run directory (created; finished folds in it are kept and skipped)")
    cv.add_argument("--variant", help="a Table 2 row: full, wo_msr, wo_mir, wo_mic, baseline, V, S, T, VS, ST, VT, "
                                      "baseline_VS, baseline_ST, baseline_VT, asr_text")
    cv.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's, paper 0 1 2)")
    cv.add_argument("--folds", nargs="+", help="only these folds (names or test groups)")
    cv.add_argument("--text", choices=("gt", "asr"), help="transcript source (asr: the transcript_asr column)")
    _config_args(cv)
    cv.set_defaults(func=_cv)

    tr = subparsers.add_parser(
        "train", help="train one fold (one seed) and write its model directory",
        description="One (seed, fold) unit of `giamic cv`: OUT/seed<S>/<fold>/model is the trained model "
                    "directory that `giamic predict --model` loads.")
    tr.add_argument("data_dir", metavar="DATA_DIR", help="prepared dataset with extracted features")
    tr.add_argument("--out", required=True, type=Path,
                    help="run directory (created); the model directory is OUT/seed<S>/<fold>/model")
    tr.add_argument("--fold", default="fold1", help="fold name or test group (default fold1)")
    tr.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    tr.add_argument("--variant", help="a Table 2 row, as for `giamic cv` (default: the config's, full)")
    tr.add_argument("--text", choices=("gt", "asr"), help="transcript source (asr: the transcript_asr column)")
    _config_args(tr)
    tr.set_defaults(func=_train)


def _is_main() -> bool:
    """Rank 0 (or a plain run): under torchrun only one process prints the summary."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _load(args, extra: list[str]):
    import yaml

    from giamic.train.config import format_config, load_config

    try:
        cfg = load_config(args.config, extra + list(args.overrides), data_dir=str(Path(args.data_dir).resolve()))
    except ValueError as e:  # the reader's message names the preset, file or key
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {' '.join(str(e).split())}", args.config) from None
    if args.print_config:
        print(format_config(cfg), end="")
        return None
    return cfg


def _cv_overrides(args) -> list[str]:
    extra = []
    if args.variant:
        extra.append(f"model.variant={args.variant}")
    if args.text:
        extra.append(f"data.text_source={args.text}")
    return extra


def _run_cv(args, extra: list[str]):
    """Load the configuration and run cross-validation; the report, or None under --print-config."""
    cfg = _load(args, extra)
    if cfg is None:  # --print-config
        return None
    check_output_dir(args.out)
    from giamic.train.distributed import cleanup
    from giamic.train.cv import run_cv

    try:
        return run_cv(cfg, args.out)
    finally:
        cleanup()


def _cv(args) -> int:
    extra = _cv_overrides(args)
    if args.seeds:
        extra.append("train.seeds=" + ",".join(str(s) for s in args.seeds))
    if args.folds:
        extra.append("train.folds=" + ",".join(args.folds))
    report = _run_cv(args, extra)
    if report is not None and _is_main():
        _print_summary(report, args.out)
    return 0


def _train(args) -> int:
    extra = _cv_overrides(args) + [f"train.seeds={args.seed}", f"train.folds={args.fold}"]
    report = _run_cv(args, extra)
    if report is None or not _is_main():
        return 0
    f = report["folds"][0]
    print(f"{f['fold']} (test {f['test_group']}, n={f['n']}): WA {100 * f['wa']:.1f}  UA {100 * f['ua']:.1f}  "
          f"macro-F1 {100 * f['macro_f1']:.1f}")
    print(f"model directory: {args.out / f['model_dir']}")
    return 0


def _print_summary(report: dict, out: Path) -> None:
    from giamic.train.metrics import pct

    s = report.get("summary") or {}
    if s:
        fo, po = s["folds"], s["pooled"]
        if fo["wa"]["n"] < 2:  # one fold run has no spread
            print(f"{report['title']}: WA {pct(fo['wa']['mean'])}  UA {pct(fo['ua']['mean'])} (1 fold run)")
        else:
            print(f"{report['title']}: WA {pct(fo['wa']['mean'])} ± {pct(fo['wa']['std'])}  UA {pct(fo['ua']['mean'])} "
                  f"± {pct(fo['ua']['std'])} (mean ± std over {fo['wa']['n']} fold runs); pooled WA {pct(po['wa'])} "
                  f"UA {pct(po['ua'])}")
    print(f"report: {out / 'report.md'}  plots: {out / 'confusion.png'}, {out / 'curves.png'}")
