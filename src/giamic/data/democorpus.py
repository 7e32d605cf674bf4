"""A small synthetic corpus in exactly IEMOCAP's on-disk layout (docs/data.md, the demo corpus).

``make_corpus(out, seed=...)`` writes ``Session1`` … ``Session5`` with dialog videos (two actors
side by side, marker dots on the left actor), per-utterance 16 kHz mono wavs, whole-dialog wavs,
EmoEvaluation files in the release's format (header line, annotator lines, labels outside the four
classes, a per-annotator subfolder and ``._`` resource forks to be ignored) and transcriptions
(with non-evaluated segment lines). The IEMOCAP reader reads it like the real corpus.

Each modality carries real but partial evidence, drawn independently per utterance, so that no
single modality is perfect and fusion can do better:

* speech: pitch level and contour, energy, syllable rate (tempo) and spectral brightness;
  a share of utterances swap valence while keeping arousal (angry ↔ happy, neutral ↔ sad);
* face (speaker's half): mouth curve and openness, brow angle, eye shape and a skin tint;
  a share of speakers keep a neutral or a wrong face; the listener on the other half shows a
  different emotion, so a crop of the wrong side misleads;
* text: emotional word choice; a share of emotional utterances use neutral wording and a share of
  neutral ones carry emotional words.

The cues are large shapes, contrasts and spectral differences so that even encoders with random
weights (the demo's tiny ViT and WavLM) map them to separable features. Deterministic in ``seed``.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
import soundfile as sf

from giamic.data.iemocap import CLASSES, LABEL_MAP
from giamic.utils.io import atomic_open, write_json_atomic, write_text_atomic

SR = 16000
# Share of utterances whose cue in a modality shows the true class (the rest are confusable).
DEFAULT_RELIABILITY = {"speech": 0.7, "face": 0.65, "text": 0.6}
# Dialog names per session: both marker-wearer letters, an impro letter suffix, script part indices.
DIALOG_TEMPLATES = ("{s}F_impro01", "{s}M_impro02a", "{s}F_script01_2", "{s}M_script02_1")
FILTERED_LABELS = ("xxx", "fru", "oth", "sur")

# Speech cues per shown class: f0 factor, f0 contour slope (octaves over the turn), f0 excursion
# depth, amplitude, syllables per second, spectral tilt (harmonic amplitude ~ 1/k^tilt).
_SPEECH = {
    "neu": dict(f0=1.00, slope=0.00, depth=0.03, amp=0.30, rate=4.0, tilt=1.6),
    "ang": dict(f0=1.35, slope=-0.15, depth=0.08, amp=0.80, rate=5.5, tilt=0.7),
    "hap": dict(f0=1.45, slope=0.25, depth=0.20, amp=0.55, rate=5.0, tilt=1.1),
    "sad": dict(f0=0.80, slope=-0.30, depth=0.02, amp=0.14, rate=2.6, tilt=2.4),
}
# Valence swap keeps arousal: what speech shows when its cue is not the true one.
_SPEECH_CONFUSION = {"neu": "sad", "sad": "neu", "ang": "hap", "hap": "ang"}
_TEXT = {
    "neu": ["we should talk about the schedule", "the meeting is at three", "I put the keys on the table",
            "let me check the address", "I went to the store this morning", "what time does the train leave",
            "the car is parked outside", "I will call them tomorrow"],
    "ang": ["this is ridiculous, stop lying to me", "I am so angry with you", "get out, I hate this",
            "you never listen, it is unfair", "how dare you do that to me", "I am sick of your excuses"],
    "hap": ["that is wonderful news, I love it", "we did it, I am so happy", "what a lovely surprise, thank you",
            "this is great, I am thrilled", "I got the job, isn't it amazing", "you made my day, I adore it"],
    "sad": ["I miss him so much", "I feel so lonely and tired", "nothing will ever be the same",
            "I lost everything, I am so sorry", "it hurts, I can't stop crying", "everyone left me alone"],
}
_FILLERS = ["well,", "you know,", "okay,", "so,", "look,", "I mean,"]
_CAT_NAMES = {"neu": "Neutral state", "ang": "Anger", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
              "fru": "Frustration", "xxx": "Other", "oth": "Other", "sur": "Surprise"}
_VAD = {"neu": (3.0, 2.5, 2.5), "ang": (1.5, 4.0, 4.0), "hap": (4.0, 3.5, 3.0), "exc": (4.0, 4.0, 3.0),
        "sad": (1.5, 2.0, 2.0), "fru": (2.0, 3.5, 3.0), "xxx": (2.5, 3.0, 3.0), "oth": (3.0, 3.0, 3.0),
        "sur": (3.5, 4.0, 2.5)}


@dataclass(frozen=True)
class DemoUtterance:
    """Ground truth of one generated utterance (what each modality was made to show)."""

    utt_id: str
    raw_label: str  # as written in EmoEvaluation (may be exc, or a label outside the 4 classes)
    label: str | None  # 4-class label, None when filtered out by the reader
    start: float
    end: float
    speech_shows: str
    face_shows: str
    text_shows: str
    listener_shows: str
    side: str
    transcript: str


@dataclass
class CorpusInfo:
    """What :func:`make_corpus` wrote, with the counts the IEMOCAP reader must find."""

    root: Path
    seed: int
    utterances: list[DemoUtterance] = field(default_factory=list)

    @property
    def kept(self) -> list[DemoUtterance]:
        return [u for u in self.utterances if u.label is not None]

    @property
    def total(self) -> int:
        return len(self.kept)

    @property
    def by_class(self) -> dict[str, int]:
        return {c: sum(1 for u in self.kept if u.label == c) for c in CLASSES}

    @property
    def by_session(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for u in self.kept:
            out[u.utt_id[:5]] = out.get(u.utt_id[:5], 0) + 1
        return dict(sorted(out.items()))

    def expected_counts(self):
        """The counts as an :class:`~giamic.data.iemocap.ExpectedCounts` for ``prepare_iemocap``."""
        from giamic.data.iemocap import ExpectedCounts

        return ExpectedCounts(self.total, self.by_class, self.by_session, name=f"the demo corpus (seed {self.seed})")


# --------------------------------------------------------------------------- speech


def synth_speech(shown: str, base_f0: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal whose prosody and timbre follow ``shown``."""
    p = _SPEECH[shown]
    n = int(duration * SR)
    t = np.arange(n) / SR
    u = t / max(duration, 1e-3)
    # Per-utterance jitter of every cue so classes overlap a little even when the cue is "true".
    f0 = base_f0 * p["f0"] * np.exp(rng.normal(0, 0.05))
    rate = p["rate"] * np.exp(rng.normal(0, 0.08))
    contour = 2.0 ** (p["slope"] * (u - 0.5) + p["depth"] * np.sin(2 * np.pi * rate * 0.5 * t + rng.uniform(0, 6.3)))
    f = f0 * contour
    phase = np.cumsum(f) / SR  # in cycles
    # Wavetable synthesis: one period of 16 harmonics with amplitude 1/k^tilt, read at the
    # instantaneous phase. 16 harmonics of the highest f0 (~400 Hz) stay below Nyquist.
    grid = np.arange(2048) / 2048
    k = np.arange(1, 17)[:, None]
    table = (np.sin(2 * np.pi * k * grid[None, :]) / k ** p["tilt"]).sum(0)
    harm = table[(phase * 2048).astype(np.int64) % 2048]
    # Syllables: raised-cosine bursts at the speaking rate, with short pauses.
    syl = np.clip(np.sin(np.pi * rate * t + rng.uniform(0, 1)) , 0, None) ** 1.5
    env = syl * np.minimum(1.0, np.minimum(t, duration - t) / 0.05)
    noise = rng.normal(0, 1, n) * (0.04 + 0.15 * (p["tilt"] < 1.0))  # breathy/harsh noise for high arousal
    x = p["amp"] * np.exp(rng.normal(0, 0.1)) * (harm / np.abs(harm).max() + noise) * env
    x += rng.normal(0, 0.003, n)  # room noise floor
    return np.clip(x, -0.99, 0.99).astype(np.float32)


