"""The training configuration: one typed object, the single source of truth for a run.

A run's settings come, in this order (later wins), from

1. the dataclass defaults below, which are the paper's recipe (spec §5 and §8);
2. a named preset (``paper``, ``demo``, ``tiny``: YAML files in ``giamic/train/presets/``) or any
   YAML/JSON file given by path;
3. ``--set section.key=value`` overrides from the command line (``--set train.lr=3e-4``).

Values given as text are converted to the field's declared type, so ``train.lr=3e-4`` is a float
and ``train.seeds=0,1,2`` a list of ints. Unknown keys are errors, except in the ``model`` section,
where any other key is a :class:`giamic.GIAMICConfig` field (checked when the model is built) kept in
``model.overrides``: ``--set model.gamma=0`` or ``--set model.d=64``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    """Where the prepared dataset is and how its inputs are cut (spec §8 ``data``)."""

    data_dir: str = ""  # a prepared dataset directory (contract §1)
    text_source: str = "gt"  # gt | asr (the transcript_asr column; spec §6)
    max_frames: int = 180  # K: video frames per utterance (spec §2 item 33)
    max_tokens: int = 64  # N: text tokens per utterance (spec §2 item 31)
    audio_sr: int = 16000
    audio_max_sec: float = 6.0  # spec §2 item 32
    audio_crop: str = "first"  # first | random_train (spec §2 item 32)
    audio_normalize: bool = True  # zero mean / unit variance over valid samples (spec §3.2)
    val_mode: str = "random10"  # random10 | dialog_group (spec §2 item 38)
    val_fraction: float = 0.1
    num_workers: int = 0  # DataLoader workers for the online-speech path


@dataclass
class EncoderConfig:
    """Which encoder fills each modality (contract §2 registry names) and how speech is trained."""

    video: str = "clip"
    speech: str = "wavlm"
    text: str = "roberta"
    video_path: str | None = None  # name_or_path override for build_encoder
    speech_path: str | None = None
    text_path: str | None = None
    video_key: str | None = None  # feature-store key; None = the one store made by this encoder
    speech_key: str | None = None
    text_key: str | None = None  # None = the store of this encoder for data.text_source
    speech_mode: str = "finetune"  # finetune (online from raw audio, spec §3.2) | cached (frozen, from the cache)
    grad_checkpointing: bool = False  # WavLM gradient checkpointing (spec §7.3)


@dataclass
class ModelConfig:
    """The fusion model: a Table 2 variant on a named size preset, plus GIAMICConfig overrides."""

    variant: str = "full"  # any name of giamic.models.variants (full, wo_msr, ..., V, S, T)
    size: str = "paper"  # paper (d = 768, spec §1) | tiny (a small width for tests and the demo)
    overrides: dict[str, Any] = field(default_factory=dict)  # any other GIAMICConfig field


@dataclass
class TrainConfig:
    """The optimisation recipe (spec §5; items 27, 38, 39, 47, 48, 49)."""

    optimizer: str = "adam"
    lr: float = 1.0e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    weight_decay: float = 0.0
    batch_size: int = 32  # effective (global) batch
    micro_batch_size: int = 0  # per-process micro-batch; 0 = no accumulation (spec §2 item 47)
    max_epochs: int = 40
    patience: int = 8  # early stopping on validation UA (spec §2 item 39)
    select_on: str = "val_ua"  # val_ua | val_wa
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    grad_clip: float = 1.0  # max-norm; 0 disables (spec §2 item 48)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    folds: list[str] = field(default_factory=list)  # fold names to run; empty = all
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    ddp_find_unused: str = "auto"  # auto (on when the speech encoder is fine-tuned) | true | false
    deterministic: bool = False  # torch.use_deterministic_algorithms
    cpu_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    eval_batch_size: int = 64
    keep_checkpoints: bool = False  # keep checkpoint/ and best weights after a unit is done
    progress: bool = True  # tqdm progress bar


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        cfg = cls()
        apply_dict(cfg, d)
        return cfg

    def fingerprint(self, exclude: tuple[str, ...] = ("train.seeds", "train.folds", "train.progress",
                                                      "data.num_workers", "train.eval_batch_size",
                                                      "train.keep_checkpoints", "train.cpu_threads")) -> str:
        """A hash of everything that changes a (variant, seed, fold) unit's result.

        Resume refuses a unit whose fingerprint changed. Seeds and fold lists only choose *which*
        units run; workers and the progress bar do not change results."""
        d = self.to_dict()
        for key in exclude:
            sec, name = key.split(".")
            d[sec].pop(name, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


PRESETS_PACKAGE = "giamic.train.presets"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def read_config_file(name_or_path: str) -> dict:
    """A preset by name, or a YAML/JSON file by path, as a nested dict."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") and p.exists():
        text = p.read_text(encoding="utf-8")
        return (json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)) or {}
    res = resources.files(PRESETS_PACKAGE) / f"{name_or_path}.yaml"
    if not res.is_file():
        raise ValueError(f"no config file or preset named {name_or_path!r}; presets: {', '.join(preset_names())}")
    d = yaml.safe_load(res.read_text(encoding="utf-8")) or {}
    base = d.pop("base", None)  # a preset may extend another one
    if base:
        merged = read_config_file(base)
        _deep_merge(merged, d)
        return merged
    return d


