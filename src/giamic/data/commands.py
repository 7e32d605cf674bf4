"""``giamic prepare``, ``giamic make-corpus`` and ``giamic render-crops`` (docs/architecture.md §1, docs/data.md).

Errors are raised, never printed: ``giamic.cli.main`` reports them as one line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from giamic.data.errors import SkipPolicy
from giamic.errors import ConfigError
from giamic.utils.io import check_output_dir, output_lock


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="read IEMOCAP (or a manifest) and write a prepared dataset directory",
        description=(
            "Read an IEMOCAP_full_release tree (IEMOCAP_ROOT) or any corpus described by a manifest "
            "(--manifest FILE) and write DATA_DIR/utterances.csv, dataset.json and folds.json."
        ),
    )
    p.add_argument("root", nargs="?", type=Path, metavar="IEMOCAP_ROOT",
                   help="the IEMOCAP_full_release folder (or a giamic make-corpus tree)")
    p.add_argument("--out", type=Path, required=True, metavar="DATA_DIR",
                   help="output folder of the prepared dataset (created; an earlier dataset there is replaced)")
    p.add_argument("--manifest", type=Path, help="CSV or JSONL manifest of another corpus (instead of IEMOCAP_ROOT)")
    p.add_argument("--folds", choices=("logo", "kfold"), default="logo",
                   help="manifest folds: leave-one-group-out (default) or grouped k-fold")
    p.add_argument("--k", type=int, default=5, help="number of folds for --folds kfold (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the grouped k-fold assignment (default 0)")
    p.add_argument("--classes", help="manifest: comma-separated class order (default: sorted labels)")
    p.add_argument("--name", help="manifest: dataset name (default: the manifest's file name)")
    p.add_argument("--partial", action="store_true",
                   help="IEMOCAP: accept a partial tree (the full-corpus count check is off)")
    p.add_argument("--expected-counts", type=Path, metavar="JSON",
                   help="IEMOCAP layout: assert these counts (a JSON with total, by_class, by_session; "
                        "default: the corpus's own expected_counts.json, written by make-corpus, "
                        "else the full release's)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad input: stop with an error (default) or skip, count and list the utterance")
    p.add_argument("--asr-transcripts", type=Path, metavar="FILE",
                   help="second text source: 'utt_id<TAB>text' lines or a CSV with utt_id,text")
    p.add_argument("--text-encoding", default="utf-8", help="encoding of the corpus text files (default utf-8)")
    p.add_argument("--no-check-media", action="store_true",
                   help="do not open wavs and videos (faster; problems then surface at extraction)")
    p.add_argument("--strict-audio", action="store_true",
                   help="a wav that is not 16 kHz mono is an error instead of being converted at load time")
    p.set_defaults(func=_prepare)

    m = subparsers.add_parser(
        "make-corpus",
        help="write the small synthetic demo corpus in IEMOCAP's layout",
        description="Write a small synthetic corpus in exactly IEMOCAP's on-disk layout (deterministic from --seed).",
    )
    m.add_argument("out", type=Path, metavar="OUT", help="output folder of the corpus (created)")
    m.add_argument("--seed", type=int, default=0, help="seed of everything generated (default 0)")
    m.add_argument("--scale", choices=("demo", "iemocap"), default="demo",
                   help="demo: the small demo corpus (default); iemocap: the full release's size (5,531 "
                        "utterances in 4 classes with its counts per session and class, 10,039 in all)")
    m.add_argument("--n-per-dialog", type=int, default=None, help="demo: 4-class utterances per dialog (default 10)")
    m.add_argument("--dialogs-per-session", type=int, default=None, choices=(2, 3, 4),
                   help="demo: dialogs per session, 2 to 4 (default 4)")
    m.add_argument("--fps", type=float, default=None, help="video frame rate (default 10; iemocap: 29.97)")
    m.add_argument("--size", default=None, help="video WIDTHxHEIGHT (default 360x240; iemocap: 180x120)")
    m.add_argument("--video-audio", action=argparse.BooleanOptionalAction, default=None,
                   help="give the dialog videos an audio track (default: on for iemocap, off for demo)")
    m.add_argument("--workers", type=int, default=1, help="iemocap: render dialogs in N processes (default 1)")
    m.set_defaults(func=_make_corpus)

    r = subparsers.add_parser(
        "render-crops",
        help="draw the speaker crop on one frame per dialog video (the speaker-side check of docs/data.md)",
        description="For the first utterance of every dialog video in DATA_DIR, write OUT/<dialog>.png: its "
                    "first frame with the crop that training uses outlined. On IEMOCAP the marker wearer must "
                    "appear on the left in every Ses0x{G} recording.",
    )
    r.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="prepared dataset directory (giamic prepare)")
    r.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder of the PNG pictures (created)")
    r.add_argument("--limit", type=int, default=None, help="at most this many dialogs")
    r.set_defaults(func=_render_crops)


def _prepare(args: argparse.Namespace) -> int:
    policy = SkipPolicy(args.on_error)
    if args.manifest is not None and args.root is not None:
        raise ConfigError("give IEMOCAP_ROOT or --manifest, not both")
    if args.manifest is None and args.root is None:
        raise ConfigError("IEMOCAP_ROOT or --manifest FILE is required")
    check_output_dir(args.out)
    with output_lock(args.out, what="output folder"):  # one process per folder; stale temporary files go
        return _prepare_locked(args, policy)


def _prepare_locked(args: argparse.Namespace, policy: SkipPolicy) -> int:
    if args.manifest is not None:
        from giamic.data.manifest import prepare_manifest

        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        res = prepare_manifest(
            args.manifest, args.out, folds=args.folds, k=args.k, seed=args.seed, classes=classes,
            policy=policy, check_media=not args.no_check_media, strict_audio=args.strict_audio,
            name=args.name, asr_transcripts=args.asr_transcripts, encoding=args.text_encoding,
        )
        print(res.summary_text())
        return 0
    from giamic.data.iemocap import load_expected_counts, prepare_iemocap

    expected = load_expected_counts(args.expected_counts) if args.expected_counts else None
    res = prepare_iemocap(
        args.root, args.out, policy=policy, partial=args.partial, expected=expected,
        check_media=not args.no_check_media,
        strict_audio=args.strict_audio, encoding=args.text_encoding, asr_transcripts=args.asr_transcripts,
    )
    print(res.summary_text())
    sessions = len({u.group for u in res.utterances})
    print(f"wrote {len(res.utterances)} utterances and {sessions if sessions >= 2 else 0} leave-one-session-out "
          f"folds to {args.out}")
    return 0


def _make_corpus(args: argparse.Namespace) -> int:
    from giamic.data.democorpus import make_corpus

    size = None
    if args.size is not None:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--size must be WIDTHxHEIGHT, got {args.size!r}") from None
        if w < 1 or h < 1:
            raise ConfigError("both sides of --size must be positive")
        size = (w, h)
    if args.scale == "iemocap" and (args.n_per_dialog is not None or args.dialogs_per_session is not None):
        raise ConfigError("--n-per-dialog and --dialogs-per-session apply to --scale demo only")
    if (args.n_per_dialog is not None and args.n_per_dialog < 1) or (args.fps is not None and args.fps <= 0):
        raise ConfigError("--n-per-dialog and --fps must be positive")
    check_output_dir(args.out)
    info = make_corpus(args.out, seed=args.seed, n_per_dialog=args.n_per_dialog or 10,
                       dialogs_per_session=args.dialogs_per_session or 4, fps=args.fps, size=size,
                       scale=args.scale, video_audio=args.video_audio, workers=max(1, args.workers))
    what = "the full-size corpus" if args.scale == "iemocap" else "the demo corpus"
    print(f"wrote {what} to {args.out}: {info.total} utterances in 4 classes ({len(info.utterances)} in all)")
    print(f"by class: {info.by_class}")
    print(f"by session: {info.by_session}")
    print(f"prepare it with: giamic prepare {args.out} --out DATA_DIR")
    return 0


def _render_crops(args: argparse.Namespace) -> int:
    from giamic.data.cropcheck import render_crops

    check_output_dir(args.out)
    paths = render_crops(args.data_dir, args.out, limit=args.limit)
    print(f"wrote {len(paths)} crop picture(s) to {args.out}")
    return 0
