"""Emotion over a whole recording: segments, the speaker's face, one prediction per utterance.

``Predictor.analyze(path)`` (and ``giamic analyze``) runs, for a recording of any length:

1. the audio track, decoded once to 16 kHz mono (:func:`giamic.inference.segments.decode_audio_track`);
2. segmentation (a segments file, Whisper with Silero VAD, or Silero VAD), then the length rules of
   :func:`giamic.inference.segments.finalize` (at least 0.5 s; longer than the model's 6-s window
   cut into equal pieces);
3. one pass over the video: for every segment, the frames a training utterance of the same window
   would get (timestamps in ``[start, start + min(6 s, end - start))``, at most the model's frame
   count, as ``giamic.data.decode_windows`` selects them), faces found and the speaker's chosen
   (:mod:`giamic.inference.faces`) unless ``--side``/``--crop-box``/``--full-frame`` say otherwise,
   the crop cut from those frames;
4. the trained model's own path: each segment becomes the same ``_Loaded`` record that
   ``Predictor.predict_file`` builds for a window, and goes through ``LoadedModel.forward``
   (encoders rebuilt from the model directory, float16 rounding of cached modalities, padding to the
   trained slot lengths, the fusion model). Segments are predicted in batches while the video is
   read, so memory holds one batch of frames, whatever the recording's length.

The audio of a segment is the slice of the whole decoded track, so it equals a window read by
``predict`` up to the resampler's few-millisecond edge when the file is not already 16 kHz.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InferenceError, InputError
from .inputs import InputItem, MediaProbe, probe_media
from .segments import MIN_SEGMENT_SEC, MODEL_WINDOW_SEC, SAMPLE_RATE, Span, VadSettings

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]
_TIME_EPS = 1e-6  # as giamic.data.video: frame times are floats from integer pts


@dataclass(frozen=True)
class AnalyzeOptions:
    """How a recording is cut and cropped (docs/predict.md "Emotion over a whole recording")."""

    segments_file: str | Path | None = None  # CSV start,end[,speaker,text] / .srt / .vtt
    asr_model: str | None = None  # Whisper: segments with text (or the text of given segments)
    asr_beam_size: int = 1
    vad: VadSettings = VadSettings()
    min_segment: float = MIN_SEGMENT_SEC
    max_segment: float = MODEL_WINDOW_SEC
    side: str | None = None  # "L" | "R": IEMOCAP-style halves, with the model's crop rule
    box: tuple[int, int, int, int] | None = None  # one crop box for the whole recording
    full_frame: bool = False
    face: int | None = None  # the N-th face from the left (1-based) instead of the speaker's
    max_duration: float | None = None  # refuse longer recordings (seconds)
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.side not in (None, "L", "R"):
            raise InputError(f"side must be 'L' or 'R', got {self.side!r}")
        if sum(x is not None and x is not False for x in (self.side, self.box, self.full_frame or None, self.face)) > 1:
            raise InputError("give at most one of --side, --crop-box, --full-frame and --face")
        if self.face is not None and self.face < 1:
            raise InputError(f"--face counts faces from the left starting at 1, got {self.face}")
        if self.batch_size < 1:
            raise InputError("batch size must be >= 1")


@dataclass
class Segment:
    """One utterance of a recording and its prediction (``error`` set when it could not be predicted)."""

    index: int
    start: float
    end: float
    text: str | None = None
    text_source: str | None = None  # "transcript" (segments file) | "asr:<model>"
    speaker: str | None = None  # from the segments file
    source: str = "vad"  # "file" | "whisper" | "vad", "+split" when cut at the 6-s window
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)
    model: str | None = None
    crop: str | None = None  # "face" | "face N" | "side L" | "box" | "full frame" | None (no video)
    face_box: tuple[int, int, int, int] | None = None  # detected face (x, y, w, h)
    crop_box: tuple[int, int, int, int] | None = None  # what the video encoder saw (x, y, w, h)
    faces: int | None = None  # faces seen in the segment
    frames: int | None = None
    error: str | None = None
    error_type: str | None = None

    def to_json(self) -> dict:
        out = {"index": self.index, "start": self.start, "end": self.end, "speaker": self.speaker,
               "text": self.text, "text_source": self.text_source, "source": self.source}
        if self.error:
            out.update(error=self.error, error_type=self.error_type)
            return out
        out.update(label=self.label, probabilities=self.probabilities, modalities=self.modalities, model=self.model,
                   crop=self.crop, face_box=list(self.face_box) if self.face_box else None,
                   crop_box=list(self.crop_box) if self.crop_box else None, faces=self.faces, frames=self.frames)
        return out


@dataclass
class RecordingAnalysis:
    """Everything ``analyze`` found for one recording."""

    path: Path
    duration: float
    has_video: bool
    has_audio: bool
    segmentation: str  # "file:<path>" | "whisper:<model>" | "vad"
    classes: list[str]
    model: str
    modalities: list[str]
    segments: list[Segment]
    size: tuple[int, int] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"input": str(self.path), "duration": self.duration, "has_video": self.has_video,
                "has_audio": self.has_audio, "segmentation": self.segmentation, "classes": self.classes,
                "model": self.model, "modalities": self.modalities,
                "frame_size": list(self.size) if self.size else None,
                "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "segments": [s.to_json() for s in self.segments]}


class _Clock:
    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def add(self, key: str, since: float) -> float:
        now = time.perf_counter()
        self.t[key] = self.t.get(key, 0.0) + now - since
        return now


def analyze_recording(predictor, path: str | Path, options: AnalyzeOptions = AnalyzeOptions(),
                      progress: ProgressFn | None = None) -> RecordingAnalysis:
    """Cut ``path`` into utterances and predict each (see the module docstring).

    Raises :class:`InputError` for a file that cannot be used at all (not media, empty, too long,
    no audio to segment, no speech found) and :class:`MissingModalityError` when no given model
    accepts what the file has; a single segment's failure is kept in its :class:`Segment`.
    """
    from .predictor import _Loaded
    from .segments import decode_audio_track, finalize, read_segments_file, vad_segments, whisper_segments

    path = Path(path)
    note = progress or (lambda stage, frac: None)
    clock = _Clock()
    t0 = time.perf_counter()
    probe: MediaProbe = probe_media(path)
    if options.max_duration is not None and probe.duration is not None and probe.duration > options.max_duration:
        raise InputError(f"{path}: the recording lasts {_hms(probe.duration)}, longer than the limit of "
                         f"{_hms(options.max_duration)}")
    file_spans = read_segments_file(options.segments_file) if options.segments_file else None
    available = set()
    if probe.has_video:
        available.add("video")
    if probe.has_audio:
        available.add("speech")
    if (file_spans and all(s.text for s in file_spans)) or (options.asr_model and probe.has_audio):
        available.add("text")
    mi = predictor.choose(available, str(path))
    model = predictor.models[mi]
    needs_text = "text" in model.modalities
    if file_spans is None and not probe.has_audio:
        raise InputError(f"{path}: no audio track to find the utterances in; give their times with --segments FILE")
    note("decode audio", 0.0)
    wave = decode_audio_track(path) if probe.has_audio else None
    duration = probe.duration or (len(wave) / SAMPLE_RATE if wave is not None else 0.0)
    t = clock.add("decode", t0)
    note("segment", 0.0)
    asr = predictor.prepare_asr(_predict_options(options)) if options.asr_model and needs_text else None
    if file_spans is not None:
        spans, how = file_spans, f"file:{options.segments_file}"
    elif asr is not None:
        spans, how = whisper_segments(asr, wave, options.vad), f"whisper:{asr.label}"
    else:
        spans, how = vad_segments(wave, options.vad), "vad"
    spans = finalize(spans, duration, options.min_segment, options.max_segment)
    t = clock.add("segmentation", t)
    if not spans:
        raise InputError(f"{path}: no speech found (no segment of {options.min_segment:g} s or more); give the "
                         f"utterance times with --segments FILE")
    log.info("%s: %d segment(s) from %s", path, len(spans), how)
    def text_source(s: Span) -> str | None:
        if s.text is None:
            return None
        return f"asr:{asr.label}" if s.source.startswith("whisper") else "transcript"

    segments = [Segment(i, s.start, s.end, s.text, text_source(s), s.speaker, s.source) for i, s in enumerate(spans)]
    loaded: dict[int, _Loaded] = {}
    for seg in segments:
        item = InputItem(path, seg.text)
        x = _Loaded(item, mi, window=(seg.start, seg.end))
        if wave is not None and ("speech" in model.modalities or (needs_text and seg.text is None)):
            piece = wave[int(round(seg.start * SAMPLE_RATE)): int(round(seg.end * SAMPLE_RATE))]
            if piece.size == 0:
                _fail(seg, InputError(f"{path}: no audio samples in [{seg.start:.3f}, {seg.end:.3f})s"))
                continue
            if "speech" in model.modalities:
                x.wave = np.ascontiguousarray(piece, dtype=np.float32)
            if needs_text and seg.text is None:
                if asr is None:
                    _fail(seg, InputError(f"{path}: segment [{seg.start:.2f}, {seg.end:.2f})s has no text; give it in "
                                          f"the segments file or pass --asr MODEL"))
                    continue
                ta = time.perf_counter()
                x.text, x.text_source = asr.transcribe(piece), f"asr:{asr.label}"
                seg.text, seg.text_source = x.text, x.text_source
                clock.add("asr", ta)
        if needs_text and x.text is None and seg.text is not None:
            x.text, x.text_source = seg.text, seg.text_source
        loaded[seg.index] = x
    if not needs_text:
        for seg in segments:
            seg.text_source = None  # text shown, not used by this model
    size = None
    pending: list[int] = []
    done = 0

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        tf = time.perf_counter()
        batch = [loaded[i] for i in pending]
        try:
            probs = model.forward(batch)
            for i, p in zip(pending, probs):
                s = segments[i]
                s.label = model.classes[int(np.argmax(p))]
                s.probabilities = {c: float(v) for c, v in zip(model.classes, p)}
                s.modalities = list(model.modalities)
                s.model = str(model.path)
        except Exception as e:  # an encoder failure loses this batch only
            for i in pending:
                _fail(segments[i], e)
        for i in pending:
            loaded[i].frames = None  # free the frames
        done += len(pending)
        pending.clear()
        clock.add("predict", tf)
        note("predict", done / len(segments))

    if "video" in model.modalities:
        # The frame window the features were extracted with (older directories: the audio window).
        max_frames, video_max_sec = model.video_pre.max_frames, model.video_pre.max_sec
        todo = [s for s in segments if s.index in loaded]
        chooser = _CropChooser(model, options)
        for seg, frames, times in _stream_windows(path, todo, max_frames, video_max_sec, clock):
            if size is None and frames is not None and len(frames):
                size = (frames.shape[2], frames.shape[1])
            if frames is None or len(frames) == 0:
                _fail(seg, InputError(f"{path}: window [{seg.start:.3f}, {seg.end:.3f})s holds no video frame"))
                loaded.pop(seg.index, None)
                continue
            tc = time.perf_counter()
            try:
                crop, (x0, y0, x1, y1) = chooser.choose(seg, frames, times, wave)
            except Exception as e:
                _fail(seg, e)
                loaded.pop(seg.index, None)
                continue
            loaded[seg.index].frames = np.ascontiguousarray(frames[:, y0:y1, x0:x1])
            seg.crop_box, seg.crop = (x0, y0, x1 - x0, y1 - y0), crop
            seg.frames = int(min(len(frames), model.lengths.get("video", len(frames))))  # as predict reports it
            clock.add("face", tc)
            pending.append(seg.index)
            if len(pending) >= options.batch_size:
                flush()
        flush()
    else:
        for seg in segments:
            if seg.index in loaded:
                pending.append(seg.index)
                if len(pending) >= options.batch_size:
                    flush()
        flush()
    clock.t["total"] = time.perf_counter() - t0
    note("done", 1.0)
    return RecordingAnalysis(path, float(duration), probe.has_video, probe.has_audio, how, list(model.classes),
                             str(model.path), list(model.modalities), segments, size, clock.t)


def _predict_options(options: AnalyzeOptions):
    from .predictor import PredictOptions

    return PredictOptions(asr_model=options.asr_model, asr_beam_size=options.asr_beam_size)


def _fail(seg: Segment, e: BaseException) -> None:
    msg = str(e) or type(e).__name__
    if not isinstance(e, InferenceError):
        msg = f"{type(e).__name__}: {msg}"
    seg.error, seg.error_type = msg, type(e).__name__
    log.warning("segment %d [%.2f, %.2f): %s", seg.index, seg.start, seg.end, msg)


def _hms(sec: float) -> str:
    sec = int(round(sec))
    return f"{sec // 3600}:{sec // 60 % 60:02d}:{sec % 60:02d}" if sec >= 3600 else f"{sec // 60}:{sec % 60:02d} min"


class _CropChooser:
    """The crop of each segment: a fixed choice (box, side, full frame) or the speaker's face."""

    def __init__(self, model, options: AnalyzeOptions) -> None:
        from giamic.data import CropSpec

        from .predictor import PredictOptions

        self.options = options
        self.fixed = None
        if options.box is not None:
            self.fixed = ("box", CropSpec(box=tuple(int(v) for v in options.box)))
        elif options.side is not None:
            self.fixed = (f"side {options.side}", model.crop_spec(PredictOptions(side=options.side)))
        elif options.full_frame:
            self.fixed = ("full frame", CropSpec(mode="full"))
        self.detector = None
        if self.fixed is None:
            from .faces import FaceDetector

            self.detector = FaceDetector()

    def choose(self, seg: Segment, frames: np.ndarray, times: np.ndarray, wave: np.ndarray | None):
        from giamic.data import CropSpec

        from .faces import choose_speaker, crop_box_for, track_faces

        h, w = frames.shape[1:3]
        if self.fixed is not None:
            name, spec = self.fixed
            return name, spec.resolve(w, h)
        tracks = track_faces(frames, self.detector)
        seg.faces = len(tracks)
        if not tracks:
            log.warning("segment %d [%.2f, %.2f): no face found; the whole frame is used", seg.index, seg.start, seg.end)
            return "full frame (no face found)", CropSpec(mode="full").resolve(w, h)
        if self.options.face is not None and self.options.face <= len(tracks):
            k, name = self.options.face - 1, f"face {self.options.face}"
        else:
            if self.options.face is not None:
                log.warning("segment %d: face %d asked for, %d seen; the speaking face is used",
                            seg.index, self.options.face, len(tracks))
            silent = wave if wave is not None else np.zeros(1, np.float32)
            k = choose_speaker(tracks, frames, times, silent, 0.0)
            name = "face" if len(tracks) == 1 else f"speaking face ({k + 1} of {len(tracks)} from the left)"
        seg.face_box = tracks[k].box
        box = crop_box_for(tracks[k].box, w, h)
        return name, CropSpec(box=box).resolve(w, h)