# --------------------------------------------------------------------------- faces

_PATCH_H, _PATCH_W = 120, 176  # the IEMOCAP fixed window (350×240 at 720×480) scaled to 360×240


def _seg_mask(yy, xx, p0, p1, width):
    """Pixels within ``width/2`` of the segment p0-p1 (points as (x, y))."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy or 1.0
    tt = np.clip(((xx - x0) * dx + (yy - y0) * dy) / L2, 0, 1)
    px, py = x0 + tt * dx, y0 + tt * dy
    return (xx - px) ** 2 + (yy - py) ** 2 <= (width / 2) ** 2


def draw_face(expr: str, mouth_open: float, skin: tuple, hair: tuple, markers: bool, bg: tuple,
              shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One actor's face patch (``_PATCH_H × _PATCH_W`` RGB) showing ``expr``.

    Large features on purpose: mouth curve (smile / frown / flat / open and tense), brow angle
    (V for anger, raised inner ends for sadness, high arch for happiness), eye openness and a tint.
    """
    canvas = _face_canvas(expr, mouth_open, tuple(skin), tuple(hair), markers, tuple(bg))
    m = _MARGIN
    dx, dy = int(np.clip(shift[0], -m, m)), int(np.clip(shift[1], -m, m))
    # A shifted face is a shifted slice of one drawing on a canvas with a margin.
    return canvas[m - dy : m - dy + _PATCH_H, m - dx : m - dx + _PATCH_W].copy()


