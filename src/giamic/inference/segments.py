"""Cutting a recording into utterances (``giamic analyze``; docs/predict.md "Emotion over a whole recording").

Three sources, in order of preference:

1. **A segments file** the user gives: CSV ``start,end[,speaker,text]`` (seconds, or
   ``[HH:]MM:SS[.mmm]``; a header line is optional), or an ``.srt`` / ``.vtt`` subtitle file whose
   cue text becomes the transcript. Read with :func:`read_segments_file`.
2. **Whisper** when ASR runs: Silero VAD's spans, also cut where Whisper ends a segment, each with
   the words Whisper timed inside it (faster-whisper, word timestamps): :func:`whisper_segments`.
3. **Voice activity detection** otherwise: Silero VAD, the ONNX model that faster-whisper ships
   (no download), with the settings of :class:`VadSettings`: :func:`vad_segments`.

Every source then goes through :func:`finalize`: segments shorter than ``min_sec`` (0.5 s by
default) are dropped, and a segment longer than the model's window (``max_sec``, 6 s, the length
the model reads of an utterance) is cut into ``ceil(d / 6)`` equal consecutive pieces, so every
piece lies within one 6-s window and none is a sliver. Each piece is then one utterance that goes
through exactly the prediction path of a training utterance.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MODEL_WINDOW_SEC = 6.0  # the model reads the first 6 s of an utterance (docs/model.md)
MIN_SEGMENT_SEC = 0.5
SEGMENT_FILE_EXTS = frozenset({".csv", ".srt", ".vtt"})


@dataclass(frozen=True)
class Span:
    """One utterance on the recording's timeline, before prediction."""

    start: float
    end: float
    speaker: str | None = None
    text: str | None = None
    source: str = "vad"  # "file", "whisper", "vad"; "+split" when cut at the model's window
    words: tuple = ()  # Whisper's (start, end, word) inside the span; pieces keep their own words

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class VadSettings:
    """Silero VAD settings (faster-whisper's ``VadOptions``); the defaults suit conversational speech.

    ``min_speech_ms`` drops clicks and breaths; ``min_silence_ms`` is the pause that ends an
    utterance (shorter pauses stay inside it); ``pad_ms`` widens each detected span on both sides so
    that soft onsets and endings are kept.
    """

    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 400
    pad_ms: int = 150


# --------------------------------------------------------------------------- segments files

_TS = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)$")
_CUE = re.compile(r"^\s*(\S+)\s+-->\s+(\S+)")


def parse_time(text: str) -> float:
    """Seconds from ``12.5``, ``01:02.5``, ``00:01:02,500`` or ``1:02:03.250``."""
    s = text.strip()
    try:
        v = float(s)
    except ValueError:
        m = _TS.match(s)
        if not m:
            raise ValueError(f"not a time: {text!r} (seconds, or [HH:]MM:SS[.mmm])") from None
        h, mnt, sec = m.groups()
        v = int(h or 0) * 3600 + int(mnt) * 60 + float(sec.replace(",", "."))
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"time must be >= 0, got {text!r}")
    return v


def read_segments_file(path: str | Path) -> list[Span]:
    """Read a CSV / SRT / VTT segments file (UTF-8); :class:`InputError` naming the line on a mistake."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SEGMENT_FILE_EXTS:
        raise InputError(f"{path}: a segments file must be .csv, .srt or .vtt")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such segments file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the segments file ({e})") from e
    spans = _read_csv(path, text) if ext == ".csv" else _read_cues(path, text)
    if not spans:
        raise InputError(f"{path}: the segments file holds no segment")
    return sorted(spans, key=lambda s: (s.start, s.end))


def _read_csv(path: Path, text: str) -> list[Span]:
    out = []
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if n == 1 and row[0].strip().lower() in ("start", "begin", "from"):
            continue  # header
        if len(row) < 2:
            raise InputError(f"{path}:{n}: expected start,end[,speaker,text]")
        try:
            a, b = parse_time(row[0]), parse_time(row[1])
        except ValueError as e:
            raise InputError(f"{path}:{n}: {e}") from None
        if b <= a:
            raise InputError(f"{path}:{n}: end ({row[1].strip()}) must be after start ({row[0].strip()})")
        speaker = row[2].strip() or None if len(row) > 2 else None
        body = ",".join(row[3:]).strip() if len(row) > 3 else None
        out.append(Span(a, b, speaker, body or None, "file"))
    return out


def _read_cues(path: Path, text: str) -> list[Span]:
    """SRT and WebVTT cues: a ``start --> end`` line, then text lines up to a blank line."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _CUE.match(lines[i])
        if not m:
            i += 1
            continue
        n = i + 1
        try:
            a, b = parse_time(m.group(1)), parse_time(m.group(2))
        except ValueError as e:
            raise InputError(f"{path}:{n}: {e}") from None
        if b <= a:
            raise InputError(f"{path}:{n}: cue end must be after its start")
        i += 1
        body = []
        while i < len(lines) and lines[i].strip():
            body.append(lines[i].strip())
            i += 1
        words = re.sub(r"<[^>]+>", "", " ".join(body)).strip()  # VTT voice/style tags
        speaker = None
        sm = re.match(r"^<v\s+([^>]+)>", " ".join(body))
        if sm:
            speaker = sm.group(1).strip()
        out.append(Span(a, b, speaker, words or None, "file"))
    return out


