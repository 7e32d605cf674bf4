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
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
import soundfile as sf

from giamic.data.iemocap import CLASSES, LABEL_MAP
from giamic.log import progress
from giamic.utils.io import atomic_open, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

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
        "sur": (3.5, 4.0, 2.5), "fea": (1.5, 4.0, 1.5), "dis": (1.5, 3.0, 3.5)}
_CAT_NAMES.update(fea="Fear", dis="Disgust")

# ---- The full-size corpus (scale="iemocap"): the release's size, label for label.
# 4-class utterances per session and class. Totals per class (1,708 / 1,103 / 1,636 / 1,084) and
# per session (1,085 / 1,023 / 1,151 / 1,031 / 1,241) are the verified counts the reader checks
# (FULL_CORPUS_COUNTS); the split of each session over the classes is the commonly published one.
IEMOCAP_SESSION_CLASS_COUNTS = {
    "Ses01": {"neu": 384, "ang": 229, "hap": 278, "sad": 194},
    "Ses02": {"neu": 362, "ang": 137, "hap": 327, "sad": 197},
    "Ses03": {"neu": 320, "ang": 240, "hap": 286, "sad": 305},
    "Ses04": {"neu": 258, "ang": 327, "hap": 303, "sad": 143},
    "Ses05": {"neu": 384, "ang": 170, "hap": 442, "sad": 245},
}
IEMOCAP_HAP_EXC = {"hap": 595, "exc": 1041}  # the happy class as labelled: hap + exc = 1,636
# The rest of the release's 10,039 evaluated utterances: labels the reader leaves out, and every
# session's total over all labels. Their split over the sessions (like hap/exc above) is not
# published per session: it is apportioned in proportion (largest remainders), see iemocap_label_table.
IEMOCAP_OTHER_LABELS = {"fru": 1849, "xxx": 2507, "sur": 107, "fea": 40, "oth": 3, "dis": 2}
IEMOCAP_SESSION_TOTALS = {"Ses01": 1819, "Ses02": 1811, "Ses03": 2136, "Ses04": 2103, "Ses05": 2170}
IEMOCAP_FPS = 29.97  # the release's frame rate: a 6-s window holds its 180 frames
IEMOCAP_VIDEO_SIZE = (180, 120)  # low resolution (the release: 720x480), cheap to write and decode
_MP2_DELAY = 481  # samples FFmpeg's MPEG audio layer II encoder + decoder put before the signal


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


SCALES = ("demo", "iemocap")


