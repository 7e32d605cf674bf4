"""Predict emotions on one's own media with a trained model directory (docs/predict.md).

The Python API::

    from giamic.inference import Predictor, PredictOptions
    p = Predictor.load("runs/demo/seed0/fold1/model")          # or several dirs, see below
    r = p.predict_file("clip.mp4", transcript="I can't believe it")
    r.label, r.probabilities                                   # "ang", {"neu": 0.1, ...}
    rs = p.predict_files(["a.mp4", "b.wav"], PredictOptions(side="L"))
    probs = p.predict_raw(frames=rgb_uint8_KxHxWx3, wave=np_16k_float, text="...")

One code path with training (docs/predict.md, "Same preprocessing as training"); the model
directory is read through its contract, ``giamic.modeldir``:

* frames: ``giamic.data.decode_windows`` over ``[start, start + min(6 s, end - start))`` with the
  crop, at most ``preprocessing.video.max_frames``, at the frame rate ``preprocessing.video.fps``
  the model was trained with (docs/decisions.md, "predict's input, window and crop defaults";
  ``PredictOptions.video_fps`` overrides it, with a logged note, docs/predict.md);
* speech: the window's samples, 16 kHz mono (``inputs.read_audio_window``), then the speech
  encoder's own ``preprocess`` (the data stage's ``crop_or_pad`` to the first 6 s and
  ``normalize_wave``) and forward, as training's online speech (``giamic.train.batches``) does;
* cached modalities (CLIP, RoBERTa, frozen WavLM) go through float16 like the feature cache
  (features are stored in fp16, docs/decisions.md), then ``giamic.collate.pad_features`` into the
  fixed slot lengths the model was trained with (``preprocessing.lengths``);
* the encoders are rebuilt from ``pipeline.json`` with the recorded settings, and their identity
  (weights hash, preprocessing) must equal the recorded one: a mismatch is an error, not a guess.

Missing modality: several model directories may be given; each input uses the first
one whose modalities it has. When none fits, :class:`MissingModalityError` says what the input
lacks and which variants (``giamic.models.variants``) would accept it. No modality is ever
replaced by zeros.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from giamic.collate import pad_features, pad_to_length
from giamic.errors import ModelDirError
from giamic.log import show_progress
from giamic.modalities import MODALITIES, SHORT, Modality
from giamic.modeldir import EncoderRecord, PipelineSpec, load_model_dir

from .errors import InferenceError, InputError, MissingModalityError
from .inputs import MAX_WINDOW_SEC, InputItem, MediaProbe, Window, probe_media, read_audio_window

log = logging.getLogger(__name__)

VIDEO, SPEECH, TEXT = Modality.VIDEO.value, Modality.SPEECH.value, Modality.TEXT.value
MODALITY_ABBREV = SHORT  # one letter per modality in tables (V, S, T)
# Identity keys that legitimately differ between training and prediction ("execution": the CLIP
# execution chosen at prediction, e.g. bf16 or int8 on CPU, docs/predict.md; logged when it differs).
_IGNORED_IDENTITY_KEYS = {"frozen", "execution"}


@dataclass(frozen=True)
class PredictOptions:
    """How each input is cut (docs/predict.md) and where its text comes from."""

    window: Window = Window()
    side: str | None = None  # "L" | "R": the speaker's half (crop rule from the model's pipeline)
    box: tuple[int, int, int, int] | None = None  # (x, y, w, h) pixels; wins over side
    asr_model: str | None = None  # Whisper model to transcribe the window when no transcript is given
    asr_beam_size: int = 1
    # Frames per second of the video window: None = the rate the model was trained with
    # (preprocessing.video.fps); 0 = the native rate; a number overrides it (logged when it differs).
    video_fps: float | None = None

    def __post_init__(self) -> None:
        if self.side not in (None, "L", "R"):
            raise ValueError(f"side must be 'L' or 'R', got {self.side!r}")
        if self.video_fps is not None and self.video_fps < 0:
            raise ValueError(f"video_fps must be >= 0 (0 = the native rate), got {self.video_fps!r}")


@dataclass
class Prediction:
    """One input's result; ``error`` set (and ``label`` None) when it failed."""

    input: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    modalities: list[str] = field(default_factory=list)
    window: tuple[float, float] | None = None
    frames: int | None = None
    audio_seconds: float | None = None
    text: str | None = None
    text_source: str | None = None  # "transcript" | "asr:<model>"
    error: str | None = None
    error_type: str | None = None

    def to_json(self) -> dict:
        out = {"input": self.input}
        if self.error:
            out.update(error=self.error, error_type=self.error_type)
            return out
        out.update(
            label=self.label,
            probabilities=self.probabilities,
            model=self.model,
            modalities=self.modalities,
            window={"start": self.window[0], "end": self.window[1]} if self.window else None,
            frames=self.frames,
            audio_seconds=self.audio_seconds,
            text=self.text,
            text_source=self.text_source,
        )
        return out


