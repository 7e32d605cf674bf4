"""The run configuration: one typed object, the single source of truth for a training run.

A run's settings come, in this order (later wins), from

1. the dataclass defaults below, which are the paper's recipe (``--config paper`` names exactly
   these defaults);
2. a named preset (``cpu``, ``demo``, ``tiny``: YAML files in ``giamic/presets/``, shared with
   ``giamic extract --preset``) or any YAML/JSON file given by path;
3. ``--set section.key=value`` overrides from the command line (``--set train.lr=3e-4``).

Every key of every section is a typed field, checked when the configuration is loaded: an unknown
key, a value that cannot be read as the field's type, or a value outside the field's allowed set is a
:class:`giamic.errors.ConfigError` naming the key and what it accepts. Values given as text are
converted to the field's declared type, so ``train.lr=3e-4`` is a float and ``train.seeds=0,1,2`` a
list of ints.

The ``model`` section carries every :class:`giamic.GIAMICConfig` field (``--set model.gamma=0``,
``--set model.d_model=64``, also spelled ``model.d``). A model field left unset (``None``) takes the
value of the chosen Table 2 variant on the chosen size preset, e.g. ``gamma`` is 0.1 for ``full`` and
0 for ``wo_mic``; the defaults themselves live once, in ``GIAMICConfig`` and
``giamic.models.variants``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from giamic.errors import ConfigError


@dataclass
class DataConfig:
    """Where the prepared dataset is and how its inputs are cut.

    Args:
        data_dir (`str`, defaults to `""`):
            A prepared dataset directory (``giamic prepare``; docs/architecture.md, section 1). The
            commands fill it from their ``DATA_DIR`` argument.
        text_source (`str`, defaults to `"gt"`):
            Which transcript feeds the text encoder: ``gt`` (the corpus transcripts) or ``asr`` (the
            ``transcript_asr`` column written by ``giamic transcribe``), for training and test alike.
        max_frames (`int`, defaults to 180):
            K, the number of video frames per utterance (the paper's 180 images).
        video_fps (`float`, *optional*):
            Frames per second kept of the video window (``giamic extract --video-fps``): unset keeps the
            native rate, the paper's 180 frames per 6 s; e.g. 2 keeps 12 frames per 6 s, for fast CPU
            prediction (docs/predict.md). The video cache must be extracted with the same rate; the
            model directory records it so that prediction uses it too.
        max_tokens (`int`, defaults to 64):
            N, the number of text tokens per utterance.
        audio_sr (`int`, defaults to 16000):
            Sample rate (Hz) of the audio fed to the speech encoder.
        audio_max_sec (`float`, defaults to 6.0):
            Seconds of audio per utterance (the paper's 6 s); longer utterances are cropped.
        audio_crop (`str`, defaults to `"first"`):
            Which window of a longer utterance is kept: ``first`` (the first ``audio_max_sec``
            seconds) or ``random_train`` (a random window in training, the first one otherwise;
            only for a fine-tuned speech encoder).
        audio_normalize (`bool`, defaults to `True`):
            Zero mean and unit variance over the valid samples of each waveform (as WavLM expects).
        val_mode (`str`, defaults to `"random10"`):
            How the validation part is cut from a fold's training part: ``random10`` (a class-
            stratified random share) or ``dialog_group`` (whole dialogs held out).
        val_fraction (`float`, defaults to 0.1):
            The share of the training part held out for validation, in (0, 1).
        num_workers (`int`, defaults to 0):
            DataLoader worker processes for the online speech path (0 = load in the main process).
            Does not change results. For WavLM fine-tuned on a GPU use 8 (``giamic reproduce``
            does): one process prepares ≈ 280 utterances/s, an H100 step consumes ≈ 574/s
            (``bench/data.py``).
        standardize (`str`, defaults to `"auto"`):
            Per-dimension standardisation of cached features, ``(x - mean) / std`` with the mean and
            standard deviation fitted on each unit's training split only (never its validation or
            test utterances), stored in the model directory and applied by prediction:
            ``auto`` (imported features, ``giamic import-features``, whose scales are unknown),
            ``on`` (every cached modality, encoder features too) or ``off``; a run records ``auto``
            as what it became: ``imported`` (the imported stores) or ``off``. Online speech is
            normalised per waveform instead (``audio_normalize``). docs/decisions.md.
    """

    data_dir: str = ""
    text_source: str = "gt"
    max_frames: int = 180
    video_fps: float | None = None
    max_tokens: int = 64
    audio_sr: int = 16000
    audio_max_sec: float = 6.0
    audio_crop: str = "first"
    audio_normalize: bool = True
    val_mode: str = "random10"
    val_fraction: float = 0.1
    num_workers: int = 0
    standardize: str = "auto"


@dataclass
class EncoderConfig:
    """Which encoder fills each modality and how the speech encoder is trained.

    Args:
        video (`str`, defaults to `"clip"`):
            Registry name of the video encoder (``giamic encoders`` lists them; CLIP ViT-L/14 in the
            paper).
        speech (`str`, defaults to `"wavlm"`):
            Registry name of the speech encoder (WavLM-large in the paper).
        text (`str`, defaults to `"roberta"`):
            Registry name of the text encoder (RoBERTa-base in the paper).
        video_path (`str`, *optional*):
            A local directory or hub name that replaces the registry's default weights of the video
            encoder.
        speech_path (`str`, *optional*):
            The same for the speech encoder.
        text_path (`str`, *optional*):
            The same for the text encoder.
        video_key (`str`, *optional*):
            The feature-store key of the cached video features; unset = the one store this encoder
            made in the dataset (an error if there are several).
        speech_key (`str`, *optional*):
            The same for cached speech features; setting it selects ``speech_mode: cached`` unless
            ``speech_mode`` is set explicitly beside it (an imported or frozen-extracted store is
            used by its key alone).
        text_key (`str`, *optional*):
            The same for text features; unset = the store of this encoder for ``data.text_source``.
        speech_mode (`str`, defaults to `"finetune"`):
            ``finetune``: the speech encoder runs online on raw audio and is trained with the fusion
            model (the paper); ``cached``: frozen speech features are read from the feature cache.
        grad_checkpointing (`bool`, defaults to `False`):
            Gradient checkpointing inside the fine-tuned speech encoder (less memory, more time; same
            results).
    """

    video: str = "clip"
    speech: str = "wavlm"
    text: str = "roberta"
    video_path: str | None = None
    speech_path: str | None = None
    text_path: str | None = None
    video_key: str | None = None
    speech_key: str | None = None
    text_key: str | None = None
    speech_mode: str = "finetune"
    grad_checkpointing: bool = False


@dataclass
class ModelConfig:
    """The fusion model: a Table 2 variant on a size preset, and any :class:`giamic.GIAMICConfig` field.

    Every field but ``variant`` and ``size`` is a ``GIAMICConfig`` field; ``None`` (the default) means
    "the value of ``variant`` on ``size``": the paper's full model unless the variant changes it
    (docs/decisions.md, "Model: Table 2 rows and single-modality rows"). ``num_classes`` and
    ``input_dims`` are not settings: the dataset's classes and the encoders' feature widths give them.

    Args:
        variant (`str`, defaults to `"full"`):
            The row of the paper's Table 2 (or Table 1's ``asr_text``): ``full``, ``wo_msr``,
            ``wo_mir``, ``wo_mic``, ``baseline``, ``V``, ``S``, ``T``, ``VS``, ``ST``, ``VT``,
            ``baseline_VS``, ``baseline_ST``, ``baseline_VT``, ``asr_text``
            (``giamic.models.variants``).
        size (`str`, defaults to `"paper"`):
            ``paper`` (d = 768, 12 feature-extractor heads, FFN 3072) or ``tiny`` (d = 32, 2 heads,
            FFN 64: the same architecture for tests and the CPU demo).
        modalities (`list[str]`, *optional*):
            The modalities the model reads, a subset of ``video``, ``speech``, ``text`` (or ``V``,
            ``S``, ``T``). Variant's value: all three, two for ``VS``/``ST``/``VT``, one for ``V``/``S``/``T``.
        d_model (`int`, *optional*):
            d, the common width after the input projections (eq. 1). Size's value: 768 (paper), 32
            (tiny). ``model.d`` is accepted as another name.
        fe_layers (`int`, *optional*):
            Transformer layers of each modality's feature extractor (eq. 1). Default 1.
        fe_heads (`int`, *optional*):
            Attention heads of the feature extractor; must divide ``d_model``. Size's value: 12 / 2.
        fe_ffn (`int`, *optional*):
            Feed-forward width of the feature extractor. Size's value: 3072 / 64.
        fe_dropout (`float`, *optional*):
            Dropout inside the feature extractor, in [0, 1). Default 0.1.
        fe_activation (`str`, *optional*):
            Feed-forward activation of the feature extractor: ``gelu`` (default) or ``relu``.
        fe_norm_first (`bool`, *optional*):
            Pre-LN (True) instead of post-LN (False, default) feature-extractor layers.
        fe_posenc (`list[str]`, *optional*):
            Modalities that get a sinusoidal position encoding before the feature extractor.
            Default none.
        layer_norm_eps (`float`, *optional*):
            Epsilon of every LayerNorm, > 0. Default 1e-5.
        n_heads (`int`, *optional*):
            Heads of the cross-attentions of GIA (eq. 2) and MIG (eq. 9); must divide ``d_model``.
            Default 1.
        attn_dropout (`float`, *optional*):
            Dropout on those attention weights, in [0, 1). Default 0.1.
        fast_dropout (`bool`, *optional*):
            Dropout masks on CPU from 16-bit random integers (default True); False uses
            ``F.dropout`` everywhere (docs/decisions.md, "Model: dropout mask generation on CPU").
        use_msr (`bool`, *optional*):
            The MSR module (GIA, eqs. 2-7). Variant's value: False for ``wo_msr`` and the baselines.
        gia_share_qkv_within_block (`bool`, *optional*):
            One set of Q/K/V projections for both directions of a GIA block. Default False.
        gate_pool (`str`, *optional*):
            Pooling of the eq. (3) gate: ``global`` (default, one gate per sample) or ``local``
            (one per position).
        use_mir (`bool`, *optional*):
            The MIR module (MIG, eqs. 8-12) and its loss. Variant's value: False for ``wo_mir`` and
            the baselines.
        mig_qkv_proj (`bool`, *optional*):
            Learned Q/K/V projections in MIG's attention (eq. 9). Default True.
        mig_shared (`bool`, *optional*):
            One MIG shared by all modalities. Default False.
        mask_source (`str`, *optional*):
            The input of the eq. (10) mask: ``pooled_msr`` (default), ``scatter_msr``, ``full_msr``
            or ``share``.
        prelu_per_channel (`bool`, *optional*):
            One PReLU slope per channel in eq. (11) instead of one in all. Default False.
        ds_mode (`str`, *optional*):
            The eq. (11) convolution: ``stride2_upsample`` (default) or ``stride1``.
        ds_kernel (`int`, *optional*):
            Its kernel size, odd. Default 3.
        fusion (`str`, *optional*):
            ``giamic`` (eq. 13) or ``baseline`` (feature-extractor outputs, masked mean, linear
            classifier). Variant's value: ``baseline`` for the baselines and ``V``/``S``/``T``.
        unimodal_use_fe (`bool`, *optional*):
            Whether a single-modality model keeps its feature extractor. Default True.
        gamma (`float`, *optional*):
            γ of eq. (18), the weight of L_MIR, >= 0. Variant's value: 0.1; 0 for ``wo_mic`` and the
            baselines.
        mic_mode (`str`, *optional*):
            The distributions compared by the MIC loss (eqs. 14-16): ``token`` (default) or
            ``pooled``.
        mic_tau (`float`, *optional*):
            Softmax temperature of those distributions, > 0. Default 1.0.
        empty_modality (`str`, *optional*):
            A sample with no valid position in a modality: ``guard`` (default: it contributes zeros)
            or ``error`` (docs/decisions.md, "Model: a sample with no valid position in a modality").
    """

    variant: str = "full"
    size: str = "paper"
    modalities: list[str] | None = None
    d_model: int | None = None
    fe_layers: int | None = None
    fe_heads: int | None = None
    fe_ffn: int | None = None
    fe_dropout: float | None = None
    fe_activation: str | None = None
    fe_norm_first: bool | None = None
    fe_posenc: list[str] | None = None
    layer_norm_eps: float | None = None
    n_heads: int | None = None
    attn_dropout: float | None = None
    fast_dropout: bool | None = None
    use_msr: bool | None = None
    gia_share_qkv_within_block: bool | None = None
    gate_pool: str | None = None
    use_mir: bool | None = None
    mig_qkv_proj: bool | None = None
    mig_shared: bool | None = None
    mask_source: str | None = None
    prelu_per_channel: bool | None = None
    ds_mode: str | None = None
    ds_kernel: int | None = None
    fusion: str | None = None
    unimodal_use_fe: bool | None = None
    gamma: float | None = None
    mic_mode: str | None = None
    mic_tau: float | None = None
    empty_modality: str | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        """The ``GIAMICConfig`` fields this section sets (the others come from the variant)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("variant", "size") and getattr(self, f.name) is not None}

    def to_dict(self) -> dict[str, Any]:
        """``variant``, ``size`` and the fields that are set (what ``config.yaml`` records)."""
        return {"variant": self.variant, "size": self.size,
                **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.overrides.items()}}

    def giamic_config(self, num_classes: int | None = None, input_dims: dict[str, int] | None = None):
        """The :class:`giamic.GIAMICConfig` this section describes: the variant on the size preset,
        then the set fields, then the dataset's ``num_classes`` and the encoders' ``input_dims``."""
        from giamic import GIAMICConfig

        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.overrides.items()}
        if num_classes is not None:
            kw["num_classes"] = num_classes
        if self.size == "tiny":
            mcfg = GIAMICConfig.tiny(self.variant, **kw)
        else:
            mcfg = GIAMICConfig.from_variant(self.variant, **kw)
        if input_dims is not None:
            mcfg = mcfg.replace(input_dims={m: int(input_dims[m]) for m in mcfg.modalities})
        return mcfg


