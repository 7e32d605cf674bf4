"""The trained model directory: the one contract between training (which writes it) and inference
(which reads it). Neither stage imports the other; both import this module.

A model directory holds

* ``config.json`` + ``model.safetensors``: the fusion model (``GIAMIC.save_pretrained``; its
  :class:`~giamic.GIAMICConfig` is the model config);
* ``speech_encoder.safetensors``: the fine-tuned speech encoder, only when speech was fine-tuned
  online (encoder mode ``finetune``);
* ``standardization.safetensors``: only when features were standardised (``data.standardize``,
  docs/decisions.md): per-dimension mean and standard deviation of each standardised modality,
  fitted on the unit's training split; prediction applies them exactly as training did
  (:class:`Standardization`). Directories without it (and every older one) use raw features;
* ``pipeline.json``, written last (its presence means the directory is complete): a
  :class:`PipelineSpec`, i.e. the classes, the variant and its modalities, one
  :class:`EncoderRecord` per modality (which encoder, its identity, how its features were made),
  the :class:`Preprocessing` (audio, video with the side-crop rule, text with its source, and the
  fixed slot length of every modality), the :class:`TrainingFacts` of the unit,
  ``weights_sha256`` (the SHA-256 of each weight file) and ``format_version``.

Loading verifies each weight file against its recorded SHA-256 and refuses a mismatch (a corrupted
or replaced file), naming the file. Directories written before the hashes were recorded (giamic
0.1.0) still load, with a note that their weights are not verified.

Prediction pads each modality to ``preprocessing.lengths``: the eq. (11) stride-2 convolution sees
the slot layout, so the same lengths give the same logits (docs/decisions.md, fixed slots).

Every problem is a :class:`giamic.errors.ModelDirError` naming the file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from giamic.errors import ModelDirError
from giamic.modalities import MODALITIES
from giamic.utils.io import save_safetensors_atomic, write_json_atomic

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
WEIGHTS_FILE = "model.safetensors"
SPEECH_ENCODER_FILE = "speech_encoder.safetensors"
STANDARDIZATION_FILE = "standardization.safetensors"
FORMAT_VERSION = 1
ENCODER_MODES = ("cached", "finetune", "frozen")
TEXT_SOURCES = ("gt", "asr")
CROP_RULES = ("fixed_window", "half", "full", "prepared")

__all__ = [
    "AudioPreprocessing", "CROP_RULES", "ENCODER_MODES", "EncoderRecord", "FORMAT_VERSION", "ModelDir",
    "ModelDirError", "PIPELINE_FILE", "PipelineSpec", "Preprocessing", "SPEECH_ENCODER_FILE", "STANDARDIZATION_FILE",
    "Standardization", "TEXT_SOURCES", "TextPreprocessing", "TrainingFacts", "VideoPreprocessing", "WEIGHTS_FILE",
    "load_model_dir", "read_pipeline", "save_model_dir", "sha256_of", "verify_weights",
]


# -- reading helpers ---------------------------------------------------------------------------------
class _Reader:
    """Typed access to one JSON object of ``pipeline.json``; errors name the file and the key."""

    def __init__(self, d: Any, where: str, path: Path | None) -> None:
        if not isinstance(d, Mapping):
            raise ModelDirError(f"{where or 'pipeline'} must be an object, got {type(d).__name__}", path)
        self.d, self.where, self.path = d, where, path

    def _key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def get(self, k: str, kind: type | tuple[type, ...], default: Any = ..., optional: bool = False) -> Any:
        if k not in self.d:
            if default is ...:
                raise ModelDirError(f"{self._key(k)} is missing", self.path)
            return default
        v = self.d[k]
        if v is None and optional:
            return None
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(t.__name__ for t in kind)
            raise ModelDirError(f"{self._key(k)} must be {want}{' or null' if optional else ''}, got {v!r}", self.path)
        return v

    def choice(self, k: str, allowed: tuple[str, ...], default: Any = ...) -> str:
        v = self.get(k, str, default)
        if v not in allowed:
            raise ModelDirError(f"{self._key(k)} is {v!r}; allowed: {', '.join(allowed)}", self.path)
        return v

    def sub(self, k: str, default_empty: bool = False) -> "_Reader":
        if k not in self.d and default_empty:
            return _Reader({}, self._key(k), self.path)
        return _Reader(self.get(k, dict), self._key(k), self.path)


# -- the records -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderRecord:
    """One modality's encoder: enough to rebuild it and to check it is the one training used.

    Args:
        name: registry name for ``giamic.features.build_encoder`` (e.g. ``clip``, ``tiny-wavlm-untrained``).
        dim: width of its features (the model's ``input_dims[modality]``).
        mode: ``cached`` (features read from the cache), ``finetune`` (trained online with the model;
            its weights are in ``speech_encoder.safetensors``) or ``frozen`` (encoded online, not trained).
        name_or_path: the weights' location given at training, or None for the registry default.
        identity: ``enc.identity()``: everything that changes the features (weights hash, settings).
        feature_key: the feature-cache folder the features came from (cached mode).
        extraction: the cache's extraction settings (frame window, text source, ...), cached mode.
        run_config: the trainable encoder's training settings (finetune mode).
    """

    name: str
    dim: int
    mode: str = "cached"
    name_or_path: str | None = None
    identity: dict = field(default_factory=dict)
    feature_key: str | None = None
    extraction: dict | None = None
    run_config: dict | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "name_or_path": self.name_or_path, "identity": self.identity,
               "feature_key": self.feature_key, "dim": self.dim, "mode": self.mode}
        if self.extraction is not None:
            out["extraction"] = self.extraction
        if self.run_config is not None:
            out["run_config"] = self.run_config
        return out

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "encoder", path: Path | None = None) -> "EncoderRecord":
        r = _Reader(d, where, path)
        return cls(name=r.get("name", str), dim=r.get("dim", int), mode=r.choice("mode", ENCODER_MODES, "cached"),
                   name_or_path=r.get("name_or_path", str, None, optional=True),
                   identity=dict(r.get("identity", dict, {}, optional=True) or {}),
                   feature_key=r.get("feature_key", str, None, optional=True),
                   extraction=r.get("extraction", dict, None, optional=True),
                   run_config=r.get("run_config", dict, None, optional=True))


@dataclass(frozen=True)
class AudioPreprocessing:
    """How a wave becomes the speech encoder's input: ``sr`` Hz mono, the first ``max_sec`` seconds
    (``max_samples`` samples; ``crop`` is ``first`` at test), zero mean / unit variance if ``normalize``."""

    sr: int = 16000
    max_sec: float = 6.0
    max_samples: int = 96000
    crop: str = "first"
    normalize: bool = True

    def to_dict(self) -> dict:
        return {"sr": self.sr, "max_sec": self.max_sec, "max_samples": self.max_samples, "crop": self.crop,
                "normalize": self.normalize}


@dataclass(frozen=True)
class VideoPreprocessing:
    """How a turn becomes frames: at most ``max_frames`` frames of the first ``max_sec`` seconds
    (None: the whole turn), cropped to the speaker's side with the rule ``crop_mode``
    (``fixed_window``: IEMOCAP's fixed windows; ``half``; ``full``: no crop; ``prepared``: the
    dataset's own rule), keeping at most ``fps`` frames per second of the window (None: the native
    rate, the paper's 180 frames per 6 s; directories written before the setting existed read as None)."""

    max_frames: int = 180
    max_sec: float | None = 6.0
    crop_mode: str = "prepared"
    fps: float | None = None

    @property
    def side_crop_mode(self) -> str:
        """The crop rule to apply when a speaker side is given at prediction: ``prepared`` means the
        dataset's rule, IEMOCAP's fixed windows; a model trained on full frames gets the half, the
        only side crop that keeps the frame."""
        return {"prepared": "fixed_window", "full": "half"}.get(self.crop_mode, self.crop_mode)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"max_frames": self.max_frames, "max_sec": self.max_sec, "crop_mode": self.crop_mode}
        if self.fps is not None:  # absent at the native rate, as in directories written before it existed
            out["fps"] = self.fps
        return out


@dataclass(frozen=True)
class TextPreprocessing:
    """Where the text comes from (``gt`` transcripts or ``asr`` ones) and its token cap."""

    source: str = "gt"
    max_tokens: int = 64

    def to_dict(self) -> dict:
        return {"source": self.source, "max_tokens": self.max_tokens}


@dataclass(frozen=True)
class Preprocessing:
    """Per-modality input preparation plus ``lengths``: the fixed slot length ``T`` of every
    modality the model was trained with."""

    lengths: dict[str, int]
    audio: AudioPreprocessing = AudioPreprocessing()
    video: VideoPreprocessing = VideoPreprocessing()
    text: TextPreprocessing = TextPreprocessing()

    def to_dict(self) -> dict:
        return {"audio": self.audio.to_dict(), "video": self.video.to_dict(), "text": self.text.to_dict(),
                "lengths": dict(self.lengths)}

    @classmethod
    def from_dict(cls, d: Mapping, path: Path | None = None) -> "Preprocessing":
        r = _Reader(d, "preprocessing", path)
        a, v, t = r.sub("audio", True), r.sub("video", True), r.sub("text", True)
        audio = AudioPreprocessing(sr=a.get("sr", int, 16000), max_sec=a.get("max_sec", float, 6.0),
                                   max_samples=a.get("max_samples", int, 96000), crop=a.get("crop", str, "first"),
                                   normalize=a.get("normalize", bool, True))
        # Directories written before the frame window was recorded follow the audio window.
        video = VideoPreprocessing(max_frames=v.get("max_frames", int, 180),
                                   max_sec=v.get("max_sec", float, audio.max_sec, optional=True),
                                   crop_mode=v.get("crop_mode", str, "prepared", optional=True) or "prepared",
                                   fps=v.get("fps", float, None, optional=True))
        if video.fps is not None and not video.fps > 0:
            raise ModelDirError(f"preprocessing.video.fps must be positive or null, got {video.fps!r}", path)
        if video.crop_mode not in CROP_RULES:
            raise ModelDirError(f"preprocessing.video.crop_mode is {video.crop_mode!r}; allowed: "
                                f"{', '.join(CROP_RULES)}", path)
        text = TextPreprocessing(source=t.choice("source", TEXT_SOURCES, "gt"), max_tokens=t.get("max_tokens", int, 64))
        lr = r.sub("lengths", True)
        lengths = {m: lr.get(m, int) for m in lr.d}
        return cls(lengths=lengths, audio=audio, video=video, text=text)


@dataclass(frozen=True)
class TrainingFacts:
    """The (seed, fold) unit the model comes from and the validation scores that selected it."""

    seed: int
    fold: str
    test_group: str | None = None
    best_epoch: int = 0
    val_ua: float | None = None
    val_wa: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping, path: Path | None = None) -> "TrainingFacts":
        r = _Reader(d, "training", path)
        return cls(seed=r.get("seed", int), fold=r.get("fold", str),
                   test_group=r.get("test_group", str, None, optional=True), best_epoch=r.get("best_epoch", int, 0),
                   val_ua=r.get("val_ua", float, None, optional=True), val_wa=r.get("val_wa", float, None, optional=True))