_MARGIN = 4


@functools.lru_cache(maxsize=512)
def _face_canvas(expr: str, mouth_open: float, skin: tuple, hair: tuple, markers: bool, bg: tuple) -> np.ndarray:
    h, w = _PATCH_H + 2 * _MARGIN, _PATCH_W + 2 * _MARGIN
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = bg
    cx, cy = w / 2, h / 2 + 4
    tint = {"neu": (0, 0, 0), "ang": (60, -25, -25), "hap": (20, 15, -10), "sad": (-30, -10, 35)}[expr]
    face = ((xx - cx) / 44) ** 2 + ((yy - cy) / 54) ** 2 <= 1
    hair_m = (((xx - cx) / 48) ** 2 + ((yy - cy + 10) / 58) ** 2 <= 1) & (yy < cy - 30)
    img[hair_m] = hair
    img[face] = np.clip(np.asarray(skin) + np.asarray(tint), 0, 255)
    dark = (25, 20, 20)
    # Eyes: openness by class.
    eye_h = {"neu": 6, "ang": 3, "hap": 3.5, "sad": 3}[expr]
    for ex in (cx - 17, cx + 17):
        eye = ((xx - ex) / 8) ** 2 + ((yy - (cy - 10)) / eye_h) ** 2 <= 1
        img[eye] = dark
    # Brows: inner/outer heights relative to the eyes.
    inner, outer = {"neu": (-22, -22), "ang": (-14, -27), "hap": (-30, -27), "sad": (-30, -18)}[expr]
    for sgn in (-1, 1):
        p_in = (cx + sgn * 6, cy + inner)
        p_out = (cx + sgn * 30, cy + outer)
        img[_seg_mask(yy, xx, p_in, p_out, 5)] = dark
    # Mouth: a thick parabola y = my + curv * ((x - cx)/half)^2, plus an opening while talking.
    my = cy + 28
    half = {"neu": 16, "ang": 18, "hap": 22, "sad": 17}[expr]
    # bend > 0: centre lower than the corners (smile); bend < 0: frown (image y grows downwards).
    bend = {"neu": 0.0, "ang": 0.0, "hap": 10.0, "sad": -9.0}[expr]
    rel = (xx - cx) / half
    inside = np.abs(rel) <= 1
    curve_y = my + bend * (1 - rel**2) - bend / 2
    opening = mouth_open * (9 if expr == "ang" else 6) + (6 if expr == "ang" else 0)
    mouth = inside & (yy >= curve_y - 2) & (yy <= curve_y + 2 + opening)
    img[mouth] = (120, 20, 30) if opening > 0 else dark
    if expr == "ang":  # bared teeth: a light band at the top of the open mouth
        teeth = inside & (yy >= curve_y - 2) & (yy <= curve_y + 1)
        img[teeth] = (235, 225, 160)  # ivory, so that only the markers are near-white
    if markers:  # motion-capture markers of the recording's marker wearer
        for mx, myy in ((-25, -2), (25, -2), (-30, 18), (30, 18), (0, 10), (-12, 40), (12, 40), (0, -38)):
            dot = (xx - (cx + mx)) ** 2 + (yy - (cy + myy)) ** 2 <= 4
            img[dot] = (250, 250, 250)
    return img.astype(np.uint8)