@dataclass
class TrainConfig:
    """The optimisation recipe (docs/decisions.md, "Training: ...").

    Args:
        optimizer (`str`, defaults to `"adam"`):
            ``adam`` (the paper) or ``adamw``; one parameter group, a fixed learning rate.
        optimizer_impl (`str`, defaults to `"auto"`):
            How the optimizer's update is computed: ``fused`` (one kernel over all parameters; CPU
            and CUDA), ``foreach`` (batched per-tensor kernels), ``for_loop`` (one tensor at a
            time, torch's reference) or ``auto`` (``fused`` where the device has the kernel,
            ``foreach`` otherwise). The same update; results differ only in floating-point rounding
            (docs/decisions.md, "Training: optimizer implementation"). The choice made is recorded
            in each unit's ``result.json`` and log.
        lr (`float`, defaults to 1e-5):
            The learning rate, > 0.
        betas (`list[float]`, defaults to `[0.9, 0.999]`):
            The optimizer's moment coefficients.
        eps (`float`, defaults to 1e-8):
            The optimizer's epsilon.
        weight_decay (`float`, defaults to 0.0):
            Weight decay (decoupled for ``adamw``).
        batch_size (`int`, defaults to 32):
            The effective (global) batch: utterances per optimizer step, over all processes.
        micro_batch_size (`int`, defaults to 0):
            Utterances per forward pass and process; gradients are accumulated to ``batch_size``
            (a multiple of it). 0 = no accumulation. Does not change the gradient.
        max_epochs (`int`, defaults to 40):
            The most epochs a unit trains.
        patience (`int`, defaults to 8):
            Early stopping: a unit stops after this many epochs without a better ``select_on``.
        select_on (`str`, defaults to `"val_ua"`):
            The validation metric that selects the best epoch: ``val_ua`` or ``val_wa`` (ties go to
            the lower validation loss).
        precision (`str`, defaults to `"auto"`):
            ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16``, ``fp16`` (with loss scaling) or
            ``fp32``.
        grad_clip (`float`, defaults to 1.0):
            Maximum gradient norm; 0 disables clipping.
        seeds (`list[int]`, defaults to `[0, 1, 2]`):
            The seeds to run; each (seed, fold) is one unit.
        folds (`list[str]`, defaults to `[]`):
            The folds to run, by name or test group; empty = all.
        device (`str`, defaults to `"auto"`):
            ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        ddp_find_unused (`str`, defaults to `"auto"`):
            DDP's ``find_unused_parameters``: ``auto`` (on when the speech encoder is fine-tuned,
            whose layerdrop skips layers), ``true`` or ``false``.
        deterministic (`bool`, defaults to `False`):
            ``torch.use_deterministic_algorithms`` (removes CUDA kernel non-determinism; slower).
        cpu_threads (`int`, defaults to 0):
            torch intra-op threads of each training process; 0 = the thread policy's choice: the
            ``OMP_NUM_THREADS`` of the environment if set, otherwise the CPU cores this process may
            run on (its affinity mask and CPU quota) divided among the run's processes on this
            machine, less the data-loader workers on a CPU run (docs/reproducing.md, "Threads and
            several jobs on one machine"). Does not change results.
        eval_batch_size (`int`, defaults to 64):
            Utterances per forward pass in validation and test. Does not change results.
        checkpoint_interval_s (`float`, defaults to 600):
            A resume checkpoint (weights, optimizer state, RNG states, loop state) is written at
            the end of the first epoch that ends at least this many seconds after the unit started
            or after the previous checkpoint; 0 = after every epoch. None after the last epoch (the
            test follows at once). Does not change results.
        checkpoint_every (`int`, defaults to 0):
            Also write a resume checkpoint after every this many epochs; 0 = by time only. Does
            not change results.
        checkpoint_async (`bool`, defaults to `True`):
            Write checkpoints and the best weights in a background thread of lower priority: the
            training step waits only until the tensors are copied, before the next optimizer
            update. Does not change results.
        keep_checkpoints (`bool`, defaults to `False`):
            Keep a finished unit's ``checkpoint/`` and best weights (``best.safetensors``); the
            model directory is kept either way.
        progress (`bool`, defaults to `True`):
            A progress bar per epoch (drawn only when stderr is a terminal).
    """

    optimizer: str = "adam"
    optimizer_impl: str = "auto"
    lr: float = 1.0e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    weight_decay: float = 0.0
    batch_size: int = 32
    micro_batch_size: int = 0
    max_epochs: int = 40
    patience: int = 8
    select_on: str = "val_ua"
    precision: str = "auto"
    grad_clip: float = 1.0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    folds: list[str] = field(default_factory=list)
    device: str = "auto"
    ddp_find_unused: str = "auto"
    deterministic: bool = False
    cpu_threads: int = 0
    eval_batch_size: int = 64
    checkpoint_interval_s: float = 600.0
    checkpoint_every: int = 0
    checkpoint_async: bool = True
    keep_checkpoints: bool = False
    progress: bool = True