@dataclass
class _Loaded:
    """Raw inputs of one utterance, ready for the encoders."""

    item: InputItem
    model_index: int
    frames: np.ndarray | None = None
    wave: np.ndarray | None = None
    text: str | None = None
    text_source: str | None = None
    window: tuple[float, float] | None = None


class LoadedModel:
    """One trained model directory (``giamic.modeldir``) with its encoders rebuilt and checked."""

    def __init__(self, path: Path, device: str, encoder_paths: dict[str, str], encoder_cache: dict,
                 clip_execution: str | None = None) -> None:
        md = load_model_dir(path, map_location=device)  # ModelDirError naming the file on any problem
        self.path = path
        self.dir = md
        self.spec: PipelineSpec = md.spec
        self.model = md.model.to(device).eval()
        self.classes: list[str] = md.classes
        self.modalities: list[str] = list(md.spec.modalities)
        self.variant = md.spec.variant
        self.standardization = md.standardization  # fitted on the training split; None: raw features
        pre = md.spec.preprocessing
        self.lengths: dict[str, int] = {m: int(v) for m, v in pre.lengths.items()}
        self.audio_pre, self.video_pre, self.text_pre = pre.audio, pre.video, pre.text
        self.encoders: dict[str, Any] = {}
        self.modes: dict[str, str] = {}
        for m in self.modalities:
            rec = md.spec.encoders[m]
            self.modes[m] = rec.mode
            self.encoders[m] = _build_checked_encoder(
                path, m, rec, encoder_paths.get(m), device, md.speech_encoder_state if m == SPEECH else None, encoder_cache,
                execution=clip_execution if m == VIDEO else None,
            )
        self._fps_noted: set = set()

    def video_fps(self, options: PredictOptions) -> float | None:
        """Frames per second of the video window: the trained rate unless ``options`` overrides it
        (``0`` = native); an override that differs from training is logged once per model."""
        trained = self.video_pre.fps
        if options.video_fps is None:
            return trained
        fps = float(options.video_fps) or None
        if fps != trained and fps not in self._fps_noted:
            self._fps_noted.add(fps)
            log.warning("%s: video at %s, but the model was trained at %s; predictions may differ from "
                        "training's (docs/predict.md, frame rate)", self.path, _rate(fps), _rate(trained))
        return fps

    @property
    def description(self) -> str:
        return f"{self.path} (variant {self.variant!r}, modalities {'+'.join(MODALITY_ABBREV[m] for m in self.modalities)})"

    def crop_spec(self, options: PredictOptions):
        """The crop: a box, a side with the model's crop rule (``VideoPreprocessing.side_crop_mode``),
        or the full frame."""
        from giamic.data import CropSpec

        if options.box is not None:
            return CropSpec(box=tuple(int(v) for v in options.box))
        if options.side is not None:
            return CropSpec(side=options.side, mode=self.video_pre.side_crop_mode)
        return CropSpec(mode="full")

    @torch.no_grad()
    def forward(self, loaded: Sequence[_Loaded]) -> np.ndarray:
        """Class probabilities ``[B, C]`` for inputs that have every modality of this model."""
        features: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            enc = self.encoders[m]
            length = self.lengths[m]
            if m == SPEECH and self.modes[m] == "finetune":
                # The training path (OnlineSpeech): the encoder's own preprocess (crop_or_pad to the
                # first 6 s, normalize_wave over the valid samples), then its forward; no cache, so
                # no float16 rounding.
                f, k = enc.encode([x.wave for x in loaded])
                features[m], masks[m] = pad_to_length(f.float().cpu(), k.cpu(), length)
                continue
            raw: list = [x.frames if m == VIDEO else x.wave if m == SPEECH else x.text for x in loaded]
            # An empty transcript (e.g. Whisper heard nothing) is what the feature cache stores as
            # absent text: zero rows, the model's empty-modality guard (as in training).
            present = [i for i, r in enumerate(raw) if not (m == TEXT and not str(r).strip())]
            rows = [np.zeros((0, int(enc.dim)), dtype=np.float16) for _ in loaded]
            if present:
                f, k = enc.encode([raw[i] for i in present])
                for j, i in enumerate(present):
                    # Cached modalities are stored as float16 (docs/decisions.md): the same rounding here.
                    rows[i] = f[j, : int(k[j].sum())].to(torch.float16).cpu().numpy()
            if self.standardization is not None and m in self.standardization.mean:
                rows = [self.standardization.apply(m, r) for r in rows]  # as training's ModelInputs.item
            features[m], masks[m] = pad_features(rows, length, int(enc.dim))
        device = next(self.model.parameters()).device
        out = self.model(
            features={m: v.to(device) for m, v in features.items()}, masks={m: v.to(device) for m, v in masks.items()}
        )
        return torch.softmax(out.logits.float(), dim=-1).cpu().numpy()