def _stream_windows(path: Path, segments: list[Segment], max_frames: int, max_sec: float | None, clock: _Clock):
    """Yield ``(segment, full RGB frames [k, H, W, 3], times [k])`` in start order, decoding once.

    Frames are selected exactly as ``giamic.data.decode_windows`` selects them for
    ``VideoWindow(start, end)`` with the same ``max_frames`` / ``max_sec`` (timestamps in the kept
    interval, frame-rate independent), converted to RGB with the same reformatter; a segment is
    yielded as soon as its window closes, so only open windows' frames are in memory.
    """
    import av
    from av.video.reformatter import VideoReformatter

    from giamic.data import VideoWindow

    order = sorted(segments, key=lambda s: s.start)
    stops = {s.index: VideoWindow(s.start, s.end).stop(max_sec) for s in order}
    bufs: dict[int, list] = {s.index: [] for s in order}
    tims: dict[int, list] = {s.index: [] for s in order}
    nxt = 0
    active: list[Segment] = []
    last: float | None = None
    t = time.perf_counter()
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"{path}: cannot open the video ({e})") from e
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else None
        step = 1.0 / rate if rate else None
        reformatter = VideoReformatter()
        for frame in container.decode(stream):
            ft = frame.time
            if ft is None:
                if last is None or step is None:
                    raise InputError(f"{path}: video frame without timestamp")
                ft = last + step
            last = ft
            while nxt < len(order) and order[nxt].start <= ft + _TIME_EPS:
                active.append(order[nxt])
                nxt += 1
            keep = []
            for s in active:
                if ft + _TIME_EPS < stops[s.index] and len(tims[s.index]) < max_frames:
                    keep.append(s)
                else:
                    t = clock.add("decode", t)
                    yield s, _stack(bufs.pop(s.index)), np.asarray(tims.pop(s.index))
                    t = time.perf_counter()
            active = keep
            if active:
                rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
                for s in active:
                    bufs[s.index].append(rgb)
                    tims[s.index].append(ft)
            elif nxt >= len(order):
                break
    except av.FFmpegError as e:
        raise InputError(f"{path}: cannot decode the video ({e})") from e
    finally:
        container.close()
    clock.add("decode", t)
    for s in order:
        if s.index in bufs:
            yield s, _stack(bufs.pop(s.index)), np.asarray(tims.pop(s.index))


def _stack(frames: list) -> np.ndarray | None:
    return np.stack(frames) if frames else None
