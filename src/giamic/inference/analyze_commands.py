"""CLI for whole recordings: ``giamic analyze`` and ``giamic serve``.

``giamic analyze my_interview.mp4 --model DIR`` cuts the recording into utterances, finds the
speaker's face, predicts each utterance and writes the table (CSV, JSON), subtitles (SRT, WebVTT),
the timeline picture and a self-contained HTML report. ``giamic serve --model DIR`` offers the same
in a local web page. Exit codes: 0 = every recording done; 1 = some recording or segment failed
(the others are written); 2 = nothing could run (bad options, unusable model directory).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", required=True, metavar="DIR",
                   help="trained model directory (from giamic train/cv); repeat to give models for other modality "
                   "subsets (e.g. a V+S model for recordings without a transcript): each recording uses the first "
                   "model whose modalities it has")
    p.add_argument("--asr", metavar="MODEL",
                   help="Whisper model (tiny.en or a local CTranslate2 directory): its segments and text are used "
                   "when the model reads text (default: voice activity detection, no text)")
    p.add_argument("--asr-beam", type=int, default=1, metavar="N", help="Whisper beam size (1 = greedy, default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--encoder-path", action="append", default=[], metavar="MODALITY=PATH",
                   help="local copy of an encoder's weights (video=..., speech=..., text=...), overriding the model "
                   "directory's")
    p.add_argument("--min-segment", type=float, default=0.5, metavar="SEC",
                   help="leave out utterances shorter than this (default 0.5 s)")
    p.add_argument("--max-segment", type=float, default=6.0, metavar="SEC",
                   help="cut longer utterances into equal pieces no longer than this (default 6 s, the model's "
                   "window; at most 6)")
    p.add_argument("--vad-threshold", type=float, default=0.5, metavar="P",
                   help="Silero VAD speech probability threshold (default 0.5; lower finds softer speech)")
    p.add_argument("--vad-min-silence", type=int, default=400, metavar="MS",
                   help="a pause at least this long ends an utterance (default 400 ms)")
    p.add_argument("--vad-pad", type=int, default=150, metavar="MS",
                   help="widen each detected utterance by this much on both sides (default 150 ms)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="utterances per model call (default 8)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``analyze`` and ``serve`` to the ``giamic`` command."""
    a = subparsers.add_parser(
        "analyze",
        help="emotion over whole recordings: utterance segments, the speaker's face, a timeline, subtitles",
        description="Cut each recording (video or audio, any length, no transcript needed) into utterances, "
        "find the speaker's face, predict each utterance's emotion with a trained model and write a table "
        "(CSV, JSON), subtitles (SRT, WebVTT), a timeline picture and a self-contained HTML report. "
        "Example: giamic analyze my_interview.mp4 --model runs/demo/seed0/fold1/model",
    )
    a.add_argument("inputs", nargs="+", metavar="RECORDING",
                   help="a video or audio file, or a directory (every media file below it)")
    _add_model_args(a)
    a.add_argument("--out", "-o", default=".", metavar="DIR",
                   help="output directory (default: the current directory); files are named after the recording")
    a.add_argument("--segments", metavar="FILE",
                   help="utterance times for one recording: CSV start,end[,speaker,text] (seconds or [HH:]MM:SS.mmm), "
                   "or an .srt/.vtt subtitle file whose text becomes the transcript")
    crop = a.add_mutually_exclusive_group()
    crop.add_argument("--face", type=int, metavar="N",
                      help="use the N-th face from the left (1 = leftmost) instead of the speaking face")
    crop.add_argument("--side", choices=("L", "R"),
                      help="IEMOCAP-style two-person layout: the speaker is on the left/right half (the model's crop rule)")
    crop.add_argument("--crop-box", metavar="X,Y,W,H", help="one crop box in pixels for the whole recording")
    crop.add_argument("--full-frame", action="store_true", help="use the whole frame (no face detection)")
    a.add_argument("--max-minutes", type=float, default=None, metavar="MIN",
                   help="refuse recordings longer than this (default: no limit)")
    a.add_argument("--embed-limit-mb", type=float, default=25.0, metavar="MB",
                   help="embed the video in the HTML report when it is at most this large, else link it (default 25)")
    a.add_argument("--json", action="store_true", help="print the results as JSON instead of a summary")
    a.set_defaults(func=_analyze_main)

    s = subparsers.add_parser(
        "serve",
        help="a local web page to analyze recordings (upload or pick a file; timeline, table, subtitled video)",
        description="Serve a web page on this computer where a recording can be uploaded (or picked from --files) "
        "and analyzed like `giamic analyze`: progress, timeline, table, the video with subtitles, and CSV/JSON/SRT/VTT "
        "downloads. Works offline; listens on 127.0.0.1 (this computer only) unless --host says otherwise.",
    )
    _add_model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    s.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    s.add_argument("--files", metavar="DIR", help="also offer the media files under this directory for picking")
    s.add_argument("--max-upload-mb", type=float, default=500.0, metavar="MB", help="largest upload (default 500 MB)")
    s.add_argument("--max-minutes", type=float, default=30.0, metavar="MIN",
                   help="longest recording accepted (default 30 min)")
    s.add_argument("--work-dir", metavar="DIR",
                   help="where uploads and results are kept (default: a temporary directory removed on exit)")
    s.set_defaults(func=_serve_main)

    g = subparsers.add_parser(
        "make-recording",
        help="write a generated interview recording with known utterance times and planted emotions",
        description="Write a generated recording (several speakers' drawn faces at arbitrary places, a speech-like "
        "voice with the demo corpus's emotion cues, known utterance times) and its truth as a segments file "
        "(NAME.segments.csv: start,end,speaker,text) and NAME.truth.json (with the planted emotions). For trying "
        "`giamic analyze` and `giamic serve` without outside data.",
    )
    g.add_argument("path", metavar="OUT", help="output file: .mp4 (H.264+AAC), .webm/.mkv (VP8+Opus), .avi (MPEG-4+PCM) "
                   "or .wav (audio only)")
    g.add_argument("--seconds", type=float, default=120.0, help="length in seconds (default 120)")
    g.add_argument("--speakers", type=int, default=2, help="number of speakers, 1-4 (default 2)")
    g.add_argument("--size", default="640x360", metavar="WxH", help="frame size (default 640x360)")
    g.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--no-audio", action="store_true", help="write the video without an audio track")
    g.set_defaults(func=_make_recording_main)