def _rate(fps: float | None) -> str:
    return "the native frame rate" if fps is None else f"{fps:g} frames/s"


def _settings_overrides(modality: str, recorded: dict) -> dict:
    """Encoder settings recorded in ``pipeline.json`` as ``build_encoder`` keyword overrides."""
    out: dict[str, Any] = {}
    for k, v in (recorded or {}).items():
        if k == "image" and isinstance(v, dict):
            out.update({ik: tuple(iv) if isinstance(iv, list) else iv for ik, iv in v.items()})
        else:
            out[k] = tuple(v) if isinstance(v, list) else v
    if modality == SPEECH and out.get("crop") not in (None, "first"):
        out["crop"] = "first"  # a random training crop becomes the first 6 s at test (docs/decisions.md)
    return out


def _identity_diff(expected: dict, actual: dict, prefix: str = "") -> list[str]:
    keys = (set(expected) | set(actual)) - _IGNORED_IDENTITY_KEYS
    diff = []
    for k in sorted(keys):
        a, b = expected.get(k), actual.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += _identity_diff(a, b, f"{prefix}{k}.")
        elif _jsonish(a) != _jsonish(b):
            diff.append(f"{prefix}{k}: recorded {a!r}, loaded {b!r}")
    return diff


def _jsonish(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonish(x) for x in v]
    return v


