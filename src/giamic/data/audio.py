"""Audio input: decoding, resampling, the 6-s crop/pad policy and per-utterance normalisation.

The paper feeds "6 seconds of audio at a 16 kHz sampling rate"; we take the first 6 s, right-pad
with zeros and keep the valid-sample count for the attention mask, and normalise each utterance to
zero mean / unit variance over its valid samples before padding (docs/decisions.md, the 6-s audio
window). One code path for extraction, training and prediction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from giamic.data.errors import MediaError

SAMPLE_RATE = 16000  # the paper's 16 kHz
MAX_SEC = 6.0  # the paper's 6 s of audio
MAX_SAMPLES = int(SAMPLE_RATE * MAX_SEC)  # 96,000 -> 299 WavLM frames (total conv stride 320)
# libsndfile's own formats: a file with one of these suffixes that libsndfile cannot read is corrupt.
# Any other file (mp4, mkv, avi, m4a, ...) is read with FFmpeg, taking its first audio track.
SNDFILE_EXTS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64"})


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file, read without decoding the samples."""

    path: Path
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def is_standard(self) -> bool:
        """True for the corpus format the models expect (16 kHz mono), i.e. no conversion needed."""
        return self.sample_rate == SAMPLE_RATE and self.channels == 1


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read an audio file's header; :class:`MediaError` if it is missing, unreadable or empty.

    A container libsndfile cannot read (a video with an audio track) is probed with FFmpeg.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError("audio file not found", path, kind="missing_audio")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        # Not a format libsndfile reads: a video or other container holding an audio track.
        container = None if path.suffix.lower() in SNDFILE_EXTS else _container_audio_info(path)
        if container is None:
            raise MediaError(f"cannot read audio ({e})", path, kind="corrupt_audio") from e
        return container
    if info.frames <= 0:
        raise MediaError("audio file holds no samples", path, kind="empty_audio")
    return AudioInfo(path=path, sample_rate=int(info.samplerate), channels=int(info.channels), frames=int(info.frames))


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``sr`` Hz.

    Multi-channel files are down-mixed by averaging the channels; other sample rates are
    converted with soxr's high-quality resampler (the encoders take 16 kHz mono). Files that are
    not libsndfile formats (a video or other container: mp4, mkv, avi, m4a, ...) are decoded with
    FFmpeg (PyAV), taking the first audio track, then mixed and resampled the same way. Raises
    :class:`MediaError` naming the file for a missing, unreadable, corrupt or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError("audio file not found", path, kind="missing_audio")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        decoded = None if path.suffix.lower() in SNDFILE_EXTS else _decode_container_audio(path)
        if decoded is None:
            raise MediaError(f"cannot decode audio ({e})", path, kind="corrupt_audio") from e
        data, file_sr = decoded
    if data.shape[0] == 0:
        raise MediaError("audio file holds no samples", path, kind="empty_audio")
    return mix_and_resample(data, file_sr, sr)