def make_corpus(
    out: str | os.PathLike,
    seed: int = 0,
    n_per_dialog: int = 10,
    sessions: int = 5,
    dialogs_per_session: int = 4,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    filtered_share: float = 0.15,
    reliability: dict[str, float] | None = None,
    dialog_wav: bool | None = None,
    scale: str = "demo",
    video_audio: bool | None = None,
    workers: int = 1,
    fraction: float = 1.0,
) -> CorpusInfo:
    """Write a generated corpus to ``out`` (an ``IEMOCAP_full_release``-like root) and return its truth.

    ``scale="demo"`` (default): ``n_per_dialog`` utterances in the four classes per dialog (plus
    about ``filtered_share`` more with labels the reader leaves out), ``dialogs_per_session`` (2-4)
    dialogs per session, videos of ``size`` (default 360x240) at ``fps`` (default 10), mpeg4 in AVI
    like the release's DivX files; ``expected_counts.json`` at the root records its counts.

    ``scale="iemocap"``: the release's size (:func:`plan_full_corpus`): 5,531 four-class utterances
    with the release's counts per session and class, plus the 4,508 it leaves out, in about 30
    dialogs a session of several minutes each; videos default to 180x120 at 29.97 fps. It writes
    no ``expected_counts.json``: the reader's check of the full release applies unchanged.
    ``n_per_dialog``, ``dialogs_per_session``, ``sessions`` and ``filtered_share`` do not apply.

    ``video_audio`` (default: on for ``"iemocap"``, off for ``"demo"``) gives every dialog video an
    audio track (the dialog's mix, MPEG audio at 16 kHz mono, aligned with the video timeline);
    ``dialog_wav`` (default: on for ``"demo"``) writes the mix as ``dialog/wav/<dialog>.wav`` too.
    ``fraction`` < 1 (``"iemocap"`` only) writes a scaled-down copy (:func:`plan_full_corpus`), which
    records its counts in ``expected_counts.json`` like the demo corpus.
    ``workers`` > 1 renders the dialogs of the full-size corpus in that many processes (the output
    does not depend on it: each of its dialogs has its own random stream).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    full = scale == "iemocap"
    fps = fps if fps is not None else (IEMOCAP_FPS if full else 10.0)
    size = size if size is not None else (IEMOCAP_VIDEO_SIZE if full else (360, 240))
    dialog_wav = dialog_wav if dialog_wav is not None else not full
    video_audio = video_audio if video_audio is not None else full
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if full:
        plan = plan_full_corpus(seed, reliability, fraction)
    else:
        plan = plan_corpus(seed, n_per_dialog, sessions, dialogs_per_session, filtered_share, reliability)
    info = CorpusInfo(root=out, seed=seed)
    jobs = [(out / f"Session{int(sp.session[3:])}", dialog, utts, sp.actors, sp.bg)
            for sp in plan for dialog, utts in sp.dialogs.items()]
    render = functools.partial(_render_dialog, fps=fps, size=size, dialog_wav=dialog_wav, video_audio=video_audio)
    if full:
        # One random stream per dialog, so that dialogs can be rendered in any order, in parallel.
        tasks = [(job, [seed, 1, i]) for i, job in enumerate(jobs)]
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                done = pool.map(render, *zip(*tasks), chunksize=1)
                for _ in progress(done, desc="dialogs", total=len(tasks), unit="dialog"):
                    pass
        else:
            for job, stream in progress(tasks, desc="dialogs", total=len(tasks), unit="dialog"):
                render(job, stream)
    else:
        # A separate stream for the media, so the plan (labels, cues, texts) does not depend on rendering.
        rng = np.random.default_rng([seed, 1])
        for job in progress(jobs, desc="dialogs", total=len(jobs), unit="dialog"):
            render(job, rng)
    for _, _, utts, _, _ in jobs:
        info.utterances.extend(utts)
    if full and fraction == 1:
        (out / "expected_counts.json").unlink(missing_ok=True)  # a stale demo table must not be checked
        _write_full_readme(out, info, fps, size)
    else:
        _write_readme(out, info, fps, size, f"full-size corpus at scale {fraction:g}" if full else "demo corpus")
    log.info("wrote %d utterances (%d in the 4 classes) in %d dialogs to %s", len(info.utterances), info.total,
             len(jobs), out)
    return info


def _render_dialog(job: tuple, rng, *, fps: float, size: tuple[int, int], dialog_wav: bool, video_audio: bool) -> None:
    """Synthesise the speech of one planned dialog and write its files (``rng``: a generator or its seed)."""
    sdir, dialog, utts, actors, bg = job
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    waves = {}
    for u in utts:
        g = u.utt_id.rsplit("_", 1)[1][0]
        waves[u.utt_id] = synth_speech(u.speech_shows, actors[g]["f0"], u.end - u.start, rng)
    _write_dialog(sdir, dialog, dialog[5], utts, waves, actors, bg, rng, fps, size[0], size[1], dialog_wav,
                  video_audio)


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


def _apportion(total: int, weights) -> list[int]:
    """``total`` split in proportion to ``weights`` into integers (largest remainders; ties: first)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    rest = exact - out
    for i in sorted(range(len(w)), key=lambda i: (-rest[i], i))[: total - int(out.sum())]:
        out[i] += 1
    return [int(v) for v in out]