@dataclass
class RunConfig:
    """Everything one ``giamic cv`` / ``train`` run needs, in four sections.

    Args:
        data (`DataConfig`):
            The prepared dataset and how its inputs are cut.
        encoders (`EncoderConfig`):
            The encoder of each modality and the speech encoder's training mode.
        model (`ModelConfig`):
            The fusion model (Table 2 variant, size preset, any ``GIAMICConfig`` field).
        train (`TrainConfig`):
            The optimisation recipe, seeds, folds and devices.
    """

    data: DataConfig = field(default_factory=DataConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        cfg = cls()
        apply_dict(cfg, d)
        validate(cfg)
        return cfg

    def fingerprint(self, exclude: tuple[str, ...] = ("train.seeds", "train.folds", "train.progress",
                                                      "data.num_workers", "train.eval_batch_size",
                                                      "train.keep_checkpoints", "train.cpu_threads",
                                                      "train.checkpoint_interval_s", "train.checkpoint_every",
                                                      "train.checkpoint_async")) -> str:
        """A hash of everything that changes a (variant, seed, fold) unit's result.

        Resume refuses a unit whose fingerprint changed. Seeds and fold lists only choose *which*
        units run; workers, threads, the evaluation batch, the checkpoint cadence and the progress
        bar do not change results. The model section is hashed as ``variant``, ``size`` and the
        mapping of the fields it sets (the shape older versions saved), and a setting added later
        enters only when it differs from its default (``_LATER_DEFAULTS``), so a run keeps its
        fingerprint across versions."""
        d = dataclasses.asdict(self)
        if d["data"].get("standardize") in ("off", "auto"):  # raw (encoder) features: the hash of
            d["data"].pop("standardize")  # runs before the setting; a run resolves auto (cv.InputFactory)
        m = self.model.to_dict()
        d["model"] = {"variant": m.pop("variant"), "size": m.pop("size"), "overrides": m}
        for key in exclude:
            sec, name = key.split(".")
            d[sec].pop(name, None)
        if d["data"].get("video_fps") is None:
            d["data"].pop("video_fps", None)  # the native frame rate hashes as before the setting existed
        for key, default in _LATER_DEFAULTS.items():
            sec, name = key.split(".")
            if d[sec].get(name) == default:
                d[sec].pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# Settings that change results but were added after runs were already fingerprinted: at their
# default they leave the hash as it was.
_LATER_DEFAULTS = {"train.optimizer_impl": "auto"}

SECTIONS = ("data", "encoders", "model", "train")


def preset_names() -> list[str]:
    from giamic.presets import preset_names as names

    return names()


def read_config_file(name_or_path: str) -> dict:
    """A preset by name (``giamic.presets``), or a YAML/JSON file by path, as a nested dict."""
    from giamic.presets import read_preset

    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") and p.exists():
        try:
            text = p.read_text(encoding="utf-8")
            d = (json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)) or {}
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read the config file: {_first_line(e)}", p) from None
        if not isinstance(d, dict):
            raise ConfigError("a config file must hold a mapping of sections (data, encoders, model, train)", p)
        return d
    try:
        return read_preset(name_or_path)
    except ConfigError:
        raise ConfigError(f"no config file or preset named {name_or_path!r}; "
                          f"presets: {', '.join(preset_names())}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_config(preset: str | None = "paper", overrides: list[str] | None = None,
                data_dir: str | None = None) -> RunConfig:
    """Defaults, then ``preset`` (a name or a file), then ``--set`` overrides; validated."""
    cfg = RunConfig()
    if preset:
        apply_dict(cfg, read_config_file(preset))
    if data_dir is not None:
        cfg.data.data_dir = str(data_dir)
    for item in overrides or []:
        apply_override(cfg, item)
    _speech_key_implies_cached(cfg, overrides or [])
    validate(cfg)
    return cfg