# --------------------------------------------------------------------------- audio of the whole recording


def decode_audio_track(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The whole audio track as 16 kHz mono float32: the data stage's loader
    (:func:`giamic.data.load_audio`, the one every stage reads audio with: libsndfile formats, or
    FFmpeg for a video container with samples placed at their timestamps; then the same down-mix
    and resampler). A file without usable audio is an :class:`InputError` naming it."""
    from giamic.data.audio import load_audio
    from giamic.data.errors import DataError

    try:
        return load_audio(Path(path), sr=sr)
    except DataError as e:
        raise InputError(str(e)) from e


# --------------------------------------------------------------------------- VAD and Whisper


def vad_segments(wave: np.ndarray, settings: VadSettings = VadSettings(), sr: int = SAMPLE_RATE) -> list[Span]:
    """Speech spans found by Silero VAD (faster-whisper's bundled ONNX model, run offline)."""
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except ModuleNotFoundError:
        raise InputError("voice activity detection needs faster-whisper: `pip install 'giamic[recording]'`, "
                         "or give a segments file with --segments") from None
    if sr != SAMPLE_RATE:
        raise ValueError("Silero VAD runs on 16 kHz audio")
    opts = VadOptions(threshold=settings.threshold, min_speech_duration_ms=settings.min_speech_ms,
                      min_silence_duration_ms=settings.min_silence_ms, speech_pad_ms=settings.pad_ms)
    stamps = get_speech_timestamps(np.ascontiguousarray(wave, dtype=np.float32), opts, sampling_rate=sr)
    n = len(wave)
    return [Span(max(0, s["start"]) / sr, min(n, s["end"]) / sr, source="vad") for s in stamps]


def whisper_segments(transcriber, wave: np.ndarray, vad: VadSettings = VadSettings()) -> list[Span]:
    """Utterances with Whisper's text: Silero VAD's spans, cut where Whisper ends one segment and
    starts the next inside a span, each carrying the words Whisper timed inside it.

    Whisper (faster-whisper, word timestamps, Silero VAD in front) merges speech into segments of up
    to 30 s that may run over pauses and speaker changes; the VAD's pauses are the better utterance
    boundaries, Whisper's segment ends the better sentence ones. Words are assigned by their
    midpoint; words over silence (hallucinations) are dropped.
    """
    model = transcriber._model
    s = transcriber.settings
    segs, _ = model.transcribe(
        np.ascontiguousarray(wave, dtype=np.float32), language=s.language, task="transcribe",
        beam_size=s.beam_size, temperature=0.0, condition_on_previous_text=False, without_timestamps=False,
        word_timestamps=True, vad_filter=True,
        vad_parameters=dict(threshold=vad.threshold, min_speech_duration_ms=vad.min_speech_ms,
                            min_silence_duration_ms=vad.min_silence_ms, speech_pad_ms=vad.pad_ms),
    )
    segs = list(segs)
    words = [(float(w.start), float(w.end), w.word) for seg in segs for w in (seg.words or [])]
    bounds = [(float(a.end) + float(b.start)) / 2 for a, b in zip(segs, segs[1:])]
    out: list[Span] = []
    for span in vad_segments(wave, vad):
        cuts = [c for c in bounds if span.start + MIN_SEGMENT_SEC < c < span.end - MIN_SEGMENT_SEC]
        edges = [span.start, *cuts, span.end]
        for a, b in zip(edges, edges[1:]):
            ws = tuple(w for w in words if a <= (w[0] + w[1]) / 2 < b)
            out.append(Span(a, b, text=_join(ws), source="whisper", words=ws))
    return out


def _join(words) -> str:
    return "".join(w[2] for w in words).strip()


# --------------------------------------------------------------------------- lengths


def finalize(spans: list[Span], duration: float | None = None, min_sec: float = MIN_SEGMENT_SEC,
             max_sec: float = MODEL_WINDOW_SEC) -> list[Span]:
    """Clip to the recording, drop spans shorter than ``min_sec``, cut longer than ``max_sec`` into
    ``ceil(d / max_sec)`` equal pieces. A piece's text is its own words when Whisper timed them
    (by word midpoint), else its parent's (a segments file's text goes with every piece)."""
    if min_sec < 0 or max_sec <= 0 or min_sec >= max_sec:
        raise ValueError(f"need 0 <= min ({min_sec}) < max ({max_sec}) segment length")
    out: list[Span] = []
    for s in sorted(spans, key=lambda x: (x.start, x.end)):
        end = min(s.end, duration) if duration is not None else s.end
        if end - s.start < min_sec:
            if end > s.start:
                log.debug("segment [%.2f, %.2f) shorter than %.2f s: left out", s.start, end, min_sec)
            continue
        d = end - s.start
        k = max(1, math.ceil(d / max_sec - 1e-9))
        if k == 1:
            out.append(replace(s, end=round(end, 3)))
            continue
        step = d / k
        for i in range(k):
            a = s.start + i * step
            b = end if i == k - 1 else a + step
            piece = replace(s, start=round(a, 3), end=round(b, 3), source=f"{s.source}+split")
            if s.words:
                ws = tuple(w for w in s.words if a <= (w[0] + w[1]) / 2 < b)
                piece = replace(piece, text=_join(ws), words=ws)
            out.append(piece)
    return out