def iemocap_label_table() -> dict[str, dict[str, int]]:
    """Utterances per session and raw label of the full-size corpus (all 10,039, all labels).

    The four classes per session are :data:`IEMOCAP_SESSION_CLASS_COUNTS` (``hap`` there is hap +
    exc); what is not published per session is apportioned in proportion: ``hap``/``exc`` of each
    session's happy count (595 : 1,041), and each session's left-out utterances (its total minus its
    four-class count) over ``xxx``, ``sur``, ``fea``, ``oth``, ``dis`` (per-label totals exact), the
    remainder being ``fru``. Every per-label total equals the release's.
    """
    sessions = list(IEMOCAP_SESSION_CLASS_COUNTS)
    happy = [IEMOCAP_SESSION_CLASS_COUNTS[s]["hap"] for s in sessions]
    hap = _apportion(IEMOCAP_HAP_EXC["hap"], happy)
    other = [IEMOCAP_SESSION_TOTALS[s] - sum(IEMOCAP_SESSION_CLASS_COUNTS[s].values()) for s in sessions]
    table = {s: {c: n for c, n in IEMOCAP_SESSION_CLASS_COUNTS[s].items() if c != "hap"} for s in sessions}
    for i, s in enumerate(sessions):
        table[s]["hap"], table[s]["exc"] = hap[i], happy[i] - hap[i]
    for lab in ("xxx", "sur", "fea", "oth", "dis"):
        for s, n in zip(sessions, _apportion(IEMOCAP_OTHER_LABELS[lab], other)):
            table[s][lab] = n
    for i, s in enumerate(sessions):
        table[s]["fru"] = other[i] - sum(table[s][lab] for lab in ("xxx", "sur", "fea", "oth", "dis"))
    return table


def iemocap_dialog_names(session: str) -> list[str]:
    """The dialogs of one session of the full-size corpus, named as in the release.

    Each scenario is recorded twice, once with each actor wearing the markers: 8 improvisations
    (Session 3 splits impro05 and impro08 into a/b) and 7 script parts.
    """
    impros = [f"impro{i:02d}" for i in range(1, 9)]
    if session == "Ses03":
        impros = [x for i in impros for x in ((i + "a", i + "b") if i in ("impro05", "impro08") else (i,))]
    scripts = ["script01_1", "script01_2", "script01_3", "script02_1", "script02_2", "script03_1", "script03_2"]
    return [f"{session}{g}_{name}" for g in ("F", "M") for name in impros + scripts]


def plan_full_corpus(seed: int = 0, reliability: dict[str, float] | None = None,
                     fraction: float = 1.0) -> list[SessionPlan]:
    """The full-size corpus's content without media: :func:`iemocap_label_table` in dialogs.

    Each session's labels are shuffled and dealt to its dialogs (sizes in proportion to a random
    weight per dialog, 0.6-1.4); turns last about 4.5 s on average (0.6-30 s). Deterministic in
    ``seed``; the counts do not depend on it. ``fraction`` < 1 plans a scaled-down copy: every
    session's label counts times ``fraction`` (rounded by largest remainders) in that share of its
    dialogs (at least 2, both marker wearers), same turn lengths and layout.
    """
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    rel = dict(DEFAULT_RELIABILITY, **(reliability or {}))
    rng = np.random.default_rng([seed, 2])
    plan = []
    for sess, counts in iemocap_label_table().items():
        names = iemocap_dialog_names(sess)
        if fraction < 1:
            total = sum(counts.values())
            counts = dict(zip(counts, _apportion(round(total * fraction), list(counts.values()))))
            half = len(names) // 2  # F-marker dialogs, then the same scenarios with M markers
            names = [x for pair in zip(names[:half], names[half:]) for x in pair]
            names = names[: max(2, round(len(names) * fraction))]
        actors = {
            "F": dict(f0=rng.uniform(190, 230), skin=tuple(rng.uniform(0.6, 1.0) * np.array([235, 200, 170])),
                      hair=tuple(rng.uniform(20, 110) * np.array([1.0, 0.75, 0.5]))),
            "M": dict(f0=rng.uniform(105, 135), skin=tuple(rng.uniform(0.55, 0.95) * np.array([230, 190, 160])),
                      hair=tuple(rng.uniform(15, 80) * np.array([1.0, 0.8, 0.6]))),
        }
        bg = tuple(float(v) for v in rng.uniform(60, 140, 3))
        raws = [lab for lab, n in counts.items() for _ in range(n)]
        rng.shuffle(raws)
        sizes = _apportion(len(raws), rng.uniform(0.6, 1.4, len(names)))
        dialogs, i = {}, 0
        for dialog, n in zip(names, sizes):
            items = [(LABEL_MAP.get(raw), raw) for raw in raws[i : i + n]]
            i += n
            dialogs[dialog] = _plan_turns(dialog, dialog[5], items, rel, rng, timing="iemocap")
        plan.append(SessionPlan(sess, actors, bg, dialogs))
    return plan