def _build_checked_encoder(model_dir: Path, modality: str, rec: EncoderRecord, path_override: str | None, device: str,
                           speech_state: dict | None, cache: dict, execution: str | None = None) -> Any:
    from giamic.features import build_encoder

    name = rec.name
    ident = rec.identity or {}
    source = ident.get("source") or {}
    name_or_path = path_override or rec.name_or_path
    random_init = "random_init" in source and not name.endswith("-untrained") and path_override is None
    overrides = _settings_overrides(modality, ident.get("settings") or {})
    if execution is not None:
        trained = overrides.get("execution", "fp32")
        overrides["execution"] = execution
        if execution != trained:
            log.info("%s: the %s encoder runs with execution %r (features were extracted with %r; "
                     "docs/predict.md gives the measured difference)", model_dir, modality, execution, trained)
    if modality == SPEECH and "crop" in overrides:
        ident = dict(ident, settings=dict(ident.get("settings", {}), crop="first"))
    key = (name, str(name_or_path), random_init, repr(sorted(overrides.items())), modality)
    enc = cache.get(key) if speech_state is None else None
    if enc is None:
        kwargs: dict[str, Any] = dict(overrides)
        if random_init:
            kwargs.update(random_init=True, seed=int(source["random_init"].get("seed", 0)))
        try:
            enc = build_encoder(name, None if random_init else name_or_path, device=device, **kwargs)
        except Exception as e:  # offline hub name, missing package, bad local copy
            hint = f" Point at a local copy with --encoder-path {modality}=/path/to/{name}." if not name.endswith("-untrained") else ""
            raise ModelDirError(
                f"cannot build the {modality} encoder {name!r} "
                f"({name_or_path or 'default weights'}) that this model was trained with: {e}.{hint}", model_dir
            ) from e
        if speech_state is None:
            cache[key] = enc
    if ident:
        actual = enc.identity()
        if modality == SPEECH and speech_state is not None:
            # The fine-tuned weights replace the initial ones below; compare everything else.
            ident = {k: v for k, v in ident.items() if k != "weights_sha256"}
            actual = {k: v for k, v in actual.items() if k != "weights_sha256"}
        if ident.get("weights_sha256") and ident.get("weights_sha256") == actual.get("weights_sha256"):
            # Same weights from another place (--encoder-path to a local copy of a hub checkpoint):
            # where they were read from does not change the features.
            ident = {k: v for k, v in ident.items() if k != "source"}
            actual = {k: v for k, v in actual.items() if k != "source"}
        diff = _identity_diff(ident, actual)
        if diff:
            raise ModelDirError(
                f"the {modality} encoder {name!r} loaded here is not the one the model was trained "
                f"with ({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}). Use the same weights "
                f"(--encoder-path {modality}=DIR) and settings, or retrain.", model_dir
            )
    if speech_state is not None:
        try:
            enc.load_state_dict(speech_state, strict=True)  # the training saves the encoder module itself
        except RuntimeError as e:
            raise ModelDirError(f"speech_encoder.safetensors does not fit encoder {name!r}: {e}", model_dir) from e
    enc.eval()
    return enc


def variants_accepting(available: Iterable[str]) -> list[str]:
    """Names of the Table 2 variants whose modalities are all in ``available``."""
    from giamic.models.variants import VARIANTS, variant_config

    avail = set(available)
    out = []
    for name in VARIANTS:
        try:
            mods = set(variant_config(name).modalities)
        except ValueError:
            continue
        if mods <= avail:
            out.append((len(mods), name))
    # Richest first: a variant using every available modality is the natural choice.
    return [name for _, name in sorted(out, key=lambda t: -t[0])]