def _speech_key_implies_cached(cfg: RunConfig, overrides: list[str]) -> None:
    """``encoders.speech_key`` names cached speech features (extracted frozen, or imported), so it
    selects the cached mode, unless ``encoders.speech_mode`` is set explicitly beside it (an
    experiment row that fine-tunes WavLM while the caches of other rows are named: the key is
    then unused)."""
    e = cfg.encoders
    if not e.speech_key or e.speech_mode != "finetune":
        return
    if any(o.partition("=")[0].strip() == "encoders.speech_mode" for o in overrides):
        return
    e.speech_mode = "cached"


def apply_dict(cfg: RunConfig, d: dict) -> None:
    for sec_name, values in (d or {}).items():
        if sec_name == "base":
            continue
        section = _section(cfg, sec_name)
        if not isinstance(values, dict):
            raise ConfigError(f"config section {sec_name!r} must be a mapping of keys to values, got {values!r}")
        for key, value in values.items():
            _set(section, sec_name, str(key), value)


def apply_override(cfg: RunConfig, item: str) -> None:
    """One ``section.key=value`` string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set must look like section.key=value, got {item!r}")
    path, value = item.split("=", 1)
    sec_name, key = path.strip().split(".", 1)
    section = _section(cfg, sec_name)
    if sec_name == "model" and key.startswith("overrides."):  # the spelling of older versions
        key = key[len("overrides."):]
    _set(section, sec_name, key, value)


def _section(cfg: RunConfig, name: str):
    if name not in SECTIONS:
        raise ConfigError(f"unknown config section {name!r}; sections: {', '.join(SECTIONS)}")
    return getattr(cfg, name)


# Other names of model keys, and the GIAMICConfig fields that are not settings.
_MODEL_ALIASES = {"d": "d_model"}
_NOT_SETTINGS = {"num_classes": "the number of classes is the dataset's",
                 "input_dims": "the input widths are the encoders' feature widths"}


def _set(section, sec_name: str, key: str, value: Any) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    if sec_name == "model":
        key = _MODEL_ALIASES.get(key, key)
        if key == "overrides":  # a config.yaml of an older version: model: {overrides: {gamma: 0}}
            if not isinstance(value, dict):
                raise ConfigError(f"model.overrides must be a mapping of model keys, got {value!r}")
            for k, v in value.items():
                _set(section, sec_name, str(k), v)
            return
        if key in _NOT_SETTINGS:
            raise ConfigError(f"model.{key} cannot be set: {_NOT_SETTINGS[key]}")
    if key not in fields:
        raise ConfigError(f"unknown config key {sec_name}.{key}; {sec_name} keys: {', '.join(fields)}")
    hint = typing.get_type_hints(type(section))[key]
    value = coerce(value, hint, f"{sec_name}.{key}")
    _check_choice(sec_name, key, value)
    setattr(section, key, value)


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert ``value`` (possibly text) to the type ``hint``; a :class:`ConfigError` otherwise."""
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
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    raise ConfigError(f"{name}: cannot read {text!r} as a list") from None
            else:
                value = [v.strip() for v in text.split(",") if v.strip()] if text else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, item_t, name) for v in value]
    given = value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if hint is int:
            if isinstance(value, str) and any(c in value for c in ".eE"):
                value = float(value)  # "1e3", "64.0"
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        kind = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{name}: cannot read {given!r} as {kind}") from None
    return value