@dataclass(frozen=True)
class PipelineSpec:
    """The content of ``pipeline.json``: how raw media become this model's inputs.

    Args:
        classes: class names; class index = position.
        modalities: the variant's modalities, in the model's order.
        encoders: one :class:`EncoderRecord` per modality.
        preprocessing: audio, video (with the side-crop rule), text (with its source) and the slot lengths.
        variant: the Table 2 row the model is.
        training: the unit's :class:`TrainingFacts` (None until training has selected the model).
        speech_encoder_file: ``speech_encoder.safetensors`` when speech was fine-tuned, else None.
        giamic_version: the version that wrote the directory.
        weights_sha256: ``{file name: SHA-256 hex digest}`` of every weight file, checked on loading;
            None in directories written before the hashes were recorded.
        format_version: the layout version; this giamic reads :data:`FORMAT_VERSION`.
        standardization_file: ``standardization.safetensors`` when features were standardised
            (:class:`Standardization`), else None (the key is then left out of ``pipeline.json``).
    """

    classes: tuple[str, ...]
    modalities: tuple[str, ...]
    encoders: dict[str, EncoderRecord]
    preprocessing: Preprocessing
    variant: str = "?"
    training: TrainingFacts | None = None
    speech_encoder_file: str | None = None
    giamic_version: str | None = None
    format_version: int = FORMAT_VERSION
    weights_sha256: dict[str, str] | None = None
    standardization_file: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "modalities", tuple(self.modalities))

    @property
    def crop_rule(self) -> str:
        """The side-crop rule training used (``preprocessing.video.crop_mode``)."""
        return self.preprocessing.video.crop_mode

    @property
    def text_source(self) -> str:
        return self.preprocessing.text.source

    def with_training(self, facts: TrainingFacts) -> "PipelineSpec":
        return dataclasses.replace(self, training=facts)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"classes": list(self.classes), "variant": self.variant,
                               "modalities": list(self.modalities),
                               "encoders": {m: e.to_dict() for m, e in self.encoders.items()},
                               "preprocessing": self.preprocessing.to_dict(), "giamic_version": self.giamic_version}
        if self.training is not None:
            out["training"] = self.training.to_dict()
        out["format_version"] = self.format_version
        out["speech_encoder_file"] = self.speech_encoder_file
        if self.weights_sha256 is not None:
            out["weights_sha256"] = dict(sorted(self.weights_sha256.items()))
        if self.standardization_file is not None:
            out["standardization_file"] = self.standardization_file
        return out

    @classmethod
    def from_dict(cls, d: Mapping, path: Path | None = None) -> "PipelineSpec":
        r = _Reader(d, "", path)
        version = d.get("format_version") if isinstance(d, Mapping) else None
        if version != FORMAT_VERSION:
            raise ModelDirError(f"format_version {version!r} is not supported (this giamic reads {FORMAT_VERSION})", path)
        classes = r.get("classes", list)
        mods = r.get("modalities", list)
        bad = [m for m in mods if m not in MODALITIES]
        if bad:
            raise ModelDirError(f"modalities {bad} unknown; allowed: {', '.join(MODALITIES)}", path)
        enc = r.sub("encoders")
        encoders = {m: EncoderRecord.from_dict(v, f"encoders.{m}", path) for m, v in enc.d.items()}
        training = r.get("training", dict, None, optional=True)
        hashes = r.get("weights_sha256", dict, None, optional=True)
        if hashes is not None:
            bad = [k for k, v in hashes.items()
                   if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v))]
            if bad:
                raise ModelDirError(f"weights_sha256.{bad[0]} must be a SHA-256 hex digest (64 hex digits)", path)
        return cls(classes=tuple(str(c) for c in classes), modalities=tuple(mods), encoders=encoders,
                   preprocessing=Preprocessing.from_dict(r.get("preprocessing", dict), path),
                   variant=r.get("variant", str, "?"),
                   training=None if training is None else TrainingFacts.from_dict(training, path),
                   speech_encoder_file=r.get("speech_encoder_file", str, None, optional=True),
                   giamic_version=r.get("giamic_version", str, None, optional=True),
                   format_version=version, weights_sha256=None if hashes is None else dict(hashes),
                   standardization_file=r.get("standardization_file", str, None, optional=True))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> "PipelineSpec":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ModelDirError(f"not valid JSON ({e})", path) from e
        return cls.from_dict(d, path)

    def check(self, model_config: Any, where: Path, speech_file_present: bool) -> None:
        """Raise :class:`ModelDirError` when this spec disagrees with the model's config or files."""
        cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
        if len(self.classes) != cfg["num_classes"]:
            raise ModelDirError(f"{len(self.classes)} classes {list(self.classes)} but config.json has num_classes="
                                f"{cfg['num_classes']}", where)
        if list(self.modalities) != list(cfg["modalities"]):
            raise ModelDirError(f"modalities {list(self.modalities)} differ from config.json's "
                                f"{list(cfg['modalities'])}", where)
        for m in self.modalities:
            e = self.encoders.get(m)
            if e is None or not e.name:
                raise ModelDirError(f"no encoder recorded for modality {m!r}", where)
            if int(e.dim) != int(cfg["input_dims"][m]):
                raise ModelDirError(f"encoder {e.name!r} gives {e.dim}-d {m} features but the model expects "
                                    f"input_dims[{m!r}]={cfg['input_dims'][m]}", where)
            if int(self.preprocessing.lengths.get(m, 0)) <= 0:
                raise ModelDirError(f"preprocessing.lengths has no padded length for {m!r}", where)
        speech = self.encoders.get("speech")
        finetuned = speech is not None and speech.mode == "finetune" and "speech" in self.modalities
        if finetuned != speech_file_present:
            raise ModelDirError(f"speech mode {'finetune' if finetuned else 'cached/frozen'} but "
                                f"{SPEECH_ENCODER_FILE} is {'present' if speech_file_present else 'missing'}", where)


