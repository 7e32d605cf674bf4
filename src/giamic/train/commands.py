"""CLI of the training stage: ``giamic train``, ``cv``, ``demo``, ``reproduce`` and ``tsne``.

Every command takes the run configuration as a preset or file (``--config``, default ``paper``)
plus ``--set section.key=value`` overrides (``giamic.train.config``); ``--print-config`` shows the
resolved configuration and exits. Several GPUs: ``torchrun --nproc_per_node N -m giamic cv ...``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _config_args(p: argparse.ArgumentParser, default: str = "paper") -> None:
    p.add_argument("--config", default=default, metavar="PRESET|FILE",
                   help=f"a preset (paper, demo, tiny) or a YAML/JSON file (default {default})")
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
    cv.add_argument("--out", required=True, type=Path, help="run directory")
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
    tr.add_argument("data_dir", metavar="DATA_DIR")
    tr.add_argument("--out", required=True, type=Path)
    tr.add_argument("--fold", default="fold1", help="fold name or test group (default fold1)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--variant")
    tr.add_argument("--text", choices=("gt", "asr"))
    _config_args(tr)
    tr.set_defaults(func=_train)

    de = subparsers.add_parser(
        "demo", help="the whole pipeline on a generated corpus with CPU-sized encoders (minutes, no GPU)",
        description="Builds the demo corpus, extracts features with untrained tiny encoders (MiniLM for text), "
                    "runs leave-one-session-out for the full model and the Baseline (and, without --quick, the "
                    "unimodal rows and the γ = 0 model for the t-SNE figure) and prints the table. The corpus is "
                    "generated and the encoders untrained: the paper's numbers need `giamic reproduce`.")
    de.add_argument("--out", type=Path, default=Path("giamic-demo"), help="output folder (default ./giamic-demo)")
    de.add_argument("--quick", action="store_true", help="full model and Baseline only (about a minute)")
    de.add_argument("--seed", type=int, default=0, help="corpus seed")
    de.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a setting of the demo preset")
    de.set_defaults(func=_demo)

    rp = subparsers.add_parser(
        "reproduce", help="every row of the paper's Tables 1-2 and Figure 2 on IEMOCAP (GPU; resumable)",
        description="prepare, transcribe (ASR row), extract, then `cv` for every row; writes "
                    "OUT/paper_table.md with the paper's numbers beside ours and OUT/tsne.png. See docs/reproducing.md.")
    rp.add_argument("iemocap_root", type=Path, metavar="IEMOCAP_ROOT")
    rp.add_argument("--out", required=True, type=Path)
    rp.add_argument("--rows", nargs="+", help="only these rows (default: all); e.g. full wo_mic")
    rp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rp.add_argument("--asr-model", default="large-v2",
                    help="Whisper model for the ASR row (a name or a local CTranslate2 directory; default large-v2)")
    rp.add_argument("--clip-path", help="local directory of openai/clip-vit-large-patch14")
    rp.add_argument("--wavlm-path", help="local directory of microsoft/wavlm-large")
    rp.add_argument("--roberta-path", help="local directory of FacebookAI/roberta-base")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--dry-run", action="store_true", help="print the command of every row and exit")
    rp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    rp.set_defaults(func=_reproduce)

    ts = subparsers.add_parser(
        "tsne", help="the paper's Figure 2 from a γ = 0 and a γ ≠ 0 cross-validation run",
        description="t-SNE of the per-modality invariant representations of one fold's test utterances.")
    ts.add_argument("--gamma0", required=True, type=Path, help="run directory of the γ = 0 model (variant wo_mic)")
    ts.add_argument("--gamma", required=True, type=Path, help="run directory of the γ ≠ 0 model (variant full)")
    ts.add_argument("--out", required=True, type=Path, help="PNG file")
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--fold", help="fold name (default: the first finished)")
    ts.set_defaults(func=_tsne)


def _is_main() -> bool:
    """Rank 0 (or a plain run): under torchrun only one process prints the summary."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _err(cmd: str, e: BaseException) -> int:
    print(f"giamic {cmd}: error: {e}", file=sys.stderr)
    return 1