def _model_choices() -> dict[tuple[str, str], tuple[str, ...]]:
    from giamic.models.config import _CHOICES as GIAMIC_CHOICES
    from giamic.models.variants import VARIANTS

    out = {("model", k): v for k, v in GIAMIC_CHOICES.items()}
    out[("model", "variant")] = tuple(VARIANTS)
    return out


_CHOICES = {
    ("data", "text_source"): ("gt", "asr"),
    ("data", "audio_crop"): ("first", "random_train"),
    ("data", "val_mode"): ("random10", "dialog_group"),
    ("data", "standardize"): ("auto", "imported", "on", "off"),
    ("encoders", "speech_mode"): ("finetune", "cached"),
    ("model", "size"): ("paper", "tiny"),
    ("train", "optimizer"): ("adam", "adamw"),
    ("train", "optimizer_impl"): ("auto", "fused", "foreach", "for_loop"),
    ("train", "select_on"): ("val_ua", "val_wa"),
    ("train", "precision"): ("auto", "bf16", "fp16", "fp32"),
    ("train", "ddp_find_unused"): ("auto", "true", "false"),
}
# Items of the list-valued model keys.
_ITEM_CHOICES = {("model", "modalities"): ("video", "speech", "text", "V", "S", "T"),
                 ("model", "fe_posenc"): ("video", "speech", "text", "V", "S", "T")}