# -- feature standardisation -------------------------------------------------------------------------
@dataclass
class Standardization:
    """Per-dimension standardisation of cached features: ``(x - mean) / std`` for each modality in
    ``mean`` (``[D]`` float32 each). One instance is fitted on a unit's training split, applied to
    every utterance of training, validation and test, saved in the model directory and applied by
    prediction: one code path (:meth:`apply`), so prediction reproduces evaluation."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    #: a dimension whose spread is below this is only centred (divided by 1), not blown up
    MIN_STD = 1e-6

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.mean)

    @classmethod
    def fit(cls, arrays: Mapping[str, Any]) -> "Standardization":
        """Fit from ``{modality: iterable of [T, D] arrays}``: every row (frame, token or clip) of
        every array is one sample; accumulated in float64."""
        mean, std = {}, {}
        for m, items in arrays.items():
            n, s1, s2 = 0, None, None
            for a in items:
                a = np.asarray(a, dtype=np.float64)
                if a.shape[0] == 0:
                    continue
                s1 = a.sum(0) if s1 is None else s1 + a.sum(0)
                s2 = (a * a).sum(0) if s2 is None else s2 + (a * a).sum(0)
                n += a.shape[0]
            if n == 0:
                raise ValueError(f"no {m} features in the training split to fit the standardisation on")
            mu = s1 / n
            var = np.maximum(s2 / n - mu * mu, 0.0)
            sd = np.sqrt(var)
            sd[sd < cls.MIN_STD] = 1.0
            mean[m], std[m] = mu.astype(np.float32), sd.astype(np.float32)
        return cls(mean, std)

    def apply(self, modality: str, a: np.ndarray) -> np.ndarray:
        """``[T, D]`` features of ``modality`` → float32 standardised (unchanged, as float32, for a
        modality without statistics)."""
        a = np.asarray(a, dtype=np.float32)
        if modality not in self.mean:
            return a
        return (a - self.mean[modality]) / self.std[modality]

    def apply_padded(self, modality: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same on padded ``[B, T, D]`` features; padding rows stay zero."""
        if modality not in self.mean:
            return x
        mu = torch.from_numpy(self.mean[modality]).to(x.device, x.dtype)
        sd = torch.from_numpy(self.std[modality]).to(x.device, x.dtype)
        return (x - mu) / sd * mask[..., None].to(x.dtype)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for m in self.mean:
            out[f"{m}.mean"] = torch.from_numpy(np.ascontiguousarray(self.mean[m]))
            out[f"{m}.std"] = torch.from_numpy(np.ascontiguousarray(self.std[m]))
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], path: Path | None = None) -> "Standardization":
        mods = sorted({k.rsplit(".", 1)[0] for k in tensors})
        mean, std = {}, {}
        for m in mods:
            if m not in MODALITIES or f"{m}.mean" not in tensors or f"{m}.std" not in tensors:
                raise ModelDirError(f"tensors {sorted(tensors)} are not <modality>.mean / <modality>.std pairs", path)
            mean[m] = tensors[f"{m}.mean"].float().cpu().numpy()
            std[m] = tensors[f"{m}.std"].float().cpu().numpy()
            if mean[m].shape != std[m].shape or mean[m].ndim != 1 or not (std[m] > 0).all():
                raise ModelDirError(f"{m}: mean and std must be 1-D of one width with std > 0", path)
        return cls(mean, std)


