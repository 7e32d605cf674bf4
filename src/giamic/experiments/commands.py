"""CLI of the experiments: ``giamic demo``, ``giamic reproduce`` and ``giamic tsne``."""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    de = subparsers.add_parser(
        "demo", help="the whole pipeline on a generated corpus with CPU-sized encoders (minutes, no GPU)",
        description="Builds the demo corpus, extracts features with untrained tiny encoders (MiniLM for text), "
                    "runs leave-one-session-out for the full model and the Baseline (and, without --quick, the "
                    "unimodal rows and the γ = 0 model for the t-SNE figure) and prints the table. The corpus is "
                    "generated and the encoders untrained: the paper's numbers need `giamic reproduce`. The "
                    "experiment is giamic/experiments/demo.yaml.")
    de.add_argument("--out", type=Path, default=Path("giamic-demo"),
                    help="output folder: corpus, data, runs/<row>, demo.md, demo.json (default ./giamic-demo)")
    de.add_argument("--quick", action="store_true", help="full model and Baseline only (about a minute)")
    de.add_argument("--seed", type=int, default=0, help="seed of the generated corpus (default 0)")
    de.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a training setting of every row, e.g. --set train.max_epochs=4 (repeatable)")
    de.set_defaults(func=_demo)

    rp = subparsers.add_parser(
        "reproduce", help="every row of the paper's Tables 1-2 and Figure 2 on IEMOCAP (GPU; resumable)",
        description="prepare, transcribe (ASR row), extract, then `cv` for every row; writes "
                    "OUT/paper_table.md with the paper's numbers beside ours and OUT/tsne.png. The experiment is "
                    "giamic/experiments/paper.yaml. See docs/reproducing.md.")
    rp.add_argument("iemocap_root", type=Path, metavar="IEMOCAP_ROOT", help="the IEMOCAP_full_release folder")
    rp.add_argument("--out", required=True, type=Path, help="output folder: data, runs/<row>, paper_table.md, tsne.png")
    rp.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows (default: all); e.g. full wo_mic")
    rp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                    help="training seeds of every row (default 0 1 2)")
    rp.add_argument("--asr-model", default="large-v2",
                    help="Whisper model for the ASR row (a name or a local CTranslate2 directory; default large-v2)")
    rp.add_argument("--clip-path", metavar="DIR", help="local directory of openai/clip-vit-large-patch14")
    rp.add_argument("--wavlm-path", metavar="DIR", help="local directory of microsoft/wavlm-large")
    rp.add_argument("--roberta-path", metavar="DIR", help="local directory of FacebookAI/roberta-base")
    rp.add_argument("--device", default="auto",
                    help="device of extraction and transcription: auto (a GPU if there is one), cpu, cuda, cuda:N")
    rp.add_argument("--preset", default="paper", metavar="PRESET",
                    help="training recipe and encoders of every row: paper (default; GPU) or cpu (the demo's "
                         "CPU-sized encoders and recipe; pair it with --asr-model tiny.en)")
    rp.add_argument("--dry-run", action="store_true", help="print the `giamic cv` command of every row and exit")
    rp.add_argument("--smoke", action="store_true",
                    help="rehearsal in minutes: every row on a few utterances per fold (OUT/data-smoke), one seed, "
                         "two epochs; without a GPU with CPU-sized encoders and, unless --asr-model names another model, "
                         "the ground-truth text for the ASR row (paper.yaml's smoke section); the same outputs; exit 1 "
                         "if any row fails. Use another --out than the full run's")
    rp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a training setting of every row, e.g. --set train.micro_batch_size=8 (repeatable)")
    rp.set_defaults(func=_reproduce)

    ts = subparsers.add_parser(
        "tsne", help="the paper's Figure 2 from a γ = 0 and a γ ≠ 0 cross-validation run",
        description="t-SNE of the per-modality invariant representations of one fold's test utterances.")
    ts.add_argument("--gamma0", required=True, type=Path, metavar="RUN_DIR",
                    help="run directory of the γ = 0 model (variant wo_mic)")
    ts.add_argument("--gamma", required=True, type=Path, metavar="RUN_DIR",
                    help="run directory of the γ ≠ 0 model (variant full)")
    ts.add_argument("--out", required=True, type=Path, help="PNG file to write")
    ts.add_argument("--seed", type=int, default=0,
                    help="training seed of the units to compare, also the t-SNE seed (default 0)")
    ts.add_argument("--fold", help="fold name (default: the first finished)")
    ts.set_defaults(func=_tsne)


def _demo(args) -> int:
    from giamic.experiments.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, extra=list(args.overrides))
    print((args.out / "demo.md").read_text(encoding="utf-8"))
    return 0


def _reproduce(args) -> int:
    from giamic.experiments.reproduce import paper_experiment, row_command, run_reproduce

    exp = paper_experiment(args.rows, args.seeds, args.asr_model, preset=args.preset)  # checks the row names
    if args.dry_run:
        seeds = " ".join(map(str, args.seeds))
        for r in exp.rows:
            print(row_command(r.name, str(args.out / "data"), str(args.out / "runs"), seeds, preset=args.preset))
        return 0
    res = run_reproduce(args.iemocap_root, args.out, rows=[r.name for r in exp.rows], seeds=args.seeds,
                        asr_model=args.asr_model, device=args.device, extra=list(args.overrides), preset=args.preset,
                        smoke=args.smoke,
                        encoder_paths={"video": args.clip_path, "speech": args.wavlm_path, "text": args.roberta_path})
    print((args.out / "paper_table.md").read_text(encoding="utf-8"))
    if res["failures"]:
        from giamic.errors import TrainError

        raise TrainError(f"{len(res['failures'])} step(s) failed: {', '.join(res['failures'])} (see the log and "
                         f"the table)", args.out / "paper_table.md")
    if args.smoke:
        print(f"smoke run: every row passed in {res['seconds']:.0f} s")
    return 0


def _tsne(args) -> int:
    from giamic.experiments.tsne import tsne_from_runs

    path, overlap = tsne_from_runs(args.gamma0, args.gamma, args.out, seed=args.seed, fold=args.fold)
    print(f"{path}: modality overlap (share of 10 nearest neighbours from another modality) "
          f"γ = 0: {overlap['gamma0']:.3f}, γ ≠ 0: {overlap['gamma']:.3f}")
    return 0