# --------------------------------------------------------------------------- text


def make_text(shown: str, rng: np.random.Generator) -> str:
    core = _TEXT[shown][rng.integers(len(_TEXT[shown]))]
    parts = []
    if rng.random() < 0.4:
        parts.append(_FILLERS[rng.integers(len(_FILLERS))])
    parts.append(core)
    s = " ".join(parts)
    s = s[0].upper() + s[1:]
    end = "!" if shown in ("ang", "hap") and rng.random() < 0.6 else "."
    return s + end


# --------------------------------------------------------------------------- corpus


def _pick_other(true: str, rng: np.random.Generator) -> str:
    others = [c for c in CLASSES if c != true]
    return others[rng.integers(len(others))]


def make_corpus(
    out: str | os.PathLike,
    seed: int = 0,
    n_per_dialog: int = 10,
    sessions: int = 5,
    dialogs_per_session: int = 4,
    fps: float = 10.0,
    size: tuple[int, int] = (360, 240),
    filtered_share: float = 0.15,
    reliability: dict[str, float] | None = None,
    dialog_wav: bool = True,
) -> CorpusInfo:
    """Write the demo corpus to ``out`` (an ``IEMOCAP_full_release``-like root) and return its truth.

    ``n_per_dialog`` utterances in the four classes per dialog (plus about ``filtered_share`` more
    with labels the reader leaves out), ``dialogs_per_session`` (2-4) dialogs per session, videos of
    ``size`` at ``fps`` (mpeg4 in AVI, like the release's DivX files).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(seed, n_per_dialog, sessions, dialogs_per_session, filtered_share, reliability)
    # A separate stream for the media, so the plan (labels, cues, texts) does not depend on rendering.
    rng = np.random.default_rng([seed, 1])
    info = CorpusInfo(root=out, seed=seed)
    width, height = size
    for sp in plan:
        sdir = out / f"Session{int(sp.session[3:])}"
        for dialog, utts in sp.dialogs.items():
            marker = dialog[5]
            waves = {}
            for u in utts:
                g = u.utt_id.rsplit("_", 1)[1][0]
                waves[u.utt_id] = synth_speech(u.speech_shows, sp.actors[g]["f0"], u.end - u.start, rng)
            _write_dialog(sdir, dialog, marker, utts, waves, sp.actors, sp.bg, rng, fps, width, height, dialog_wav)
            info.utterances.extend(utts)
    _write_readme(out, info, fps, size)
    return info


@dataclass
class SessionPlan:
    """Actors, studio colour and utterances of one session (no media)."""

    session: str
    actors: dict
    bg: tuple
    dialogs: dict[str, list[DemoUtterance]]


def plan_corpus(
    seed: int = 0,
    n_per_dialog: int = 10,
    sessions: int = 5,
    dialogs_per_session: int = 4,
    filtered_share: float = 0.15,
    reliability: dict[str, float] | None = None,
) -> list[SessionPlan]:
    """The corpus's content without media: who says what, and what each modality shows.

    :func:`make_corpus` renders exactly this plan; tests use it to check the design (each modality
    informative but imperfect) without writing files.
    """
    if not 1 <= sessions <= 5:
        raise ValueError("sessions must be 1..5")
    if not 2 <= dialogs_per_session <= len(DIALOG_TEMPLATES):
        raise ValueError(f"dialogs_per_session must be 2..{len(DIALOG_TEMPLATES)}")
    if n_per_dialog < 1:
        raise ValueError("n_per_dialog must be >= 1")
    rel = dict(DEFAULT_RELIABILITY, **(reliability or {}))
    rng = np.random.default_rng([seed, 0])
    plan = []
    for s in range(1, sessions + 1):
        sess = f"Ses{s:02d}"
        actors = {
            # Natural skin tones (one brightness factor on a warm base) and a dark hair colour per actor.
            "F": dict(f0=rng.uniform(190, 230), skin=tuple(rng.uniform(0.6, 1.0) * np.array([235, 200, 170])),
                      hair=tuple(rng.uniform(20, 110) * np.array([1.0, 0.75, 0.5]))),
            "M": dict(f0=rng.uniform(105, 135), skin=tuple(rng.uniform(0.55, 0.95) * np.array([230, 190, 160])),
                      hair=tuple(rng.uniform(15, 80) * np.array([1.0, 0.8, 0.6]))),
        }
        bg = tuple(float(v) for v in rng.uniform(60, 140, 3))  # one studio per session
        dialogs = {}
        for tmpl in DIALOG_TEMPLATES[:dialogs_per_session]:
            dialog = tmpl.format(s=sess)
            dialogs[dialog] = _plan_dialog(dialog, dialog[5], n_per_dialog, filtered_share, rel, rng)
        plan.append(SessionPlan(sess, actors, bg, dialogs))
    return plan


def _plan_dialog(dialog: str, marker: str, n: int, filtered_share: float, rel: dict, rng) -> list[DemoUtterance]:
    n_extra = int(rng.binomial(n, filtered_share)) if filtered_share > 0 else 0
    labels = [CLASSES[rng.integers(4)] for _ in range(n)] + [None] * n_extra
    rng.shuffle(labels)
    counters = {"F": 0, "M": 0}
    t = 0.6 + rng.uniform(0, 0.4)
    prev = "M" if rng.random() < 0.5 else "F"
    out = []
    for lab in labels:
        g = prev if rng.random() < 0.2 else ("F" if prev == "M" else "M")  # mostly alternating turns
        prev = g
        true = lab if lab is not None else CLASSES[rng.integers(4)]
        raw = FILTERED_LABELS[rng.integers(len(FILTERED_LABELS))] if lab is None else (
            ("exc" if rng.random() < 0.6 else "hap") if lab == "hap" else lab)
        speech = true if rng.random() < rel["speech"] else _SPEECH_CONFUSION[true]
        if rng.random() < rel["face"]:
            face = true
        else:
            face = "neu" if true != "neu" and rng.random() < 0.6 else _pick_other(true, rng)
        if rng.random() < rel["text"]:
            text_c = true
        else:
            text_c = "neu" if true != "neu" else _pick_other(true, rng)
        listener = _pick_other(face, rng)
        dur = float(np.clip(rng.uniform(1.4, 3.0) * (4.0 / _SPEECH[speech]["rate"]) ** 0.5, 1.0, 4.0))
        dur = round(dur, 4)
        start = round(t, 4)
        end = round(start + dur, 4)
        idx = counters[g]
        counters[g] += 1
        uid = f"{dialog}_{g}{idx:03d}"
        side = "L" if g == marker else "R"
        out.append(DemoUtterance(uid, raw, LABEL_MAP.get(raw), start, end, speech, face, text_c, listener, side,
                                 make_text(text_c, rng)))
        t = end + rng.uniform(0.25, 0.7)
    return out


def _write_dialog(sdir: Path, dialog: str, marker: str, utts: list[DemoUtterance], waves: dict, actors: dict,
                  bg: tuple, rng, fps: float, width: int, height: int, dialog_wav: bool) -> None:
    duration = utts[-1].end + 0.5
    # --- per-utterance wavs and the whole-dialog wav
    wdir = sdir / "sentences" / "wav" / dialog
    wdir.mkdir(parents=True, exist_ok=True)
    mix = np.zeros(int(duration * SR) + 1, np.float32)
    for u in utts:
        x = waves[u.utt_id]
        with atomic_open(wdir / f"{u.utt_id}.wav", "wb") as f:
            sf.write(f, x, SR, subtype="PCM_16", format="WAV")
        i0 = int(u.start * SR)
        mix[i0 : i0 + len(x)] += x[: len(mix) - i0]
    if dialog_wav:
        with atomic_open(sdir / "dialog" / "wav" / f"{dialog}.wav", "wb") as f:
            sf.write(f, np.clip(mix, -1, 1), SR, subtype="PCM_16", format="WAV")
    # --- EmoEvaluation (release format) + a per-annotator subfolder + a resource fork
    emo = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for u in utts:
        v, a, d = _VAD[u.raw_label]
        emo.append(f"[{u.start:.4f} - {u.end:.4f}]\t{u.utt_id}\t{u.raw_label}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
        for ann in ("C-E1", "C-E2", "C-E4"):
            emo.append(f"{ann}:\t{_CAT_NAMES[u.raw_label]};\t()")
        emo.append(f"A-E1:\tval {int(v)}; act {int(a)}; dom  {int(d)};\t()")
        emo.append(f"A-F1:\tval {int(v)}; act {int(a)}; dom  {int(d)};\t()")
        emo.append("")
    edir = sdir / "dialog" / "EmoEvaluation"
    write_text_atomic(edir / f"{dialog}.txt", "\n".join(emo) + "\n")
    write_text_atomic(edir / "Categorical" / f"{dialog}_e1_cat.txt",
                      "".join(f"{u.utt_id} :{_CAT_NAMES[u.raw_label]}; ()\n" for u in utts))
    fork = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\x09\xff\xfe"
    with atomic_open(edir / f"._{dialog}.txt", "wb") as f:
        f.write(fork)
    # --- transcriptions, with a non-evaluated segment line as in the release
    lines = []
    for u in utts:
        lines.append(f"{u.utt_id} [{u.start:08.4f}-{u.end:08.4f}]: {u.transcript}")
    other = "M" if marker == "F" else "F"
    lines.insert(1, f"{dialog}_{other}XX0 [{utts[0].end:08.4f}-{utts[0].end + 0.2:08.4f}]: [BREATHING]")
    tdir = sdir / "dialog" / "transcriptions"
    write_text_atomic(tdir / f"{dialog}.txt", "\n".join(lines) + "\n")
    with atomic_open(tdir / f"._{dialog}.txt", "wb") as f:
        f.write(fork)
    # --- dialog video: marker wearer on the left, speaker's mouth moving at the syllable rate
    _write_video(sdir / "dialog" / "avi" / "DivX" / f"{dialog}.avi", utts, actors, marker, bg, rng, fps, width, height,
                 duration)


def _write_video(path: Path, utts, actors, marker, bg, rng, fps, width, height, duration) -> None:
    # Patch geometry: the IEMOCAP fixed windows in 720×480 reference pixels, scaled to this size.
    sx, sy = width / 720, height / 480
    slots = {"L": (int(5 * sx + 0.5), int(120 * sy + 0.5)), "R": (int(365 * sx + 0.5), int(120 * sy + 0.5))}
    pw, ph = int(350 * sx + 0.5), int(240 * sy + 0.5)
    cache: dict = {}

    def patch(g: str, expr: str, mouth: float, shift) -> np.ndarray:
        key = (g, expr, mouth, shift)
        if key not in cache:
            a = actors[g]
            img = draw_face(expr, mouth, a["skin"], a["hair"], markers=(g == marker), bg=bg, shift=shift)
            if img.shape[:2] != (ph, pw):  # other output sizes: nearest-neighbour resize of the patch
                yi = (np.arange(ph) * _PATCH_H / ph).astype(int)
                xi = (np.arange(pw) * _PATCH_W / pw).astype(int)
                img = img[yi][:, xi]
            cache[key] = img
        return cache[key]

    base = np.empty((height, width, 3), np.uint8)
    base[:] = bg
    base[:, width // 2 - 1 : width // 2 + 1] = 20  # the seam between the two camera views
    shifts = {u.utt_id: (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))) for u in utts}
    rate = Fraction(fps).limit_denominator(1001)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        container = av.open(f, mode="w", format="avi")
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = int(1_000_000 * (width * height) / (360 * 240))
        stream.codec_context.codec_tag = "XVID"
        stream.codec_context.thread_count = 1  # deterministic output
        stream.codec_context.gop_size = 12
        n_frames = int(duration * float(rate))
        ui = 0
        state = {"F": "neu", "M": "neu"}
        frames: dict = {}
        reformatter = VideoReformatter()
        for i in range(n_frames):
            t = i / float(rate)
            while ui < len(utts) and utts[ui].end <= t:
                ui += 1
            cur = utts[ui] if ui < len(utts) and utts[ui].start <= t else None
            keys = []
            for g in ("F", "M"):
                if cur is not None:
                    speaking = cur.utt_id.rsplit("_", 1)[1][0] == g
                    expr = cur.face_shows if speaking else cur.listener_shows
                    rate_syl = _SPEECH[cur.speech_shows]["rate"]
                    mouth = float(np.sin(np.pi * rate_syl * (t - cur.start)) > 0) if speaking else 0.0
                    shift = shifts[cur.utt_id]
                    state[g] = expr
                else:
                    expr, mouth, shift = state[g], 0.0, (0, 0)
                keys.append((g, expr, mouth, shift))
            fkey = tuple(keys)
            frame = frames.get(fkey)
            if frame is None:  # a dialog has few distinct pictures: compose each once
                frame = base.copy()
                for key in keys:
                    x0, y0 = slots["L" if key[0] == marker else "R"]
                    frame[y0 : y0 + ph, x0 : x0 + pw] = patch(*key)
                # Convert each distinct picture to the encoder's YUV 4:2:0 once; encoding then
                # does no per-frame colour conversion.
                # The frame object is reused for every repetition of the picture; only its pts changes
                # (the encoder keeps its own reference of what it still needs).
                frame = reformatter.reformat(av.VideoFrame.from_ndarray(frame, format="rgb24"), format="yuv420p")
                frames[fkey] = frame
            frame.pts = i
            frame.time_base = 1 / rate
            for pkt in stream.encode(frame):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)
        container.close()


def _write_readme(out: Path, info: CorpusInfo, fps: float, size: tuple[int, int]) -> None:
    import json

    lines = [
        "giamic demo corpus in the IEMOCAP_full_release layout (synthetic; for demos and tests).",
        f"seed: {info.seed}; video {size[0]}x{size[1]} at {fps} fps (mpeg4/AVI); audio 16 kHz mono.",
        "Prepare it with: giamic prepare <this folder> --out DATA_DIR --expected-counts <this folder>/expected_counts.json",
        "",
        "Expected counts after the 4-class selection (exc merged into hap):",
        json.dumps({"total": info.total, "by_class": info.by_class, "by_session": info.by_session}),
    ]
    write_text_atomic(out / "README.txt", "\n".join(lines) + "\n")
    write_json_atomic(out / "expected_counts.json", {
        "name": f"the demo corpus (seed {info.seed})", "total": info.total, "by_class": info.by_class,
        "by_session": info.by_session})