# -- the directory -----------------------------------------------------------------------------------
@dataclass
class ModelDir:
    """A loaded model directory: the fusion model (in eval mode), its spec and, when speech was
    fine-tuned, the speech encoder's state dict."""

    path: Path
    model: Any  # giamic.GIAMIC
    spec: PipelineSpec
    speech_encoder_state: dict[str, torch.Tensor] | None = None
    standardization: Standardization | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def config(self):
        """The model config (:class:`giamic.GIAMICConfig`) from ``config.json``."""
        return self.model.config

    @property
    def pipeline(self) -> dict:
        """``pipeline.json`` as a plain dictionary."""
        return self.spec.to_dict()


def save_model_dir(directory: str | Path, model, spec: PipelineSpec,
                   speech_encoder: torch.nn.Module | dict | None = None,
                   standardization: Standardization | None = None) -> Path:
    """Write a complete model directory; ``pipeline.json`` last (the completion marker)."""
    if not isinstance(spec, PipelineSpec):
        raise TypeError(f"save_model_dir wants a PipelineSpec, got {type(spec).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / PIPELINE_FILE
    if marker.exists():  # rewriting: the directory is incomplete until the new marker lands
        marker.unlink()
    model.save_pretrained(directory)
    if speech_encoder is not None:
        state = speech_encoder if isinstance(speech_encoder, dict) else speech_encoder.state_dict()
        save_safetensors_atomic(state, directory / SPEECH_ENCODER_FILE, metadata={"format": "pt"})
    else:
        (directory / SPEECH_ENCODER_FILE).unlink(missing_ok=True)
    if standardization is not None and standardization.mean:
        save_safetensors_atomic(standardization.to_tensors(), directory / STANDARDIZATION_FILE,
                                metadata={"format": "pt"})
    else:
        standardization = None
        (directory / STANDARDIZATION_FILE).unlink(missing_ok=True)
    weights = ([WEIGHTS_FILE] + ([SPEECH_ENCODER_FILE] if speech_encoder is not None else [])
               + ([STANDARDIZATION_FILE] if standardization is not None else []))
    spec = dataclasses.replace(spec, format_version=FORMAT_VERSION,
                               speech_encoder_file=SPEECH_ENCODER_FILE if speech_encoder is not None else None,
                               standardization_file=STANDARDIZATION_FILE if standardization is not None else None,
                               weights_sha256={name: sha256_of(directory / name) for name in weights})
    spec.check(model.config, marker, speech_file_present=speech_encoder is not None)
    write_json_atomic(marker, spec.to_dict())
    return directory


def sha256_of(path: str | Path, block: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def verify_weights(directory: str | Path, spec: PipelineSpec) -> None:
    """Check every weight file against the SHA-256 recorded in ``pipeline.json``; raise
    :class:`ModelDirError` naming the first file that is missing or differs. A directory without
    recorded hashes (written by giamic 0.1.0) is accepted with a note."""
    directory = Path(directory)
    if spec.weights_sha256 is None:
        log.info("%s: %s records no weight hashes (written by an earlier giamic); the weights are not verified",
                 directory, PIPELINE_FILE)
        return
    for name, want in sorted(spec.weights_sha256.items()):
        p = directory / name
        if Path(name).name != name:
            raise ModelDirError(f"weights_sha256 names {name!r}, which is not a file of the directory",
                                directory / PIPELINE_FILE)
        try:
            got = sha256_of(p)
        except FileNotFoundError:
            raise ModelDirError("missing (pipeline.json records its SHA-256)", p) from None
        except OSError as e:
            raise ModelDirError(f"cannot read it ({e.strerror})", p) from e
        if got != want:
            raise ModelDirError(f"SHA-256 {got[:12]}... differs from the {want[:12]}... recorded in {PIPELINE_FILE}: "
                                f"the file is corrupted or was replaced; copy the model directory again", p)


def read_pipeline(directory: str | Path) -> PipelineSpec:
    """The :class:`PipelineSpec` of a model directory (without loading the model)."""
    directory = Path(directory)
    path = directory / PIPELINE_FILE
    if not path.is_file():
        raise ModelDirError(f"not a complete model directory: {PIPELINE_FILE} is missing "
                            f"(expected config.json, model.safetensors, {PIPELINE_FILE})", directory)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelDirError(f"cannot read it ({e})", path) from e
    return PipelineSpec.from_json(text, path)


def _load_listed(directory: Path, name: str, what: str, map_location) -> dict:
    """The tensors of a safetensors file that ``pipeline.json`` names; a missing or unreadable file
    is a :class:`ModelDirError` naming it."""
    from safetensors.torch import load_file

    p = directory / name
    if not p.is_file():
        raise ModelDirError(f"names {name}, which is missing", directory / PIPELINE_FILE)
    try:
        return load_file(str(p), device=str(map_location))
    except Exception as e:
        raise ModelDirError(f"cannot load {what} ({type(e).__name__}: {e})", p) from e


def load_model_dir(directory: str | Path, map_location: str | torch.device = "cpu") -> ModelDir:
    """Load the fusion model, its :class:`PipelineSpec` and (if present) the fine-tuned speech
    encoder's state dict; raise :class:`ModelDirError` naming the file on any problem."""
    from giamic.models.modeling import GIAMIC

    directory = Path(directory)
    if not directory.exists():
        raise ModelDirError(f"model directory not found (expected a folder with config.json, model.safetensors "
                            f"and {PIPELINE_FILE})", directory)
    if not directory.is_dir():
        raise ModelDirError("not a directory (give the model directory written by giamic train/cv)", directory)
    spec = read_pipeline(directory)
    verify_weights(directory, spec)
    try:
        model = GIAMIC.from_pretrained(directory, map_location=map_location)
    except (FileNotFoundError, ValueError) as e:  # the message names the file
        raise ModelDirError(str(e)) from e
    except Exception as e:  # corrupt safetensors, weights that do not fit the config
        raise ModelDirError(f"cannot load the trained model ({type(e).__name__}: {e})", directory) from e
    state = None
    if spec.speech_encoder_file:
        state = _load_listed(directory, spec.speech_encoder_file, "the fine-tuned speech encoder", map_location)
    standardization = None
    if spec.standardization_file:
        tensors = _load_listed(directory, spec.standardization_file, "the feature standardisation", "cpu")
        standardization = Standardization.from_tensors(tensors, directory / spec.standardization_file)
        for m in standardization.modalities:
            enc = spec.encoders.get(m)
            if m not in spec.modalities or enc is None or int(enc.dim) != standardization.mean[m].shape[0]:
                raise ModelDirError(f"standardises {m} with {standardization.mean[m].shape[0]} dimensions, which does "
                                    f"not match the model's {m} input", directory / spec.standardization_file)
    spec.check(model.config, directory / PIPELINE_FILE, speech_file_present=state is not None)
    model.eval()
    return ModelDir(path=directory, model=model, spec=spec, speech_encoder_state=state, standardization=standardization)
