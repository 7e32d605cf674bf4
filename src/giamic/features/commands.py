"""CLI of the features stage: ``giamic extract`` and ``giamic import-features`` (see docs/features.md).

Errors are raised, never printed: ``giamic.cli.main`` reports them as one line.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from giamic.errors import ConfigError
from giamic.modalities import MODALITIES
from giamic.utils.io import check_output_dir

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="run frozen encoders once over a prepared dataset into the feature cache",
        description="Run each frozen encoder once over DATA_DIR and store per-utterance fp16 features in "
                    "DATA_DIR/features/<encoder>-<hash>/. Resumable; a second run with the same settings "
                    "does no encoder work. Prints one store key per encoder.")
    p.add_argument("data_dir", help="prepared dataset directory (giamic prepare)")
    p.add_argument("--preset", metavar="PRESET",
                   help="take the encoders and caps of a preset, as `giamic cv --preset` reads them: cpu (untrained "
                        "tiny CLIP and WavLM, the latter frozen, MiniLM text; a laptop) or paper (CLIP, RoBERTa); "
                        "options given explicitly win")
    p.add_argument("--encoders", default=None,
                   help="comma-separated registry names (default: clip,roberta, or the preset's; e.g. "
                        "tiny-clip-untrained, minilm, wavlm with --frozen-speech)")
    p.add_argument("--clip-path", help="local directory (or hub name) of the CLIP weights")
    p.add_argument("--wavlm-path", help="local directory (or hub name) of the WavLM weights")
    p.add_argument("--roberta-path", help="local directory (or hub name) of the RoBERTa weights")
    p.add_argument("--random-init", action="store_true",
                   help="paper-size architectures with random weights (no download; for speed tests only)")
    p.add_argument("--frozen-speech", action="store_true",
                   help="cache frozen WavLM features (trades the paper's fine-tuning for speed; docs/decisions.md, "
                        "frozen WavLM caching)")
    p.add_argument("--text-source", choices=("gt", "asr"), default="gt",
                   help="transcript column for text encoders: gt = transcript, asr = transcript_asr")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="text: max tokens incl. special tokens (64, or the preset's)")
    p.add_argument("--strip-nonverbal-tags", action="store_true", help="text: drop tags such as [LAUGHTER]")
    p.add_argument("--video-max-sec", type=float, default=6.0,
                   help="video window from the utterance start, seconds (6; 0 = the whole utterance)")
    p.add_argument("--max-frames", type=int, default=None,
                   help="video: at most this many frames (180, or the preset's; 0 = no limit)")
    p.add_argument("--video-fps", type=float, default=0.0, metavar="FPS",
                   help="video: keep at most FPS frames per second of the window (0 = the native rate, the paper's "
                        "180 frames per 6 s; e.g. 2 for fast CPU prediction); part of the cache key")
    p.add_argument("--crop-mode", choices=("fixed_window", "half", "full"),
                   help="override the prepared speaker-crop mode")
    p.add_argument("--clip-l2norm", action="store_true",
                   help="L2-normalise CLIP image_embeds before caching (off by default)")
    p.add_argument("--clip-execution", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="how CLIP runs: fp32 (default), bf16 (bfloat16 autocast) or int8 (dynamic int8 Linear "
                        "layers, CPU); part of the encoder identity, so caches never mix them")
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
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (bars are drawn only on a terminal anyway)")
    p.set_defaults(func=run_extract)

    q = subparsers.add_parser(
        "import-features", help="import precomputed per-utterance features as a feature store",
        description="Import one [T, D] array per utterance (DIR/<utt_id>.npy or one .safetensors file keyed by "
                    "utt_id) into DATA_DIR/features/<name>/, usable by training like an encoder key.")
    q.add_argument("data_dir", help="prepared dataset directory (giamic prepare)")
    q.add_argument("--modality", required=True, choices=MODALITIES, help="the modality the arrays hold")
    q.add_argument("--name", required=True,
                   help="store key, e.g. my-video (letters, digits, '.', '_' and '-'); train with --set encoders.<modality>_key=NAME")
    q.add_argument("--from", dest="source", required=True, help="directory of <utt_id>.npy or a .safetensors file")
    q.add_argument("--chunk-size", type=int, default=256, help="utterances per stored chunk (default 256)")
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


# What ``giamic extract`` does without a preset (the paper's frozen encoders and caps).
_EXTRACT_DEFAULTS = {"encoders": "clip,roberta", "max_tokens": 64, "max_frames": 180}


def _apply_preset(args: argparse.Namespace) -> dict:
    """Fill the options left unset from ``--preset`` (or the built-in defaults); return the keyword
    settings of the speech encoder (its audio window), empty without a preset.

    A preset's cached modalities are extracted: video and text always, speech when the preset caches
    it (``encoders.speech_mode: cached``), in which case ``--frozen-speech`` is implied."""
    speech_kw: dict = {}
    if args.preset:
        from giamic.presets import read_preset

        p = read_preset(args.preset)
        enc, data = p.get("encoders") or {}, p.get("data") or {}
        cached_speech = enc.get("speech_mode") == "cached"
        if args.encoders is None:
            names = [enc.get("video", "clip")]
            if cached_speech:
                names.append(enc.get("speech", "wavlm"))
            names.append(enc.get("text", "roberta"))
            args.encoders = ",".join(names)
        if cached_speech:
            args.frozen_speech = True
            sr = int(data.get("audio_sr", 16000))
            speech_kw = {"sample_rate": sr, "max_samples": int(round(float(data.get("audio_max_sec", 6.0)) * sr)),
                         "normalize": bool(data.get("audio_normalize", True))}
        if args.max_tokens is None and "max_tokens" in data:
            args.max_tokens = int(data["max_tokens"])
        if args.max_frames is None and "max_frames" in data:
            args.max_frames = int(data["max_frames"])
    for k, v in _EXTRACT_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return speech_kw


def run_extract(args: argparse.Namespace) -> int:
    from giamic.data.dataset import load_dataset
    from giamic.features.extract import ExtractOptions, extract, feature_key, plan_chunks
    from giamic.features.registry import ENCODERS, build_encoder, resolve_name

    speech_kw = _apply_preset(args)
    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    try:
        names = [resolve_name(n) for n in names]
    except KeyError as e:
        raise ConfigError(f"--encoders: {e.args[0]}") from None
    shard_kw = {}
    if args.num_shards is not None:
        shard_kw = {"num_shards": args.num_shards, "shard_id": args.shard_id or 0}
    elif args.shard_id is not None:
        raise ConfigError("--shard-id needs --num-shards")
    options = ExtractOptions.from_env(
        text_source=args.text_source, video_max_sec=args.video_max_sec or None,
        video_max_frames=args.max_frames or None, video_fps=args.video_fps or None, crop_mode=args.crop_mode,
        dtype=args.dtype,
        chunk_size=args.chunk_size, batch_size=args.batch_size, workers=args.workers,
        progress=not args.no_progress, **shard_kw)
    for name in names:
        if ENCODERS[name].modality == "speech" and not args.frozen_speech:
            raise ConfigError(f"{name} is fine-tuned online by default, so it is not cached; "
                              f"pass --frozen-speech to cache frozen features instead")
    ds = load_dataset(args.data_dir)  # before any encoder is built: a wrong folder fails at once
    if not args.dry_run:
        check_output_dir(Path(args.data_dir) / "features")
    device = _device(args.device)
    paths = {"clip": args.clip_path, "wavlm": args.wavlm_path, "roberta": args.roberta_path}
    for name in names:
        spec = ENCODERS[name]
        overrides: dict = {}
        if spec.modality == "video":
            overrides = {"l2norm": args.clip_l2norm, "preprocess_backend": args.preprocess,
                         "frame_batch": args.frame_batch, "execution": args.clip_execution}
        elif spec.modality == "text":
            overrides = {"max_tokens": args.max_tokens, "strip_nonverbal_tags": args.strip_nonverbal_tags}
        elif spec.modality == "speech":
            overrides = dict(speech_kw)
        enc = build_encoder(name, paths.get(name) if not spec.untrained else None, device=device,
                            random_init=args.random_init and not spec.untrained and spec.family != "minilm",
                            frozen=True, **overrides)
        if args.dry_run:
            from giamic.features.store import read_chunk_record, store_dir

            key = feature_key(enc, options)
            chunks = plan_chunks(ds.utterances, enc.modality, options, Path(args.data_dir))
            root = store_dir(args.data_dir, key)
            done = sum(read_chunk_record(root, c.name) is not None for c in chunks)
            print(f"{name}\t{key}\t{done}/{len(chunks)} chunks on disk")
            continue
        res = extract(args.data_dir, enc, options)
        for why in res.recomputed:
            log.warning("recomputed: %s", why)
        if res.absent:
            reasons: dict[str, int] = {}
            for r in res.absent.values():
                reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
            log.info("%s: %d utterance(s) without this modality: %s", name, len(res.absent),
                     ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
            for u, r in sorted(res.absent.items()):
                log.info("  absent %s: %s", u, r)
        state = "complete" if res.complete else "partial (other shards pending)"
        print(f"{name}\t{res.key}\t{state}\tencoded={res.computed} reused={res.reused} "
              f"chunks={res.chunks_total} time={res.seconds:.1f}s")
        del enc
    return 0


def run_import(args: argparse.Namespace) -> int:
    from giamic.data.dataset import load_dataset
    from giamic.features.importer import import_features

    load_dataset(args.data_dir)
    check_output_dir(Path(args.data_dir) / "features")
    res = import_features(args.data_dir, args.name, args.modality, args.source, chunk_size=args.chunk_size)
    if res.unknown:
        log.warning("skipped %d array(s) whose ids are not in the dataset: %s", len(res.unknown), ", ".join(res.unknown))
    if res.absent:
        log.warning("%d dataset utterance(s) have no array (recorded as absent): %s", len(res.absent),
                    ", ".join(sorted(res.absent)))
    print(f"{args.modality}\t{res.key}\timported={res.imported} dim={res.dim}")
    return 0
