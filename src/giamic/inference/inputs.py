"""What ``giamic predict`` accepts and how one input becomes raw modality data (docs/predict.md).

* Inputs: media files, directories (every media file below, sorted) and list files (``.txt``,
  ``.lst``, ``.list``: one path a line, optionally ``<TAB>transcript`` and ``<TAB>audio file``;
  ``#`` comments; relative paths are relative to the list file).
* A separate audio file may go with a video (``--audio``, or the list file's third column): the
  utterance's own audio, starting at the window start like IEMOCAP's per-utterance wavs cut from
  the dialog; it is read from its beginning (the model keeps the first 6 s, as in training).
* One input = one utterance: the time window ``[start, end)`` of the file (default the first 6 s,
  as in training). Audio comes from the file's audio track (a video's own track,
  or an audio file), resampled to 16 kHz mono with the data stage's resampler settings; frames
  come from ``giamic.data.decode_windows`` with the requested crop (docs/decisions.md).
* Long files are never loaded whole: only the window is decoded (``decode_windows`` stops after
  it; audio is read by seeking), so a 2-hour recording costs what its first 6 s cost. A window
  longer than :data:`MAX_WINDOW_SEC` is refused (the model sees 6 s; only ASR reads further).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from giamic.data.audio import mix_and_resample

from .errors import InputError

AUDIO_EXTS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".wma", ".aiff", ".aif"})
VIDEO_EXTS = frozenset({".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts"})
LIST_EXTS = frozenset({".txt", ".lst", ".list"})
DEFAULT_WINDOW_SEC = 6.0  # the first 6 s, as in training
MAX_WINDOW_SEC = 60.0  # longer than any IEMOCAP turn (~35 s); the model itself reads only 6 s
# Audio files up to this length go through the data stage's ``load_audio`` unchanged (the training
# path, byte for byte); longer ones are read window-only so memory stays bounded.
FULL_DECODE_MAX_SEC = 600.0


@dataclass(frozen=True)
class InputItem:
    """One utterance to predict: a media file, and a transcript when one came with it.

    ``audio``: a separate audio file for this utterance whose time 0 is the window start (the
    layout of IEMOCAP's sentence wavs), read from its beginning; without it the audio track of
    ``path`` is used.
    """

    path: Path
    transcript: str | None = None
    origin: str = "argument"  # "argument", "directory DIR" or "LISTFILE:LINE", for error messages
    audio: Path | None = None


def expand_inputs(args: list[str | os.PathLike]) -> list[InputItem]:
    """Turn command-line inputs into items; a missing path stays an item (it fails on its own later).

    Raises:
        InputError: a list file that cannot be read, or a directory without any media file.
    """
    items: list[InputItem] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTS | VIDEO_EXTS)
            if not found:
                raise InputError(f"{p}: directory holds no media file ({', '.join(sorted(AUDIO_EXTS | VIDEO_EXTS))})")
            items.extend(InputItem(f, origin=f"directory {p}") for f in found)
        elif p.suffix.lower() in LIST_EXTS and p.is_file():
            items.extend(read_list_file(p))
        else:
            items.append(InputItem(p))
    return items


def read_list_file(path: Path) -> list[InputItem]:
    """Read a list file: ``path[<TAB>transcript[<TAB>audio]]`` per line (UTF-8); an empty
    transcript column means "no transcript"."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the list file ({e})") from e
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) > 3:
            raise InputError(f"{path}:{n}: expected at most 3 TAB-separated columns (path, transcript, audio)")
        f = path.parent / Path(cols[0].strip())  # an absolute path stays itself
        transcript = cols[1] if len(cols) > 1 and cols[1] != "" else None
        audio = path.parent / Path(cols[2].strip()) if len(cols) > 2 and cols[2].strip() else None
        items.append(InputItem(f, transcript, origin=f"{path}:{n}", audio=audio))
    if not items:
        raise InputError(f"{path}: the list file names no input")
    return items


#: Endings of a one-word ``--transcript`` value that is surely a file name, not what was said.
_FILE_SUFFIXES = frozenset({".txt", ".text", ".md", ".srt", ".vtt", ".json", ".jsonl", ".csv", ".tsv", ".lst", ".list"})


def read_transcript_arg(value: str | None) -> str | None:
    """``--transcript``: the text itself, never a file's contents.

    A value that names an existing file, or one word ending like a text file (``notes.txt``), is
    refused with :class:`InputError` pointing at ``--transcript-file``: a mistyped file name must
    never become the transcript."""
    if value is None:
        return None
    word = value.strip()
    looks_like_file = " " not in word and Path(word).suffix.lower() in _FILE_SUFFIXES
    try:
        is_file = Path(word).is_file()
    except (OSError, ValueError):  # a long text is not a path: the OS refuses the name
        is_file = False
    if is_file or looks_like_file:
        what = "names a file" if is_file else "looks like a file name"
        raise InputError(f"--transcript {value!r} {what}; --transcript takes the text itself, a file goes "
                         f"with --transcript-file FILE")
    return value