class Predictor:
    """Load trained model directories once; predict on files, raw arrays or features."""

    def __init__(self, models: list[LoadedModel], device: str = "cpu") -> None:
        if not models:
            raise ModelDirError("no model directory given")
        classes = models[0].classes
        for m in models[1:]:
            if m.classes != classes:
                raise ModelDirError(f"classes {m.classes} differ from {models[0].path}'s {classes}", m.path)
        self.models = models
        self.classes = list(classes)
        self.device = device
        self._asr = None
        self._asr_key: tuple | None = None

    @classmethod
    def load(cls, model_dirs: str | Path | Sequence[str | Path], device: str = "cpu",
             encoder_paths: dict[str, str] | None = None, clip_execution: str | None = None) -> "Predictor":
        """Load one or more model directories (each input uses the first that fits its modalities).

        ``clip_execution``: run the video (CLIP) encoder as ``fp32``, ``bf16`` or ``int8``
        (``ClipSettings.execution``) instead of the way its features were extracted; ``bf16`` is
        the fast CPU choice (docs/predict.md, CPU prediction).
        """
        if isinstance(model_dirs, (str, Path)):
            model_dirs = [model_dirs]
        cache: dict = {}
        models = [LoadedModel(Path(d), device, dict(encoder_paths or {}), cache, clip_execution) for d in model_dirs]
        return cls(models, device)

    # -- model choice ----------------------------------------------------------------------------
    def choose(self, available: set[str], what: str) -> int:
        """Index of the first model whose modalities are all available, else a clear error."""
        for i, m in enumerate(self.models):
            if set(m.modalities) <= available:
                return i
        have = "+".join(MODALITY_ABBREV[m] for m in MODALITIES if m in available) or "nothing usable"
        lines = [f"{what}: has {have}; no given model accepts that."]
        for m in self.models:
            missing = [x for x in m.modalities if x not in available]
            lines.append(f"  {m.description} also needs {', '.join(_describe_missing(x) for x in missing)}")
        ok = variants_accepting(available)
        if ok:
            lines.append(f"  Variants that accept {have}: {', '.join(ok)} (train one with "
                         f"`giamic train DATA_DIR --variant {ok[0]} --out DIR` and pass it with --model).")
        if TEXT not in available:
            lines.append("  For text, give --transcript TEXT, --transcript-file FILE or --asr MODEL.")
        raise MissingModalityError("\n".join(lines))

    # -- ASR -------------------------------------------------------------------------------------
    def prepare_asr(self, options: PredictOptions):
        """Load the Whisper model once (docs/predict.md); errors early for an unavailable model."""
        from .asr import WhisperSettings, WhisperTranscriber

        key = (options.asr_model, options.asr_beam_size)
        if options.asr_model and self._asr_key != key:
            compute = "float16" if str(self.device).startswith("cuda") else "int8"
            dev = "cuda" if str(self.device).startswith("cuda") else "cpu"
            self._asr = WhisperTranscriber(WhisperSettings(model=options.asr_model, beam_size=options.asr_beam_size,
                                                           device=dev, compute_type=compute))
            self._asr_key = key
        return self._asr

    # -- raw loading -------------------------------------------------------------------------------
    def load_item(self, item: InputItem, options: PredictOptions) -> _Loaded:
        """Decode what the chosen model needs from one file (raises :class:`InputError`)."""
        from giamic.data import DataError, VideoWindow, decode_windows

        path = item.path
        probe: MediaProbe = probe_media(path)
        w = options.window
        if probe.duration is not None and w.start >= probe.duration:
            raise InputError(f"{path}: window starts at {w.start:.3f}s but the file lasts {probe.duration:.3f}s")
        audio_path, audio_window = path, w
        if item.audio is not None:
            # The utterance's own audio file (IEMOCAP's sentence wavs, cut from the dialog at the
            # window start): read whole as training reads u.wav; the model keeps its first 6 s.
            aprobe = probe_media(item.audio)
            has_audio = aprobe.has_audio
            audio_path = item.audio
            audio_window = Window(0.0, min(MAX_WINDOW_SEC, aprobe.duration) if aprobe.duration else None)
        else:
            has_audio = probe.has_audio
        available = set()
        if probe.has_video:
            available.add(VIDEO)
        if has_audio:
            available.add(SPEECH)
        if item.transcript is not None or (options.asr_model and has_audio):
            available.add(TEXT)
        idx = self.choose(available, str(path))
        model = self.models[idx]
        stop = min(w.stop, probe.duration) if probe.duration else w.stop
        loaded = _Loaded(item, idx, window=(w.start, round(stop, 3)))
        if VIDEO in model.modalities:
            # The frame window the features were extracted with (None = the whole turn, capped by
            # the frame count; directories written before it was recorded follow the audio window).
            try:
                (frames,) = decode_windows(
                    path, [VideoWindow(w.start, w.stop, model.crop_spec(options))],
                    max_frames=model.video_pre.max_frames, max_sec=model.video_pre.max_sec,
                    fps=model.video_fps(options),
                )
            except DataError as e:  # MediaError: corrupt file, no frame in the window, empty crop
                raise InputError(str(e)) from e
            loaded.frames = frames
        need_audio = SPEECH in model.modalities or (TEXT in model.modalities and item.transcript is None)
        if need_audio:
            wave = read_audio_window(audio_path, audio_window)
            if SPEECH in model.modalities:
                loaded.wave = wave
            if TEXT in model.modalities and item.transcript is None:
                asr = self.prepare_asr(options)
                loaded.text, loaded.text_source = asr.transcribe(wave), f"asr:{asr.label}"
        if TEXT in model.modalities and item.transcript is not None:
            loaded.text, loaded.text_source = item.transcript, "transcript"
        return loaded

    # -- prediction --------------------------------------------------------------------------------
    def _result(self, loaded: _Loaded, probs: np.ndarray) -> Prediction:
        m = self.models[loaded.model_index]
        _check_finite(probs, m.path)
        return Prediction(
            input=str(loaded.item.path),
            label=m.classes[int(np.argmax(probs))],
            probabilities={c: float(p) for c, p in zip(m.classes, probs)},
            model=str(m.path),
            modalities=list(m.modalities),
            window=loaded.window,
            frames=None if loaded.frames is None else int(min(len(loaded.frames), m.lengths.get(VIDEO, len(loaded.frames)))),
            audio_seconds=None if loaded.wave is None else round(len(loaded.wave) / 16000.0, 3),
            text=loaded.text,
            text_source=loaded.text_source,
        )

    def predict_items(self, items: Sequence[InputItem], options: PredictOptions = PredictOptions(), *,
                      batch_size: int = 8, progress: bool = False) -> list[Prediction]:
        """Predict every item; a failing item becomes a :class:`Prediction` with ``error`` set."""
        from tqdm import tqdm

        results: list[Prediction | None] = [None] * len(items)
        # A bar only on a terminal (giamic.log.show_progress), so redirected logs stay clean.
        with tqdm(total=len(items), desc="predict", unit="file", disable=not (progress and show_progress()),
                  file=sys.stderr) as bar:
            for s in range(0, len(items), batch_size):
                chunk = list(range(s, min(len(items), s + batch_size)))
                loaded: dict[int, _Loaded] = {}
                for i in chunk:
                    try:
                        loaded[i] = self.load_item(items[i], options)
                    except InferenceError as e:
                        results[i] = _failure(items[i], e)
                    except Exception as e:  # a decoder crash on one file must not lose the others
                        results[i] = _failure(items[i], e)
                by_model: dict[int, list[int]] = {}
                for i, x in loaded.items():
                    by_model.setdefault(x.model_index, []).append(i)
                for mi, idx in by_model.items():
                    try:
                        probs = self.models[mi].forward([loaded[i] for i in idx])
                        for j, i in enumerate(idx):
                            results[i] = self._result(loaded[i], probs[j])
                    except Exception as e:
                        for i in idx:
                            results[i] = _failure(items[i], e)
                bar.update(len(chunk))
        return [r for r in results if r is not None]

    def predict_files(self, paths: Sequence[str | Path], options: PredictOptions = PredictOptions(), *,
                      transcripts: Sequence[str | None] | None = None, batch_size: int = 8,
                      progress: bool = False) -> list[Prediction]:
        """Predict several files (per-file errors in the results)."""
        texts = list(transcripts) if transcripts is not None else [None] * len(paths)
        if len(texts) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(texts)} transcripts")
        items = [InputItem(Path(p), t) for p, t in zip(paths, texts)]
        return self.predict_items(items, options, batch_size=batch_size, progress=progress)

    def predict_file(self, path: str | Path, options: PredictOptions = PredictOptions(), *,
                     transcript: str | None = None, audio: str | Path | None = None) -> Prediction:
        """Predict one file; raises :class:`InferenceError` instead of returning an error result.

        ``audio``: the utterance's own audio file, whose time 0 is the window start (IEMOCAP's
        sentence wavs); its first 6 s are used whatever the window (else the file's own track).
        """
        loaded = self.load_item(InputItem(Path(path), transcript, audio=Path(audio) if audio else None), options)
        return self._result(loaded, self.models[loaded.model_index].forward([loaded])[0])

    def predict_raw(self, *, frames: np.ndarray | None = None, wave: np.ndarray | None = None,
                    text: str | None = None) -> Prediction:
        """Predict from arrays: RGB uint8 frames ``[k,H,W,3]`` already cropped (at most the model's
        frame count is used), a 16 kHz mono float wave (its first 6 s are used) and/or a transcript."""
        available = {m for m, v in ((VIDEO, frames), (SPEECH, wave), (TEXT, text)) if v is not None}
        if frames is not None:
            frames = np.asarray(frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
                raise InputError(f"frames must be uint8 [k>0, H, W, 3], got shape {frames.shape}")
        if wave is not None:
            wave = np.asarray(wave, dtype=np.float32).reshape(-1)
            if wave.size == 0:
                raise InputError("wave holds no samples")
        idx = self.choose(available, "arrays")
        m = self.models[idx]
        if frames is not None:
            frames = frames[: m.video_pre.max_frames]
        loaded = _Loaded(InputItem(Path("<arrays>")), idx, frames=frames, wave=wave, text=text,
                         text_source="transcript" if text is not None else None)
        return self._result(loaded, m.forward([loaded])[0])

    def analyze(self, path: str | Path, options=None, progress=None) -> list:
        """Emotion over a whole recording: one :class:`~giamic.inference.recording.Segment` per
        utterance (segments file, Whisper or voice activity; the speaker's face; docs/predict.md).
        ``analyze_recording`` in :mod:`giamic.inference.recording` also returns the timings."""
        from .recording import AnalyzeOptions, analyze_recording

        return analyze_recording(self, path, options or AnalyzeOptions(), progress).segments

    @torch.no_grad()
    def predict_features(self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                         model_index: int = 0) -> torch.Tensor:
        """Probabilities ``[B, C]`` from encoder outputs (raw, as the encoders give them) already padded
        to the model's slot lengths; the model's feature standardisation, if any, is applied here."""
        m = self.models[model_index]
        for mod in m.modalities:
            if mod not in features or mod not in masks:
                raise MissingModalityError(f"features for {mod!r} missing; model {m.description} needs them")
            if features[mod].shape[1] != m.lengths[mod]:
                raise InputError(f"{mod} features have length {features[mod].shape[1]}, the model's slot is {m.lengths[mod]}")
        if m.standardization is not None:
            features = {k: m.standardization.apply_padded(k, v, masks[k]) for k, v in features.items()}
        out = m.model(features=features, masks=masks)
        probs = torch.softmax(out.logits.float(), dim=-1)
        _check_finite(probs.detach().cpu().numpy(), m.path)
        return probs


def _check_finite(probs: np.ndarray, model_path: Path) -> None:
    """Probabilities that are not finite (NaN/inf) are an error, never a label."""
    if not np.isfinite(probs).all():
        raise InferenceError("the model gives non-finite probabilities (NaN or inf); its weights are damaged or "
                             "the training diverged; use another model directory", model_path)


def _describe_missing(modality: str) -> str:
    return {VIDEO: "a video track", SPEECH: "an audio track", TEXT: "a transcript (--transcript or --asr)"}[modality]


def _failure(item: InputItem, e: BaseException) -> Prediction:
    msg = str(e) or type(e).__name__
    if not isinstance(e, InferenceError):
        msg = f"{item.path}: {type(e).__name__}: {msg}"
    return Prediction(input=str(item.path), error=msg, error_type=type(e).__name__)


def format_table(results: Sequence[Prediction]) -> str:
    """A plain-text table: input, label, one probability column per class; failures below."""
    ok = [r for r in results if not r.error]
    classes: list[str] = []
    for r in ok:
        for c in r.probabilities:
            if c not in classes:
                classes.append(c)
    name_w = max([len("input")] + [len(r.input) for r in ok]) if ok else len("input")
    lab_w = max([len("label")] + [len(r.label or "") for r in ok])
    lines = []
    if ok:
        lines.append("  ".join(["input".ljust(name_w), "label".ljust(lab_w)] + [f"{c:>7}" for c in classes] + ["mods"]))
        for r in ok:
            probs = [f"{r.probabilities.get(c, math.nan):7.3f}" for c in classes]
            mods = "+".join(MODALITY_ABBREV[m] for m in r.modalities)
            lines.append("  ".join([r.input.ljust(name_w), (r.label or "").ljust(lab_w)] + probs + [mods]))
    for r in results:
        if r.error:
            msg = r.error[len(r.input) + 2 :] if r.error.startswith(f"{r.input}: ") else r.error
            lines.append(f"FAILED {r.input}: {msg}")
    return "\n".join(lines)