def _deep_merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def load_config(preset: str | None = "paper", overrides: list[str] | None = None,
                data_dir: str | None = None) -> RunConfig:
    """Defaults, then ``preset`` (a name or a file), then ``--set`` overrides."""
    cfg = RunConfig()
    if preset:
        apply_dict(cfg, read_config_file(preset))
    if data_dir is not None:
        cfg.data.data_dir = str(data_dir)
    for item in overrides or []:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


def apply_dict(cfg: RunConfig, d: dict) -> None:
    for sec_name, values in (d or {}).items():
        if sec_name == "base":
            continue
        section = _section(cfg, sec_name)
        if not isinstance(values, dict):
            raise ValueError(f"config section {sec_name!r} must be a mapping")
        for key, value in values.items():
            _set(section, sec_name, key, value)


def apply_override(cfg: RunConfig, item: str) -> None:
    """One ``section.key=value`` string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ValueError(f"override must look like section.key=value, got {item!r}")
    path, value = item.split("=", 1)
    sec_name, key = path.strip().split(".", 1)
    section = _section(cfg, sec_name)
    if sec_name == "model" and key.startswith("overrides."):
        key = key[len("overrides."):]
    _set(section, sec_name, key, value, from_text=True)


def _section(cfg: RunConfig, name: str):
    if name not in {f.name for f in dataclasses.fields(cfg)}:
        raise ValueError(f"unknown config section {name!r}; sections: data, encoders, model, train")
    return getattr(cfg, name)


def _set(section, sec_name: str, key: str, value: Any, from_text: bool = False) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        if sec_name == "model":  # a GIAMICConfig field; its type is checked when the model is built
            section.overrides[key] = _parse_scalar(value) if from_text else value
            return
        raise ValueError(f"unknown config key {sec_name}.{key}; keys: {', '.join(sorted(fields))}")
    if key == "overrides" and sec_name == "model":
        if not isinstance(value, dict):
            raise ValueError("model.overrides must be a mapping")
        section.overrides.update(value)
        return
    hint = typing.get_type_hints(type(section))[key]
    setattr(section, key, coerce(value, hint, f"{sec_name}.{key}"))


def _parse_scalar(text: Any) -> Any:
    """A ``--set model.<key>=text`` value: int, float, bool, None, or YAML (lists, mappings)."""
    if not isinstance(text, str):
        return text
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            return conv(text)
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert ``value`` (possibly text) to the type ``hint``; raise a clear error otherwise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], name)
    if origin is list:
        (item_t,) = args
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = yaml.safe_load(text)
            else:
                value = [v for v in text.split(",") if v.strip()] if text else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, item_t, name) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    try:
        if hint is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "." in value else int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


_CHOICES = {
    ("data", "text_source"): ("gt", "asr"),
    ("data", "audio_crop"): ("first", "random_train"),
    ("data", "val_mode"): ("random10", "dialog_group"),
    ("encoders", "speech_mode"): ("finetune", "cached"),
    ("model", "size"): ("paper", "tiny"),
    ("train", "optimizer"): ("adam", "adamw"),
    ("train", "select_on"): ("val_ua", "val_wa"),
    ("train", "precision"): ("auto", "bf16", "fp16", "fp32"),
    ("train", "ddp_find_unused"): ("auto", "true", "false"),
}


def validate(cfg: RunConfig) -> None:
    for (sec, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, sec), key)
        if value not in choices:
            raise ValueError(f"{sec}.{key} must be one of {choices}, got {value!r}")
    t = cfg.train
    if t.batch_size < 1 or t.micro_batch_size < 0 or t.max_epochs < 1 or t.patience < 1:
        raise ValueError("train.batch_size, max_epochs and patience must be >= 1; micro_batch_size >= 0")
    if t.micro_batch_size and t.batch_size % t.micro_batch_size:
        raise ValueError("train.batch_size must be a multiple of train.micro_batch_size")
    if t.lr <= 0:
        raise ValueError("train.lr must be positive")
    if not t.seeds:
        raise ValueError("train.seeds must name at least one seed")
    if not 0 < cfg.data.val_fraction < 1:
        raise ValueError("data.val_fraction must be in (0, 1)")


def format_config(cfg: RunConfig) -> str:
    """The config as YAML (what ``giamic train --print-config`` shows)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
