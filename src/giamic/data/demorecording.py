"""A generated multi-minute recording: several speakers, known utterance times, planted emotions.

``make_recording(path, seconds=90, speakers=2)`` writes one video (or audio) file of an
interview-like scene that is *not* IEMOCAP's two-halves layout: each speaker's face sits somewhere
in a wide frame (not on a fixed half), only the current speaker's mouth moves, the others listen
with a neutral face. Each utterance plants one emotion in every modality:

* the face shows it with the demo corpus's drawn expressions (:func:`giamic.data.democorpus.draw_face`);
* the voice has the class's prosody of the demo corpus (pitch level and contour, loudness, syllable
  rate, spectral tilt), rendered through vowel formants with consonant noise so that a voice
  activity detector trained on real speech hears it as speech;
* the text (in the returned truth and in a segments file) is the corpus's wording for the class.

Utterances are separated by 0.7-1.6 s of room noise; a share of them is longer than the model's
6-s window (to exercise the split). The truth (:class:`RecordingInfo`) gives every utterance's
start, end, speaker, emotion and text, and the face box of each speaker, so segmentation, face
choice and labels can be checked end to end without outside data. Deterministic in ``seed``.

The container follows the file extension: ``.mp4`` (H.264 + AAC), ``.webm`` (VP8 + Opus),
``.mkv`` (VP8 + Opus), ``.avi`` (MPEG-4 + PCM), ``.wav`` (audio only). Audio is 16 kHz mono.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from giamic.data.democorpus import _PATCH_H, _PATCH_W, _SPEECH, draw_face, make_text
from giamic.data.iemocap import CLASSES
from giamic.utils.io import atomic_open, write_text_atomic

SR = 16000
# Vowel formants (F1, F2, F3 in Hz) and bandwidths: a crude but speech-like source-filter voice.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
_BANDWIDTHS = (80, 100, 120)
_SKIN = ((224, 186, 152), (168, 120, 90), (236, 204, 178), (120, 84, 62))
_HAIR = ((40, 28, 20), (90, 60, 30), (20, 20, 20), (140, 100, 60))
_F0 = (120.0, 185.0, 150.0, 170.0)
_CODECS = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".webm": ("webm", "libvpx", "libopus"),
    ".mkv": ("matroska", "libvpx", "libopus"),
    ".avi": ("avi", "mpeg4", "pcm_s16le"),
}


@dataclass(frozen=True)
class PlantedUtterance:
    """Ground truth of one utterance of the recording."""

    index: int
    speaker: str  # "A", "B", ...
    start: float
    end: float
    label: str  # the planted emotion (one of the four classes)
    text: str

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class RecordingInfo:
    """What :func:`make_recording` wrote."""

    path: Path
    duration: float
    size: tuple[int, int] | None  # (width, height); None for audio only
    fps: float | None
    has_audio: bool
    speakers: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # drawn face patch (x, y, w, h)
    utterances: list[PlantedUtterance] = field(default_factory=list)

    def segments_csv(self) -> str:
        """The truth as a segments file (``start,end,speaker,text``), as a user would give it."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["start", "end", "speaker", "text"])
        for u in self.utterances:
            w.writerow([f"{u.start:.3f}", f"{u.end:.3f}", u.speaker, u.text])
        return buf.getvalue()

    def to_json(self) -> dict:
        return {"path": str(self.path), "duration": self.duration, "size": self.size, "fps": self.fps,
                "has_audio": self.has_audio, "speakers": self.speakers,
                "utterances": [asdict(u) for u in self.utterances]}


# --------------------------------------------------------------------------- voice


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bw / SR)
    th = 2 * np.pi * freq / SR
    return lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], x)


