"""CLI of the features stage: ``giamic extract`` and ``giamic import-features`` (see docs/features.md)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from giamic.modalities import MODALITIES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="run frozen encoders once over a prepared dataset into the feature cache",
        description="Run each frozen encoder once over DATA_DIR and store per-utterance fp16 features in "
                    "DATA_DIR/features/<encoder>-<hash>/. Resumable; a second run with the same settings "
                    "does no encoder work. Prints one store key per encoder.")
    p.add_argument("data_dir", help="prepared dataset directory (giamic prepare)")
    p.add_argument("--encoders", default="clip,roberta",
                   help="comma-separated registry names (default: clip,roberta; e.g. tiny-clip-untrained, minilm, "
                        "wavlm with --frozen-speech)")
    p.add_argument("--clip-path", help="local directory (or hub name) of the CLIP weights")
    p.add_argument("--wavlm-path", help="local directory (or hub name) of the WavLM weights")
    p.add_argument("--roberta-path", help="local directory (or hub name) of the RoBERTa weights")
    p.add_argument("--random-init", action="store_true",
                   help="paper-size architectures with random weights (no download; for speed tests only)")
    p.add_argument("--frozen-speech", action="store_true",
                   help="cache frozen WavLM features (trades the paper's fine-tuning for speed, spec §7.4)")
    p.add_argument("--text-source", choices=("gt", "asr"), default="gt",
                   help="transcript column for text encoders: gt = transcript, asr = transcript_asr")
    p.add_argument("--max-tokens", type=int, default=64, help="text: max tokens incl. special tokens (64)")
    p.add_argument("--strip-nonverbal-tags", action="store_true", help="text: drop tags such as [LAUGHTER]")
    p.add_argument("--video-max-sec", type=float, default=6.0,
                   help="video window from the utterance start, seconds (6; 0 = the whole utterance)")
    p.add_argument("--max-frames", type=int, default=180, help="video: at most this many frames (180; 0 = no limit)")
    p.add_argument("--crop-mode", choices=("fixed_window", "half", "full"),
                   help="override the prepared speaker-crop mode")
    p.add_argument("--clip-l2norm", action="store_true", help="L2-normalise CLIP image_embeds (spec item 29 flag)")
    p.add_argument("--preprocess", choices=("pil", "torch"), default="pil",
                   help="CLIP preprocessing backend: pil (bit-exact with CLIPImageProcessor) or torch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="compute dtype (autocast); features are stored as float16 regardless")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per forward (speech, text)")
    p.add_argument("--frame-batch", type=int, default=64, help="video frames per CLIP forward")
    p.add_argument("--chunk-size", type=int, default=64, help="utterances per chunk (resume/shard unit)")
    p.add_argument("--workers", type=int, default=0, help="data-loader processes decoding and preprocessing")
    p.add_argument("--num-shards", type=int, help="split the work over N processes (default: torchrun WORLD_SIZE or 1)")
    p.add_argument("--shard-id", type=int, help="this process's shard, 0..N-1 (default: torchrun RANK or 0)")
    p.add_argument("--dry-run", action="store_true", help="print keys and the work left, run no encoder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract)

    q = subparsers.add_parser(
        "import-features", help="import precomputed per-utterance features as a feature store",
        description="Import one [T, D] array per utterance (DIR/<utt_id>.npy or one .safetensors file keyed by "
                    "utt_id) into DATA_DIR/features/<name>/, usable by training like an encoder key.")
    q.add_argument("data_dir")
    q.add_argument("--modality", required=True, choices=MODALITIES)
    q.add_argument("--name", required=True, help="store key, e.g. my-video")
    q.add_argument("--from", dest="source", required=True, help="directory of <utt_id>.npy or a .safetensors file")
    q.add_argument("--chunk-size", type=int, default=256)
    q.set_defaults(func=run_import)


def _device(arg: str | None) -> str:
    import torch

    if arg:
        if arg == "cuda" and "LOCAL_RANK" in os.environ:
            return f"cuda:{int(os.environ['LOCAL_RANK'])}"
        return arg
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def run_extract(args: argparse.Namespace) -> int:
    from giamic.features.extract import ExtractOptions, extract, feature_key, plan_chunks
    from giamic.features.registry import ENCODERS, EncoderUnavailableError, build_encoder, resolve_name
    from giamic.features.store import FeatureStoreError

    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    try:
        names = [resolve_name(n) for n in names]
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    shard_kw = {}
    if args.num_shards is not None:
        shard_kw = {"num_shards": args.num_shards, "shard_id": args.shard_id or 0}
    elif args.shard_id is not None:
        print("error: --shard-id needs --num-shards", file=sys.stderr)
        return 2
    try:
        options = ExtractOptions.from_env(
            text_source=args.text_source, video_max_sec=args.video_max_sec or None,
            video_max_frames=args.max_frames or None, crop_mode=args.crop_mode, dtype=args.dtype,
            chunk_size=args.chunk_size, batch_size=args.batch_size, workers=args.workers,
            progress=not args.no_progress, **shard_kw)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = _device(args.device)
    paths = {"clip": args.clip_path, "wavlm": args.wavlm_path, "roberta": args.roberta_path}
    rc = 0
    for name in names:
        spec = ENCODERS[name]
        if spec.modality == "speech" and not args.frozen_speech:
            print(f"error: {name} is fine-tuned online by default (spec §3.4), so it is not cached; pass "
                  f"--frozen-speech to cache frozen features instead", file=sys.stderr)
            return 2
        overrides: dict = {}
        if spec.modality == "video":
            overrides = {"l2norm": args.clip_l2norm, "preprocess_backend": args.preprocess,
                         "frame_batch": args.frame_batch}
        elif spec.modality == "text":
            overrides = {"max_tokens": args.max_tokens, "strip_nonverbal_tags": args.strip_nonverbal_tags}
        try:
            enc = build_encoder(name, paths.get(name) if not spec.untrained else None, device=device,
                                random_init=args.random_init and not spec.untrained and spec.family != "minilm",
                                frozen=True, **overrides)
        except EncoderUnavailableError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        try:
            if args.dry_run:
                from giamic.data.dataset import load_dataset
                from giamic.features.store import read_chunk_record, store_dir

                key = feature_key(enc, options)
                ds = load_dataset(args.data_dir)
                chunks = plan_chunks(ds.utterances, enc.modality, options, Path(args.data_dir))
                root = store_dir(args.data_dir, key)
                done = sum(read_chunk_record(root, c.name) is not None for c in chunks)
                print(f"{name}\t{key}\t{done}/{len(chunks)} chunks on disk")
                continue
            res = extract(args.data_dir, enc, options)
        except (FeatureStoreError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for why in res.recomputed:
            print(f"recomputed: {why}", file=sys.stderr)
        if res.absent:
            reasons: dict[str, int] = {}
            for r in res.absent.values():
                reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
            print(f"{name}: {len(res.absent)} utterance(s) without this modality: "
                  + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())), file=sys.stderr)
            for u, r in sorted(res.absent.items()):
                print(f"  absent {u}: {r}", file=sys.stderr)
        state = "complete" if res.complete else "partial (other shards pending)"
        print(f"{name}\t{res.key}\t{state}\tencoded={res.computed} reused={res.reused} "
              f"chunks={res.chunks_total} time={res.seconds:.1f}s")
        del enc
    return rc


def run_import(args: argparse.Namespace) -> int:
    from giamic.features.importer import import_features
    from giamic.features.store import FeatureStoreError

    try:
        res = import_features(args.data_dir, args.name, args.modality, args.source, chunk_size=args.chunk_size)
    except (FeatureStoreError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if res.unknown:
        print(f"skipped {len(res.unknown)} array(s) whose ids are not in the dataset: {', '.join(res.unknown)}",
              file=sys.stderr)
    if res.absent:
        print(f"{len(res.absent)} dataset utterance(s) have no array (recorded as absent): "
              f"{', '.join(sorted(res.absent))}", file=sys.stderr)
    print(f"{args.modality}\t{res.key}\timported={res.imported} dim={res.dim}")
    return 0