def _known_errors() -> tuple[type[BaseException], ...]:
    from giamic.data.errors import DataError, MediaError
    from giamic.errors import GiamicError
    from giamic.features import EncoderUnavailableError, FeatureStoreError
    from giamic.train.recipe import UnitConfigChanged
    from giamic.train.modeldir import ModelDirError
    from giamic.train.splits import LeakageError

    return (ValueError, FileNotFoundError, DataError, MediaError, FeatureStoreError, EncoderUnavailableError,
            UnitConfigChanged, ModelDirError, LeakageError, GiamicError)


def _load(args, extra: list[str]):
    from giamic.train.config import format_config, load_config

    cfg = load_config(args.config, extra + list(args.overrides), data_dir=str(Path(args.data_dir).resolve()))
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


def _run_cv(args, extra: list[str], command: str):
    """Load the configuration and run cross-validation; ``(exit code, report or None)``."""
    try:
        cfg = _load(args, extra)
        if cfg is None:  # --print-config
            return 0, None
        from giamic.train.distributed import cleanup
        from giamic.train.run import run_cv

        try:
            return 0, run_cv(cfg, args.out)
        finally:
            cleanup()
    except _known_errors() as e:
        return _err(command, e), None


def _cv(args) -> int:
    extra = _cv_overrides(args)
    if args.seeds:
        extra.append("train.seeds=" + ",".join(str(s) for s in args.seeds))
    if args.folds:
        extra.append("train.folds=" + ",".join(args.folds))
    rc, report = _run_cv(args, extra, "cv")
    if report is not None and _is_main():
        _print_summary(report, args.out)
    return rc


def _train(args) -> int:
    extra = _cv_overrides(args) + [f"train.seeds={args.seed}", f"train.folds={args.fold}"]
    rc, report = _run_cv(args, extra, "train")
    if report is None:
        return rc
    if not _is_main():
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
        print(f"{report['title']}: WA {pct(fo['wa']['mean'])} ± {pct(fo['wa']['std'])}  UA {pct(fo['ua']['mean'])} ± "
              f"{pct(fo['ua']['std'])} (mean ± std over {fo['wa']['n']} fold runs); pooled WA {pct(po['wa'])} "
              f"UA {pct(po['ua'])}")
    print(f"report: {out / 'report.md'}  plots: {out / 'confusion.png'}, {out / 'curves.png'}")


def _demo(args) -> int:
    from giamic.train.demo import run_demo

    try:
        run_demo(args.out, quick=args.quick, seed=args.seed, extra=list(args.overrides))
    except _known_errors() as e:
        return _err("demo", e)
    print((args.out / "demo.md").read_text(encoding="utf-8"))
    return 0


def _reproduce(args) -> int:
    from giamic.train.reproduce import ALL_ROWS, row_command, run_reproduce

    rows = tuple(args.rows) if args.rows else ALL_ROWS
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        print(f"giamic reproduce: unknown row(s) {unknown}; rows: {', '.join(ALL_ROWS)}", file=sys.stderr)
        return 2
    if args.dry_run:
        seeds = " ".join(map(str, args.seeds))
        for r in rows:
            print(row_command(r, str(args.out / "data"), str(args.out / "runs"), seeds))
        return 0
    try:
        run_reproduce(args.iemocap_root, args.out, rows=rows, seeds=tuple(args.seeds), asr_model=args.asr_model,
                      device=args.device, extra=list(args.overrides),
                      encoder_paths={"clip": args.clip_path, "wavlm": args.wavlm_path, "roberta": args.roberta_path})
    except _known_errors() as e:
        return _err("reproduce", e)
    print((args.out / "paper_table.md").read_text(encoding="utf-8"))
    return 0


def _tsne(args) -> int:
    from giamic.train.tsne import tsne_from_runs

    try:
        path, overlap = tsne_from_runs(args.gamma0, args.gamma, args.out, seed=args.seed, fold=args.fold)
    except _known_errors() as e:
        return _err("tsne", e)
    print(f"{path}: modality overlap (share of 10 nearest neighbours from another modality) "
          f"γ = 0: {overlap['gamma0']:.3f}, γ ≠ 0: {overlap['gamma']:.3f}")
    return 0