def _err(msg: str) -> None:
    print(f"giamic: error: {msg}", file=sys.stderr)


def _common(args: argparse.Namespace):
    """Predictor and AnalyzeOptions from the shared options (raises on a bad option)."""
    from .commands import _parse_box
    from .predictor import Predictor
    from .recording import AnalyzeOptions
    from .segments import VadSettings

    encoder_paths = {}
    for item in args.encoder_path:
        mod, sep, path = item.partition("=")
        if not sep or mod not in ("video", "speech", "text"):
            raise ValueError(f"--encoder-path wants MODALITY=PATH with MODALITY video, speech or text, got {item!r}")
        encoder_paths[mod] = path
    if not 0 < args.max_segment <= 6.0:
        raise ValueError(f"--max-segment must be in (0, 6] seconds (the model reads 6 s), got {args.max_segment}")
    if not 0 <= args.min_segment < args.max_segment:
        raise ValueError(f"--min-segment must be >= 0 and below --max-segment, got {args.min_segment}")
    if not 0 < args.vad_threshold < 1:
        raise ValueError(f"--vad-threshold must be between 0 and 1, got {args.vad_threshold}")
    if args.vad_min_silence < 0 or args.vad_pad < 0:
        raise ValueError("--vad-min-silence and --vad-pad must be >= 0")
    vad = VadSettings(threshold=args.vad_threshold, min_silence_ms=args.vad_min_silence, pad_ms=args.vad_pad)
    box = _parse_box(args.crop_box) if getattr(args, "crop_box", None) else None
    max_min = getattr(args, "max_minutes", None)
    if max_min is not None and max_min <= 0:
        raise ValueError("--max-minutes must be > 0")
    options = AnalyzeOptions(
        segments_file=getattr(args, "segments", None), asr_model=args.asr, asr_beam_size=args.asr_beam, vad=vad,
        min_segment=args.min_segment, max_segment=args.max_segment, side=getattr(args, "side", None), box=box,
        full_frame=bool(getattr(args, "full_frame", False)), face=getattr(args, "face", None),
        max_duration=max_min * 60 if max_min is not None else None, batch_size=args.batch_size)
    predictor = Predictor.load(args.model, device=args.device, encoder_paths=encoder_paths)
    if args.asr:
        from .predictor import PredictOptions

        predictor.prepare_asr(PredictOptions(asr_model=args.asr, asr_beam_size=args.asr_beam))
    return predictor, options