def mix_and_resample(data: np.ndarray, file_sr: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``[n, channels]`` samples at ``file_sr`` -> mono float32 at ``sr`` (the one conversion used
    by every reader: training, extraction and prediction).

    Averaging keeps the level of a signal recorded identically on both channels; soxr's
    high-quality resampler does the rate conversion.
    """
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if file_sr != sr and wave.size:
        wave = soxr.resample(wave, file_sr, sr, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def _container_audio_info(path: Path) -> AudioInfo | None:
    """Header facts of the first audio track of a container; ``None`` when FFmpeg cannot open it.

    A container without an audio track, or with an empty one, is a :class:`MediaError`.
    """
    import av

    try:
        with av.open(str(path), mode="r") as c:
            if not c.streams.audio:
                raise MediaError("no audio track in this file", path, kind="missing_audio")
            stream = c.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            channels = int(stream.codec_context.channels or 0)
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif c.duration is not None:
                seconds = c.duration / av.time_base
            else:
                seconds = None
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None
    if seconds is None:  # the container does not say: count the samples
        decoded = _decode_container_audio(path)
        frames = 0 if decoded is None else decoded[0].shape[0]
    else:
        frames = int(round(seconds * rate))
    if frames <= 0 or rate <= 0:
        raise MediaError("the audio track holds no samples", path, kind="empty_audio")
    return AudioInfo(path=path, sample_rate=rate, channels=channels or 1, frames=frames)


def _decode_container_audio(path: Path) -> tuple[np.ndarray, int] | None:
    """``([n, channels] float32, rate)`` of a container's first audio track, at its own rate.

    Only the sample type is converted here; down-mixing and resampling are left to
    :func:`mix_and_resample`, as for every other file. ``None`` when FFmpeg cannot open the file.
    """
    import av

    chunks: list[np.ndarray] = []
    first: float | None = None  # the timestamp of the first decoded frame, seconds
    try:
        with av.open(str(path), mode="r") as c:
            if not c.streams.audio:
                raise MediaError("no audio track in this file", path, kind="missing_audio")
            stream = c.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            resampler = av.AudioResampler(format="fltp", layout=None, rate=rate)
            for frame in c.decode(stream):
                if first is None:
                    first = float(frame.time) if frame.time is not None else 0.0
                chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    except av.FFmpegError as e:
        if not chunks:
            return None
        raise MediaError(f"cannot decode the audio track ({e})", path, kind="corrupt_audio") from e
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not chunks:
        return np.zeros((0, 1), np.float32), rate
    data = np.concatenate(chunks, axis=1)
    # Samples are placed at their timestamps, so sample i is at i / rate seconds on the file's
    # timeline (the video's too): an encoder's priming samples before time 0 are dropped, a track
    # that starts late is preceded by silence.
    if first is not None and first < 0:
        data = data[:, int(round(-first * rate)):]
    elif first:
        data = np.concatenate([np.zeros((data.shape[0], int(round(first * rate))), np.float32), data], axis=1)
    return np.ascontiguousarray(data.T, dtype=np.float32), rate


def choose_offset(
    n_samples: int,
    max_samples: int,
    mode: Literal["first", "random"] = "first",
    rng: np.random.Generator | None = None,
) -> int:
    """Start sample of the crop window (``crop = first | random_train``; docs/decisions.md).

    ``"first"`` always returns 0. ``"random"`` draws a uniform start in ``[0, n - max]`` (0 when the
    wave is not longer than the window); pass the same offset (in seconds) to the video window so
    the two modalities stay aligned.
    """
    if mode == "first" or n_samples <= max_samples:
        return 0
    if mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        return int(rng.integers(0, n_samples - max_samples + 1))
    raise ValueError(f"unknown crop mode {mode!r} (expected 'first' or 'random')")


def crop_or_pad(
    wave: np.ndarray,
    max_samples: int = MAX_SAMPLES,
    mode: Literal["first", "random"] = "first",
    offset: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, int]:
    """Cut ``wave`` to ``max_samples`` and right-pad with zeros (the first 6 s by default).

    Returns ``(window [max_samples] float32, valid)`` where ``valid`` counts the real samples,
    from which the encoder derives its attention mask. An explicit ``offset`` wins over ``mode``.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"crop_or_pad expects a 1-D wave, got shape {wave.shape}")
    if max_samples <= 0:
        raise ValueError("max_samples must be positive")
    n = wave.shape[0]
    if offset is None:
        offset = choose_offset(n, max_samples, mode, rng)
    if offset < 0 or (n > 0 and offset >= n):
        raise ValueError(f"offset {offset} outside a wave of {n} samples")
    piece = wave[offset : offset + max_samples]
    valid = int(piece.shape[0])
    out = np.zeros(max_samples, dtype=np.float32)
    out[:valid] = piece
    return out, valid


def normalize_wave(wave: np.ndarray, valid: int | None = None, eps: float = 1e-7) -> np.ndarray:
    """Zero mean / unit variance over the first ``valid`` samples; padding stays exactly zero.

    WavLM-Large was trained on per-utterance normalised waveforms; statistics are
    taken over the real samples only, so the amount of padding does not change the result. This is
    done here explicitly rather than relying on a feature extractor's ``do_normalize`` setting;
    the formula ``(x - mean) / sqrt(var + 1e-7)`` is the one of that setting in ``transformers``.
    """
    wave = np.asarray(wave, dtype=np.float32)
    valid = wave.shape[0] if valid is None else int(valid)
    if not 0 <= valid <= wave.shape[0]:
        raise ValueError(f"valid={valid} outside a wave of {wave.shape[0]} samples")
    out = np.zeros_like(wave)
    if valid == 0:
        return out
    seg = wave[:valid].astype(np.float64)
    mean = seg.mean()
    std = seg.std()
    out[:valid] = ((seg - mean) / np.sqrt(std * std + eps)).astype(np.float32)
    return out