def read_transcript_file(path: str | os.PathLike) -> str:
    """``--transcript-file``: the UTF-8 text of ``path``, stripped (:class:`InputError` if unreadable)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise InputError(f"{p}: transcript file not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: transcript file is a directory") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read the transcript file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: transcript file is not UTF-8 text ({e})") from None


@dataclass(frozen=True)
class Window:
    """The part of the input that is one utterance (seconds on the file's timeline)."""

    start: float = 0.0
    end: float | None = None  # None: start + DEFAULT_WINDOW_SEC (or the end of the file)

    def __post_init__(self) -> None:
        if self.start < 0:
            raise InputError(f"window start must be >= 0, got {self.start}")
        if self.end is not None and self.end <= self.start:
            raise InputError(f"window end ({self.end}) must be after its start ({self.start})")
        if self.end is not None and self.end - self.start > MAX_WINDOW_SEC:
            raise InputError(
                f"window [{self.start}, {self.end}) is {self.end - self.start:.1f}s long; at most "
                f"{MAX_WINDOW_SEC:.0f}s is allowed (the model reads the first 6 s; split long recordings "
                f"into utterances with --start/--end)"
            )

    @property
    def stop(self) -> float:
        return self.end if self.end is not None else self.start + DEFAULT_WINDOW_SEC


@dataclass(frozen=True)
class MediaProbe:
    """Which streams a file has and how long it is, read from headers only."""

    path: Path
    has_video: bool
    has_audio: bool
    duration: float | None  # seconds; None when the container does not say


def probe_media(path: Path) -> MediaProbe:
    """Open ``path`` with FFmpeg (PyAV) and list its streams; :class:`InputError` if it is not media."""
    import av

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        with av.open(str(path), mode="r") as c:
            # A still image (jpg/png) opens as a one-frame "video"; it is not an utterance.
            video = [s for s in c.streams.video if s.codec_context.name not in _IMAGE_CODECS or s.frames > 1]
            has_audio = bool(c.streams.audio)
            duration = c.duration / av.time_base if c.duration is not None else None
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a media file FFmpeg can read ({e})") from e
    if not video and not has_audio:
        raise InputError(f"{path}: holds neither a video nor an audio stream")
    return MediaProbe(path, bool(video), has_audio, duration)


_IMAGE_CODECS = frozenset({"mjpeg", "png", "bmp", "tiff", "webp", "gif", "jpeg2000"})


def read_audio_window(path: Path, window: Window, sr: int = 16000) -> np.ndarray:
    """16 kHz mono float32 samples of ``[window.start, window.stop)`` of the file's audio track.

    Audio files libsndfile reads go through ``giamic.data.load_audio`` (the training loader) when no
    longer than :data:`FULL_DECODE_MAX_SEC`, else through a window-only read with the same mixing
    and resampler; other containers (video files, mp3, m4a) are decoded with PyAV from a seek to the
    window start. Raises :class:`InputError` for no samples in the window.
    """
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # not a libsndfile format (video container, mp3 on old libsndfile, ...)
        info = None
    if info is not None and info.frames > 0:
        duration = info.frames / info.samplerate
        if window.start >= duration:
            raise InputError(f"{path}: window starts at {window.start:.3f}s but the audio ends at {duration:.3f}s")
        if duration <= FULL_DECODE_MAX_SEC:
            from giamic.data import load_audio

            wave = load_audio(path, sr=sr)
            piece = wave[int(round(window.start * sr)) : int(round(window.stop * sr))]
        else:
            a, b = int(window.start * info.samplerate), min(info.frames, int(np.ceil(window.stop * info.samplerate)))
            data, file_sr = sf.read(str(path), start=a, stop=b, dtype="float32", always_2d=True)
            piece = mix_and_resample(data, file_sr, sr)
    elif info is not None:
        raise InputError(f"{path}: the audio holds no samples (0 s)")
    else:
        piece = _pyav_audio_window(path, window, sr)
    if piece.size == 0:
        raise InputError(f"{path}: no audio samples in the window [{window.start:.3f}, {window.stop:.3f})s")
    return np.ascontiguousarray(piece, dtype=np.float32)


def _pyav_audio_window(path: Path, window: Window, sr: int) -> np.ndarray:
    import av

    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path), mode="r") as c:
            if not c.streams.audio:
                raise InputError(f"{path}: no audio track")
            stream = c.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            if window.start > 0:
                # Seek lands at or before the start (audio frames are all key frames); trimmed below.
                c.seek(int(window.start / float(stream.time_base)), stream=stream, backward=True)
            # Convert every frame to float planar at its own rate: only the sample type changes here;
            # mixing and resampling are done once below, the way the data stage does them.
            resampler = av.AudioResampler(format="fltp", layout=None, rate=rate)
            first = None
            for frame in c.decode(stream):
                if frame.time is None:
                    raise InputError(f"{path}: audio frame without timestamp")
                t0 = float(frame.time)
                if t0 >= window.stop:
                    break
                for out in resampler.resample(frame):
                    arr = out.to_ndarray()  # [channels, n] float32
                    if first is None:
                        first = t0
                    chunks.append(arr)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except av.FFmpegError as e:
        raise InputError(f"{path}: cannot decode the audio track ({e})") from e
    if not chunks:
        raise InputError(f"{path}: no audio samples in the window [{window.start:.3f}, {window.stop:.3f})s")
    data = np.concatenate(chunks, axis=1)
    # Trim to [start, stop) on the native timeline, then mix and resample.
    a = max(0, int(round((window.start - first) * rate)))
    b = max(a, int(round((window.stop - first) * rate)))
    data = data[:, a:b]
    return mix_and_resample(data.T, int(rate), sr)