def _expand(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(recording, output sub-directory relative to --out) for files and directories."""
    from .errors import InputError
    from .inputs import AUDIO_EXTS, VIDEO_EXTS

    out = []
    for a in inputs:
        p = Path(a)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTS | VIDEO_EXTS)
            if not found:
                raise InputError(f"{p}: directory holds no media file")
            out += [(f, f.parent.relative_to(p)) for f in found]
        else:
            out.append((p, Path(".")))
    return out


def summarize(results: list[tuple[Path, object]]) -> str:
    """One line a recording: segments, how many per label, failures; then the totals."""
    lines = []
    total = Counter()
    for path, r in results:
        if isinstance(r, Exception):
            lines.append(f"FAILED {path}: {r}")
            continue
        labels = Counter(s.label for s in r.segments if s.label)
        bad = sum(1 for s in r.segments if s.error)
        total.update(labels)
        spread = ", ".join(f"{c} {labels[c]}" for c in r.classes if labels[c])
        lines.append(f"{path}: {len(r.segments)} utterance(s) over {r.duration:.1f} s ({r.segmentation}); {spread}"
                     + (f"; {bad} failed" if bad else ""))
    if len(results) > 1:
        ok = sum(1 for _, r in results if not isinstance(r, Exception))
        lines.append(f"{ok} of {len(results)} recording(s) analyzed; labels: "
                     + (", ".join(f"{c} {n}" for c, n in total.most_common()) or "none"))
    return "\n".join(lines)


def _analyze_main(args: argparse.Namespace) -> int:
    from giamic.errors import GiamicError
    from giamic.log import progress

    from .errors import InferenceError
    from .outputs import write_outputs
    from .recording import analyze_recording

    try:
        recordings = _expand(args.inputs)
        if args.segments and len(recordings) != 1:
            raise ValueError(f"--segments applies to one recording, but {len(recordings)} were given")
        if args.embed_limit_mb < 0:
            raise ValueError("--embed-limit-mb must be >= 0")
        predictor, options = _common(args)
    except (InferenceError, GiamicError, ValueError) as e:
        _err(str(e))
        return 2
    out_root = Path(args.out)
    results: list[tuple[Path, object]] = []
    written = {}
    failed = False
    for path, sub in progress(recordings, desc="recordings", total=len(recordings), unit="file"):
        try:
            r = analyze_recording(predictor, path, options)
            written[str(path)] = write_outputs(r, out_root / sub, embed_limit=int(args.embed_limit_mb * 1024 * 1024))
            results.append((path, r))
            failed |= any(s.error for s in r.segments)
        except (InferenceError, GiamicError) as e:
            results.append((path, e))
            failed = True
        except Exception as e:  # a decoder crash on one recording must not lose the others
            results.append((path, RuntimeError(f"{type(e).__name__}: {e}")))
            failed = True
    if args.json:
        print(json.dumps([dict(r.to_json(), outputs={k: str(v) for k, v in written[str(p)].items()})
                          if not isinstance(r, Exception) else {"input": str(p), "error": str(r)}
                          for p, r in results], indent=2, ensure_ascii=False))
    else:
        print(summarize(results))
        for files in written.values():
            print(f"  wrote {files['html']} (+ .emotions.csv/.json, .srt, .vtt, .timeline.png)")
    return 1 if failed else 0


def _make_recording_main(args: argparse.Namespace) -> int:
    from giamic.data.demorecording import make_recording, write_segments_file
    from giamic.utils.io import write_json_atomic

    try:
        w, _, h = args.size.lower().partition("x")
        size = (int(w), int(h))
        out = Path(args.path)
        info = make_recording(out, seconds=args.seconds, speakers=args.speakers, seed=args.seed, size=size,
                              fps=args.fps, audio=not args.no_audio)
    except ValueError as e:
        _err(str(e))
        return 2
    stem = out.with_suffix("")
    write_segments_file(info, f"{stem}.segments.csv")
    write_json_atomic(f"{stem}.truth.json", info.to_json())
    labels = Counter(u.label for u in info.utterances)
    print(f"wrote {out}: {args.seconds:g} s, {len(info.utterances)} utterances by {args.speakers} speaker(s) "
          f"({', '.join(f'{c} {n}' for c, n in labels.most_common())}); truth in {stem}.segments.csv, {stem}.truth.json")
    return 0


def _serve_main(args: argparse.Namespace) -> int:
    from giamic.errors import GiamicError

    from .errors import InferenceError
    from .serve import ServeSettings, serve

    try:
        if args.max_upload_mb <= 0:
            raise ValueError("--max-upload-mb must be > 0")
        if args.files and not Path(args.files).is_dir():
            raise ValueError(f"{args.files}: --files must be a directory")
        predictor, options = _common(args)
        settings = ServeSettings(options=options, files_dir=Path(args.files) if args.files else None,
                                 max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                                 work_dir=Path(args.work_dir) if args.work_dir else None)
    except (InferenceError, GiamicError, ValueError) as e:
        _err(str(e))
        return 2
    return serve(predictor, settings, host=args.host, port=args.port)


__all__ = ["register", "summarize"]