def synth_voice(shown: str, base_f0: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """A syllabic formant voice with the demo corpus's prosody for class ``shown`` (16 kHz float32).

    Pitch level, contour and excursion, loudness, syllable rate and spectral tilt follow the demo
    corpus's cue for the class. Each syllable is a consonant (fricative noise, a stop's closure and
    burst, a nasal murmur, or none) and a vowel with jittered formants, pitch accent and loudness,
    with short pauses between words: varied enough for a voice activity detector trained on real
    speech to keep hearing speech over minutes (a stationary buzz makes it habituate).
    """
    p = _SPEECH[shown]
    n = int(duration * SR)
    t = np.arange(n) / SR
    u = t / max(duration, 1e-3)
    f0 = base_f0 * p["f0"] * np.exp(rng.normal(0, 0.04))
    # The class's cues within the range a voice activity detector still hears as speech: very slow,
    # quiet or dull voices (the corpus's sad cue) are brought up to a slow, soft but clear one.
    rate = max(3.4, p["rate"]) * np.exp(rng.normal(0, 0.06))
    walk = np.cumsum(rng.normal(0, 0.002, n))  # slow pitch drift (jitter)
    contour = 2.0 ** (p["slope"] * (u - 0.5) + p["depth"] * np.sin(2 * np.pi * rate * 0.5 * t + rng.uniform(0, 6.3))
                      + np.clip(walk, -0.08, 0.08))
    out = np.zeros(n)
    grid = np.arange(2048) / 2048
    k = np.arange(1, 25)[:, None]
    table = (np.sin(2 * np.pi * k * grid[None, :]) / k ** min(1.0, p["tilt"] * 0.6)).sum(0)
    table /= np.abs(table).max()
    pos = 0
    first = True
    while pos < n - 400:
        syl = int(SR / rate * rng.uniform(0.6, 1.4))
        e = min(n, pos + syl)
        m = e - pos
        kind = "v" if first else ("f", "s", "n", "v")[rng.integers(4)]
        c_len = 0 if kind == "v" else min(m // 3, int(SR * rng.uniform(0.04, 0.09)))
        accent = np.exp(rng.normal(0, 0.06))
        ph = np.cumsum(f0 * accent * contour[pos:e]) / SR
        src = table[(ph * 2048).astype(np.int64) % 2048]
        vowel = _VOWELS[0 if first else rng.integers(len(_VOWELS))]  # an open vowel first: a clear onset
        jit = np.exp(rng.normal(0, 0.08, 3))
        y = sum(_resonator(src, f * j, b) for f, j, b in zip(vowel, jit, _BANDWIDTHS))
        y = y / (np.abs(y).max() + 1e-9)
        env = np.zeros(m)
        v_len = m - c_len
        env[c_len:] = np.sin(np.pi * np.arange(v_len) / v_len) ** 0.6
        seg = y * env * rng.uniform(0.6, 1.0)
        if kind == "f":  # fricative: band noise before the vowel
            nz = _resonator(rng.normal(0, 1, c_len), rng.uniform(3000, 6000), 1500)
            seg[:c_len] += 0.3 * nz / (np.abs(nz).max() + 1e-9) * np.hanning(c_len)
        elif kind == "s":  # stop: silence, then a short burst at the vowel onset
            b_len = min(c_len, int(0.012 * SR))
            nz = _resonator(rng.normal(0, 1, b_len), rng.uniform(1500, 4000), 2000)
            seg[c_len - b_len : c_len] += 0.4 * nz / (np.abs(nz).max() + 1e-9)
        elif kind == "n":  # nasal murmur: the voice through one low resonance
            mur = _resonator(src[:c_len], 250, 60)
            seg[:c_len] += 0.4 * mur / (np.abs(mur).max() + 1e-9)
        out[pos:e] = seg
        pos = e
        first = False
        if rng.random() < 0.18:
            pos += int(SR * rng.uniform(0.06, 0.14))  # a pause between words
    out *= np.minimum(1.0, np.minimum(t, duration - t) / 0.02)
    out = max(0.3, p["amp"]) * np.exp(rng.normal(0, 0.08)) * out / (np.abs(out).max() + 1e-9)
    return np.clip(out, -0.99, 0.99).astype(np.float32)


# --------------------------------------------------------------------------- plan


def plan_recording(seconds: float = 90.0, speakers: int = 2, seed: int = 0, long_share: float = 0.12
                   ) -> list[PlantedUtterance]:
    """Who says what when: utterances of 1.5-5.5 s (a ``long_share`` of 7-10 s), gaps of 0.7-1.6 s."""
    if not 1 <= speakers <= 4:
        raise ValueError("speakers must be 1..4")
    if seconds < 5:
        raise ValueError("seconds must be >= 5")
    rng = np.random.default_rng([seed, 7])
    names = [chr(ord("A") + i) for i in range(speakers)]
    out: list[PlantedUtterance] = []
    t = round(0.8 + rng.uniform(0, 0.4), 3)
    prev = None
    while True:
        dur = rng.uniform(7.0, 10.0) if rng.random() < long_share else rng.uniform(1.5, 5.5)
        end = round(t + dur, 3)
        if end > seconds - 0.6:
            break
        choices = [s for s in names if s != prev] or names
        who = choices[rng.integers(len(choices))] if rng.random() > 0.15 or prev is None else prev
        label = CLASSES[rng.integers(len(CLASSES))]
        out.append(PlantedUtterance(len(out), who, t, end, label, make_text(label, rng)))
        prev = who
        t = round(end + rng.uniform(0.7, 1.6), 3)
    if not out:
        raise ValueError(f"{seconds} s is too short for one utterance")
    return out


def _layout(size: tuple[int, int], speakers: int) -> tuple[dict[str, tuple[int, int, int, int]], float]:
    """Face patch boxes: spread across the width at different heights (not IEMOCAP's halves)."""
    w, h = size
    scale = min(h * 0.5 / _PATCH_H, (w / speakers) * 0.92 / _PATCH_W)
    pw, ph = int(_PATCH_W * scale), int(_PATCH_H * scale)
    if pw < 100 or ph < 70:
        raise ValueError(f"frame {w}x{h} is too small for {speakers} speakers' faces (need >= 100x70 px each)")
    boxes = {}
    slot = w / speakers
    heights = (0.22, 0.34, 0.16, 0.30)
    for i in range(speakers):
        x = int(slot * i + (slot - pw) * (0.3 if i % 2 == 0 else 0.7))
        y = int(h * heights[i])
        boxes[chr(ord("A") + i)] = (x, y, pw, ph)
    return boxes, scale


# --------------------------------------------------------------------------- writing


def make_recording(
    path: str | os.PathLike,
    seconds: float = 90.0,
    speakers: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (426, 240),
    fps: float = 10.0,
    long_share: float = 0.12,
    audio: bool = True,
) -> RecordingInfo:
    """Write the recording to ``path`` (container from the extension) and return its truth."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext != ".wav" and ext not in _CODECS:
        raise ValueError(f"{path}: extension must be one of {', '.join(sorted(_CODECS))} or .wav")
    if ext == ".wav" and not audio:
        raise ValueError("an audio-only recording needs audio")
    utts = plan_recording(seconds, speakers, seed, long_share)
    rng = np.random.default_rng([seed, 8])
    names = sorted({u.speaker for u in utts} | {chr(ord("A") + i) for i in range(speakers)})
    f0 = {s: _F0[i] for i, s in enumerate(names)}
    wave = rng.normal(0, 0.003, int(seconds * SR)).astype(np.float32)  # room noise floor
    for u in utts:
        x = synth_voice(u.label, f0[u.speaker], u.duration, rng)
        i0 = int(round(u.start * SR))
        wave[i0 : i0 + len(x)] += x[: len(wave) - i0]
    wave = np.clip(wave, -1, 1)
    info = RecordingInfo(path, float(seconds), None if ext == ".wav" else tuple(size), None if ext == ".wav" else fps,
                         audio, utterances=utts)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".wav":
        import soundfile as sf

        with atomic_open(path, "wb") as f:
            sf.write(f, wave, SR, subtype="PCM_16", format="WAV")
        return info
    boxes, scale = _layout(size, speakers)
    info.speakers = boxes
    _write_av(path, _CODECS[ext], wave if audio else None, utts, boxes, scale, size, fps, seconds, seed)
    return info


def _scene(size: tuple[int, int], bg: tuple) -> np.ndarray:
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    img[int(h * 0.82):] = (70, 52, 40)  # a table across the bottom
    img[int(h * 0.80):int(h * 0.82)] = (50, 36, 28)
    return img


def _write_av(path, codecs, wave, utts, boxes, scale, size, fps, seconds, seed) -> None:
    import av
    from av.video.reformatter import VideoReformatter

    fmt, vcodec, acodec = codecs
    w, h = size
    bg = (96, 112, 128)
    base = _scene(size, bg)
    rng = np.random.default_rng([seed, 9])
    speaker_idx = {s: i for i, s in enumerate(sorted(boxes))}
    shifts = {u.index: (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))) for u in utts}
    patch_cache: dict = {}

    def patch(s: str, expr: str, mouth: float, shift) -> np.ndarray:
        key = (s, expr, mouth, shift)
        if key not in patch_cache:
            i = speaker_idx[s]
            img = draw_face(expr, mouth, _SKIN[i], _HAIR[i], markers=False, bg=bg, shift=shift)
            _, _, pw, ph = boxes[s]
            yi = np.minimum((np.arange(ph) / scale).astype(int), _PATCH_H - 1)
            xi = np.minimum((np.arange(pw) / scale).astype(int), _PATCH_W - 1)
            patch_cache[key] = img[yi][:, xi]
        return patch_cache[key]

    rate = Fraction(fps).limit_denominator(1001)
    with atomic_open(path, "wb") as f:
        container = av.open(f, mode="w", format=fmt)
        vs = container.add_stream(vcodec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.thread_count = 1  # deterministic output
        if vcodec == "libx264":
            vs.options = {"preset": "veryfast", "crf": "23"}
        else:
            vs.bit_rate = int(800_000 * (w * h) / (426 * 240))
        vs.codec_context.gop_size = int(2 * fps)
        astream = None
        if wave is not None:
            astream = container.add_stream(acodec, rate=SR if acodec != "libopus" else 48000)
            astream.layout = "mono"
        n_frames = int(seconds * float(rate))
        reformatter = VideoReformatter()
        frames: dict = {}
        ui = 0
        for i in range(n_frames):
            t = i / float(rate)
            while ui < len(utts) and utts[ui].end <= t:
                ui += 1
            cur = utts[ui] if ui < len(utts) and utts[ui].start <= t else None
            keys = []
            for s in sorted(boxes):
                if cur is not None and cur.speaker == s:
                    syl = _SPEECH[cur.label]["rate"]
                    mouth = float(np.sin(np.pi * syl * (t - cur.start)) > 0)
                    keys.append((s, cur.label, mouth, shifts[cur.index]))
                else:
                    keys.append((s, "neu", 0.0, (0, 0)))
            fkey = tuple(keys)
            frame = frames.get(fkey)
            if frame is None:
                img = base.copy()
                for key in keys:
                    x, y, pw, ph = boxes[key[0]]
                    img[y : y + ph, x : x + pw] = patch(*key)
                frame = reformatter.reformat(av.VideoFrame.from_ndarray(img, format="rgb24"), format="yuv420p")
                frames[fkey] = frame
            frame.pts = i
            frame.time_base = 1 / rate
            for pkt in vs.encode(frame):
                container.mux(pkt)
        for pkt in vs.encode():
            container.mux(pkt)
        if astream is not None:
            pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
            step = 1600
            resampler = None
            if acodec == "libopus":
                resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
            for s0 in range(0, len(pcm), step):
                fr = av.AudioFrame.from_ndarray(pcm[None, s0 : s0 + step], format="s16", layout="mono")
                fr.sample_rate, fr.pts, fr.time_base = SR, s0, Fraction(1, SR)
                outs = resampler.resample(fr) if resampler is not None else [fr]
                for o in outs:
                    for pkt in astream.encode(o):
                        container.mux(pkt)
            if resampler is not None:
                for o in resampler.resample(None):
                    for pkt in astream.encode(o):
                        container.mux(pkt)
            for pkt in astream.encode():
                container.mux(pkt)
        container.close()


def write_segments_file(info: RecordingInfo, path: str | os.PathLike) -> Path:
    """Write the truth as a ``start,end,speaker,text`` CSV segments file."""
    path = Path(path)
    write_text_atomic(path, info.segments_csv())
    return path


# --------------------------------------------------------------------------- face detector test frames


def render_test_frames() -> list[tuple[str, np.ndarray, list[tuple[int, int, int, int]]]]:
    """Generated frames with known face boxes (for ``bench/faces.py``): four expressions, mouth
    open and closed, two and three speakers, at 426×240 and 640×360."""
    out = []
    bg = (96, 112, 128)
    for size, speakers in (((426, 240), 2), ((640, 360), 2), ((640, 360), 3)):
        boxes, scale = _layout(size, speakers)
        for expr in CLASSES:
            for mouth in (0.0, 1.0):
                img = _scene(size, bg)
                refs = []
                for i, s in enumerate(sorted(boxes)):
                    x, y, pw, ph = boxes[s]
                    face = draw_face(expr if i == 0 else "neu", mouth if i == 0 else 0.0, _SKIN[i], _HAIR[i], False, bg)
                    yi = np.minimum((np.arange(ph) / scale).astype(int), _PATCH_H - 1)
                    xi = np.minimum((np.arange(pw) / scale).astype(int), _PATCH_W - 1)
                    img[y : y + ph, x : x + pw] = face[yi][:, xi]
                    # The drawn face: an ellipse of 88×108 patch pixels (with hair) centred in the patch.
                    fw, fh = int(88 * scale), int(112 * scale)
                    refs.append((x + (pw - fw) // 2, y + int(2 * scale), fw, fh))
                out.append((f"{size[0]}x{size[1]} {speakers} speakers {expr} mouth {mouth:.0f}", img, refs))
    return out