def _check_choice(sec: str, key: str, value: Any) -> None:
    choices = _CHOICES.get((sec, key)) or (_model_choices().get((sec, key)) if sec == "model" else None)
    if choices is not None and value is not None and value not in choices:
        raise ConfigError(f"{sec}.{key} must be one of {', '.join(choices)}; got {value!r}")
    items = _ITEM_CHOICES.get((sec, key))
    if items is not None and value is not None:
        bad = [v for v in value if v not in items]
        if bad:
            raise ConfigError(f"{sec}.{key} takes items of {', '.join(items)}; got {bad[0]!r}")


def validate(cfg: RunConfig) -> None:
    """Check the values and their combinations; a :class:`ConfigError` naming the key otherwise."""
    for sec in SECTIONS:
        section = getattr(cfg, sec)
        for f in dataclasses.fields(section):
            _check_choice(sec, f.name, getattr(section, f.name))
    t = cfg.train
    if t.batch_size < 1 or t.micro_batch_size < 0 or t.max_epochs < 1 or t.patience < 1:
        raise ConfigError("train.batch_size, max_epochs and patience must be >= 1; micro_batch_size >= 0")
    if t.micro_batch_size and t.batch_size % t.micro_batch_size:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size "
                          f"({t.micro_batch_size})")
    if t.checkpoint_interval_s < 0 or t.checkpoint_every < 0 or t.cpu_threads < 0:
        raise ConfigError("train.checkpoint_interval_s, checkpoint_every and cpu_threads must be >= 0")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
    if not t.seeds:
        raise ConfigError("train.seeds must name at least one seed")
    if cfg.data.video_fps is not None and not cfg.data.video_fps > 0:
        raise ConfigError(f"data.video_fps must be positive (frames per second) or unset, got {cfg.data.video_fps}")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    _validate_model(cfg.model)


def _validate_model(m: ModelConfig) -> None:
    """Build the model's ``GIAMICConfig`` once (no weights): ranges and combinations are checked
    now, not when the first unit starts."""
    try:
        m.giamic_config()
    except ValueError as e:
        msg = str(e)
        field_names = {f.name for f in dataclasses.fields(ModelConfig)}
        head = msg.split(" ", 1)[0].split("=", 1)[0]
        raise ConfigError(f"model.{msg}" if head in field_names else f"model settings: {msg}") from None


def format_config(cfg: RunConfig) -> str:
    """The config as YAML (what ``--print-config`` shows and ``config.yaml`` records)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