def _plan_dialog(dialog: str, marker: str, n: int, filtered_share: float, rel: dict, rng) -> list[DemoUtterance]:
    n_extra = int(rng.binomial(n, filtered_share)) if filtered_share > 0 else 0
    labels = [CLASSES[rng.integers(4)] for _ in range(n)] + [None] * n_extra
    rng.shuffle(labels)
    return _plan_turns(dialog, marker, [(lab, None) for lab in labels], rel, rng, timing="demo")


def _plan_turns(dialog: str, marker: str, items: list[tuple[str | None, str | None]], rel: dict, rng,
                timing: str) -> list[DemoUtterance]:
    """The turns of one dialog, one per ``(4-class label or None, raw label or None)`` item.

    A raw label of ``None`` is drawn (``exc``/``hap`` for happy, one of :data:`FILTERED_LABELS` for
    ``None``). ``timing="demo"``: turns of 1-4 s; ``"iemocap"``: the release's spread of lengths.
    """
    counters = {"F": 0, "M": 0}
    t = 0.6 + rng.uniform(0, 0.4)
    prev = "M" if rng.random() < 0.5 else "F"
    out = []
    for lab, raw in items:
        g = prev if rng.random() < 0.2 else ("F" if prev == "M" else "M")  # mostly alternating turns
        prev = g
        true = lab if lab is not None else CLASSES[rng.integers(4)]
        if raw is None:
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
        if timing == "demo":
            dur = float(np.clip(rng.uniform(1.4, 3.0) * (4.0 / _SPEECH[speech]["rate"]) ** 0.5, 1.0, 4.0))
        else:  # IEMOCAP's turns: 4.5 s on average, from about half a second to half a minute
            dur = float(np.clip(rng.lognormal(np.log(3.6), 0.6) * (4.0 / _SPEECH[speech]["rate"]) ** 0.5, 0.6, 30.0))
        dur = round(dur, 4)
        start = round(t, 4)
        end = round(start + dur, 4)
        idx = counters[g]
        counters[g] += 1
        uid = f"{dialog}_{g}{idx:03d}"
        side = "L" if g == marker else "R"
        out.append(DemoUtterance(uid, raw, LABEL_MAP.get(raw), start, end, speech, face, text_c, listener, side,
                                 make_text(text_c, rng)))
        t = end + (rng.uniform(0.25, 0.7) if timing == "demo" else rng.uniform(0.1, 0.8))
    return out


def _write_dialog(sdir: Path, dialog: str, marker: str, utts: list[DemoUtterance], waves: dict, actors: dict,
                  bg: tuple, rng, fps: float, width: int, height: int, dialog_wav: bool,
                  video_audio: bool = False) -> None:
    duration = max(u.end for u in utts) + 0.5
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
                 duration, audio=np.clip(mix, -1, 1) if video_audio else None)


def _write_video(path: Path, utts, actors, marker, bg, rng, fps, width, height, duration,
                 audio: np.ndarray | None = None) -> None:
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
        sound = _AudioTrack(container, audio) if audio is not None else None
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
            if sound is not None:  # interleaved: the audio up to the end of this frame
                sound.write_until(int(round((i + 1) / float(rate) * SR)))
        for pkt in stream.encode():
            container.mux(pkt)
        if sound is not None:
            sound.finish()
        container.close()


class _AudioTrack:
    """The dialog mix as the video's audio track: MPEG audio layer II, 16 kHz mono, 32 kbit/s.

    Layer II rather than the MP3 of many DivX files: it encodes about 15x faster, and every FFmpeg
    reader takes either. The first :data:`_MP2_DELAY` samples are dropped before encoding, so that
    decoded sample ``k`` is sample ``k`` of the mix: the track lines up with the video timeline and
    the utterance wavs.
    """

    def __init__(self, container, mix: np.ndarray) -> None:
        self.container = container
        self.stream = container.add_stream("mp2", rate=SR)
        self.stream.layout = "mono"
        self.stream.bit_rate = 32000
        self.stream.codec_context.thread_count = 1
        pcm = np.clip(np.round(mix[_MP2_DELAY:] * 32767), -32768, 32767)
        self.samples = np.ascontiguousarray(pcm, dtype=np.int16)
        self.pos = 0

    def write_until(self, stop: int) -> None:
        stop = min(stop, self.samples.size)
        if stop <= self.pos:
            return
        frame = av.AudioFrame.from_ndarray(self.samples[None, self.pos : stop], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SR, self.pos
        for pkt in self.stream.encode(frame):
            self.container.mux(pkt)
        self.pos = stop

    def finish(self) -> None:
        self.write_until(self.samples.size)
        for pkt in self.stream.encode():
            self.container.mux(pkt)


def _write_full_readme(out: Path, info: CorpusInfo, fps: float, size: tuple[int, int]) -> None:
    import json

    raw: dict[str, int] = {}
    for u in info.utterances:
        raw[u.raw_label] = raw.get(u.raw_label, 0) + 1
    lines = [
        "giamic full-size generated corpus in the IEMOCAP_full_release layout (synthetic; the release's size).",
        f"seed: {info.seed}; video {size[0]}x{size[1]} at {fps} fps (mpeg4/AVI, MPEG audio track); wavs 16 kHz mono.",
        "Prepare it with: giamic prepare <this folder> --out DATA_DIR",
        "(no expected_counts.json: the counts are the full release's, checked as for the real corpus)",
        "",
        "Counts after the 4-class selection (exc merged into hap):",
        json.dumps({"total": info.total, "by_class": info.by_class, "by_session": info.by_session}),
        "All labels: " + json.dumps(dict(sorted(raw.items()))),
    ]
    write_text_atomic(out / "README.txt", "\n".join(lines) + "\n")


def _write_readme(out: Path, info: CorpusInfo, fps: float, size: tuple[int, int], what: str = "demo corpus") -> None:
    import json

    lines = [
        f"giamic {what} in the IEMOCAP_full_release layout (synthetic; for demos and tests).",
        f"seed: {info.seed}; video {size[0]}x{size[1]} at {fps} fps (mpeg4/AVI); audio 16 kHz mono.",
        "Prepare it with: giamic prepare <this folder> --out DATA_DIR --expected-counts <this folder>/expected_counts.json",
        "",
        "Expected counts after the 4-class selection (exc merged into hap):",
        json.dumps({"total": info.total, "by_class": info.by_class, "by_session": info.by_session}),
    ]
    write_text_atomic(out / "README.txt", "\n".join(lines) + "\n")
    write_json_atomic(out / "expected_counts.json", {
        "name": f"the {what} (seed {info.seed})", "total": info.total, "by_class": info.by_class,
        "by_session": info.by_session})
