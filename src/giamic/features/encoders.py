"""The three encoder families behind one interface (docs/features.md; the choices of output layer
and freezing are in docs/decisions.md, "which output of each encoder").

Every encoder is an ``nn.Module`` with

* ``modality`` (``"video"``, ``"speech"`` or ``"text"``) and ``dim`` (feature width D);
* ``preprocess(raw_batch) -> dict[str, Tensor]`` — CPU work only, safe in data-loader workers;
* ``forward(**inputs) -> (feats [B,T,D] float, mask [B,T] bool)`` — padded rows are exactly zero;
* ``encode(raw_batch)`` — both, on the encoder's device (no autograd when frozen);
* ``identity()`` — everything that changes the output, the basis of the feature-cache key.

``raw_batch`` is a list of RGB frame stacks ``[k,H,W,3]`` uint8 (video, one utterance each, one
output row per frame), of 1-D float waves at 16 kHz (speech) or of strings (text).
"""
from __future__ import annotations

import abc
import contextlib
import copy
import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

import functools

from giamic.features.image import ClipImageSettings, clip_normalize, clip_resize_crop

FORMAT_VERSION = 1  # bump when a change here alters features for the same identity


CLIP_EXECUTIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class ClipSettings:
    """Video encoder settings (CLIP ViT-L/14, frozen; docs/features.md)."""

    l2norm: bool = False  # image_embeds are NOT L2-normalised by default (docs/decisions.md)
    image: ClipImageSettings = ClipImageSettings()
    preprocess_backend: str = "pil"  # "pil" (bit-exact with CLIPImageProcessor) or "torch"
    frame_batch: int = 64  # frames per forward; does not change the output beyond float rounding
    # How the forward runs: "fp32"; "bf16" (bfloat16 autocast: AMX/AVX-512 BF16 on CPU, the fast CPU
    # prediction choice, docs/predict.md); "int8" (dynamic int8 quantisation of the Linear layers,
    # CPU only). Not fp32 changes the features slightly, so it enters the identity (and the cache key).
    execution: str = "fp32"

    def __post_init__(self) -> None:
        if self.execution not in CLIP_EXECUTIONS:
            raise ValueError(f"CLIP execution must be one of {', '.join(CLIP_EXECUTIONS)}, got {self.execution!r}")


@dataclass(frozen=True)
class WavLMSettings:
    """Speech encoder settings (WavLM-large, fine-tuned; docs/features.md, docs/decisions.md)."""

    sample_rate: int = 16000
    max_samples: int = 96000  # first 6 s (the paper's 6 s at 16 kHz) -> 299 frames
    crop: str = "first"  # "first" or "random" (training only: the random_train audio crop)
    normalize: bool = True  # zero mean / unit variance over valid samples, explicit here
    freeze_feature_encoder: bool = True  # the conv stack stays frozen while the rest is fine-tuned
    gradient_checkpointing: bool = False  # memory lever: ~+30 % compute, far fewer activations
    # Checkpoint regularisers (SpecAugment, layerdrop, dropouts): None keeps the checkpoint's value;
    # they act only in train().
    apply_spec_augment: bool | None = None
    mask_time_prob: float | None = None
    layerdrop: float | None = None
    hidden_dropout: float | None = None
    attention_dropout: float | None = None

    def output_settings(self) -> dict:
        """The settings that change eval-mode outputs (training-only knobs left out of the key)."""
        return {"sample_rate": self.sample_rate, "max_samples": self.max_samples, "crop": self.crop,
                "normalize": self.normalize}

    def regularizers(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k in ("apply_spec_augment", "mask_time_prob", "layerdrop", "hidden_dropout", "attention_dropout")
                and v is not None}


@dataclass(frozen=True)
class TextSettings:
    """Text encoder settings (RoBERTa-base, frozen; docs/features.md)."""

    max_tokens: int = 64  # including <s> and </s> (docs/decisions.md)
    strip_nonverbal_tags: bool = False  # drop IEMOCAP tags such as "[LAUGHTER]" (kept by default)


_NONVERBAL = re.compile(r"\[[A-Za-z_]+\]")


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over parameter/buffer names, dtypes, shapes and bytes: the weights' identity."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach()
        if t.device.type == "meta":
            raise RuntimeError("weights on the meta device have no identity; build the encoder on a real device")
        t = t.to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _pad_rows(rows: Sequence[torch.Tensor], dim: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length ``[t_i, D]`` rows into ``[B, T, D]`` zero-padded, with a bool mask."""
    t_max = max((r.shape[0] for r in rows), default=0)
    feats = torch.zeros((len(rows), t_max, dim), device=device, dtype=dtype)
    mask = torch.zeros((len(rows), t_max), device=device, dtype=torch.bool)
    for i, r in enumerate(rows):
        feats[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return feats, mask


class Encoder(nn.Module, abc.ABC):
    """Base class: identity bookkeeping, frozen mode and ``encode``. Subclasses set ``modality``."""

    modality: ClassVar[str] = ""

    def __init__(self, name: str, model: nn.Module, settings: Any, source: dict, frozen: bool) -> None:
        super().__init__()
        self.name = name  # registry name
        self.model = model
        self.settings = settings
        self.source = source  # {"name_or_path": ...} or {"random_init": {...}}
        self.frozen = frozen
        self._weights_sha: str | None = None
        if frozen:
            self.freeze()

    # -- interface ---------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Feature width D."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @abc.abstractmethod
    def preprocess(self, raw_batch: Sequence) -> dict[str, torch.Tensor]:
        """CPU-side preparation of one batch of raw inputs (see module docstring)."""

    @abc.abstractmethod
    def preprocessor(self):
        """``preprocess`` as a picklable function without the model weights, for loader workers."""

    def encode(self, raw_batch: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocess ``raw_batch`` and run the forward on the encoder's device.

        Frozen encoders run without autograd (so caching is exact); a trainable one (WavLM) keeps the
        caller's grad mode and train/eval state so it can be fine-tuned inside the training step.
        """
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in self.preprocess(raw_batch).items()}
        if self.frozen:
            with torch.no_grad():
                return self(**inputs)
        return self(**inputs)

    def freeze(self) -> "Encoder":
        """Eval mode and no gradients for all weights; ``train()`` keeps it in eval."""
        self.frozen = True
        self.model.requires_grad_(False)
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> "Encoder":
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen encoder never applies dropout or augmentation
        return self

    def output_settings(self) -> dict:
        return asdict(self.settings)

    def identity(self) -> dict:
        """Everything that changes the output of this encoder, JSON-serialisable.

        The weights enter as a SHA-256 of the state dict (exact whatever the source: hub, local
        directory or random initialisation). It is cached while the encoder is frozen; a trainable
        encoder rehashes each call since its weights move.
        """
        sha = self._weights_sha
        if sha is None:
            sha = state_dict_sha256(self.model)
            if self.frozen:
                self._weights_sha = sha
        return {
            "encoder": self.name,
            "class": type(self).__name__,
            "modality": self.modality,
            "dim": self.dim,
            "source": self.source,
            "weights_sha256": sha,
            "settings": self.output_settings(),
            "frozen": self.frozen,
            "format_version": FORMAT_VERSION,
        }

    def identity_hash(self, extra: dict | None = None) -> str:
        blob = json.dumps({"identity": self.identity(), "extra": extra or {}}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


class ClipVideoEncoder(Encoder):
    """Per-frame CLIP ``image_embeds`` (768-d): ``visual_projection(post_layernorm(CLS))``."""

    modality = "video"

    def __init__(self, name, model, settings: ClipSettings, source, frozen: bool = True) -> None:
        super().__init__(name, model, settings, source, frozen)
        if settings.execution == "int8" and self.device.type != "cpu":
            raise ValueError("CLIP execution 'int8' (dynamic quantisation) runs on the CPU only; use bf16 on GPUs")
        self.__dict__["_exec_model"] = None  # the bf16/int8 copy, built on first use (not a submodule)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def output_settings(self) -> dict:
        s = asdict(self.settings)
        s.pop("frame_batch")  # batching does not change features
        if s["execution"] == "fp32":
            s.pop("execution")  # absent in fp32, so identities (and cache keys) made before it stay valid
        return s

    def _runner(self) -> tuple[nn.Module, Any]:
        """The module to call and the context to call it in, for the execution setting.

        ``bf16``: bfloat16 autocast over a copy whose Linear layers hold bfloat16 weights. Autocast
        would cast the same weights to bfloat16 at every call (it caches casts only for weights that
        require grad, and a frozen encoder's do not), which costs more than the matmuls on a CPU; the
        copy gives the same numbers without that cost. ``int8``: a dynamically quantised copy.
        ``self.model`` keeps the fp32 weights either way, so the weights hash is unchanged.
        """
        ex = self.settings.execution
        if ex == "fp32":
            return self.model, contextlib.nullcontext()
        run = self.__dict__["_exec_model"]
        if run is None:
            if ex == "int8":
                with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", UserWarning)
                    run = torch.ao.quantization.quantize_dynamic(self.model, {nn.Linear}, dtype=torch.qint8)
            else:
                run = copy.deepcopy(self.model)
                for mod in run.modules():
                    if isinstance(mod, nn.Linear):
                        mod.to(torch.bfloat16)
            self.__dict__["_exec_model"] = run
        if ex == "bf16":
            return run, torch.autocast(self.device.type, dtype=torch.bfloat16)
        return run, contextlib.nullcontext()

    def preprocessor(self):
        return functools.partial(clip_inputs, settings=self.settings)

    def preprocess(self, raw_batch: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        return clip_inputs(raw_batch, self.settings)

    def embed_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, c, c]`` -> ``[N, D]`` image embeds, normalised and run ``frame_batch`` at a time."""
        outs = []
        fb = self.settings.frame_batch
        model, ctx = self._runner()
        for s in range(0, pixels.shape[0], fb):
            pixel_values = clip_normalize(pixels[s : s + fb], self.settings.image)
            with ctx:
                outs.append(model(pixel_values=pixel_values).image_embeds.float())
        if not outs:
            return torch.zeros((0, self.dim), device=pixels.device)
        emb = torch.cat(outs)
        if self.settings.l2norm:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb

    def forward(self, pixels: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed_frames(pixels)
        rows = torch.split(emb, [int(k) for k in frames.tolist()])
        return _pad_rows(rows, self.dim, emb.device, emb.dtype)


class WavLMSpeechEncoder(Encoder):
    """WavLM last hidden layer (1024-d); fine-tunable by default, the conv stack frozen."""

    modality = "speech"

    def __init__(self, name, model, settings: WavLMSettings, source, frozen: bool = False) -> None:
        super().__init__(name, model, settings, source, frozen)
        if settings.freeze_feature_encoder:
            model.freeze_feature_encoder()  # the conv stack stays frozen (docs/decisions.md)
        if settings.gradient_checkpointing:
            # transformers 5 renamed gradient_checkpointing_enable (still there, deprecated)
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def output_settings(self) -> dict:
        return self.settings.output_settings()

    def run_config(self) -> dict:
        """Training-time facts to record in a run config (the checkpoint's regularisers as used)."""
        c = self.model.config
        return {
            "freeze_feature_encoder": self.settings.freeze_feature_encoder,
            "gradient_checkpointing": self.settings.gradient_checkpointing,
            "apply_spec_augment": c.apply_spec_augment, "mask_time_prob": c.mask_time_prob,
            "layerdrop": c.layerdrop, "hidden_dropout": c.hidden_dropout, "attention_dropout": c.attention_dropout,
        }

    def num_frames(self, valid_samples: torch.Tensor | int) -> torch.Tensor:
        """Valid WavLM frames for a number of valid samples (96,000 -> 299)."""
        v = torch.as_tensor(valid_samples, dtype=torch.long)
        return self.model._get_feat_extract_output_lengths(v).clamp(min=0).long()

    def preprocessor(self):
        return functools.partial(wavlm_inputs, settings=self.settings)

    def preprocess(self, raw_batch: Sequence[np.ndarray], offsets: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        return wavlm_inputs(raw_batch, self.settings, offsets)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with warnings.catch_warnings():
            # transformers' WavLM attention passes a bool key padding mask beside a float position
            # bias; torch deprecates that mix with a warning on every call. Nothing to act on here.
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")
            hidden = self.model(input_values=input_values, attention_mask=attention_mask).last_hidden_state
        lengths = self.num_frames(attention_mask.sum(-1)).to(hidden.device)
        mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        return hidden * mask[..., None].to(hidden.dtype), mask  # padded frames exactly zero


class TextEncoder(Encoder):
    """Token-level ``last_hidden_state`` of a BERT-family model (all tokens, no pooler)."""

    modality = "text"

    def __init__(self, name, model, tokenizer, settings: TextSettings, source, frozen: bool = True) -> None:
        super().__init__(name, model, settings, source, frozen)
        self.tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def identity(self) -> dict:
        ident = super().identity()
        ident["tokenizer"] = tokenizer_sha256(self.tokenizer)
        return ident

    def preprocessor(self):
        return functools.partial(text_inputs, tokenizer=self.tokenizer, settings=self.settings)

    def preprocess(self, raw_batch: Sequence[str]) -> dict[str, torch.Tensor]:
        return text_inputs(raw_batch, self.tokenizer, self.settings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.bool()
        return hidden * mask[..., None].to(hidden.dtype), mask


def tokenizer_sha256(tokenizer) -> str:
    """Identity of a fast tokenizer: its full serialised state (vocab, merges, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        state = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    else:
        d = json.loads(backend.to_str())
        # The wrapper stores the last call's padding/truncation in the backend; they are per-call
        # settings (ours are in TextSettings), not part of what the tokenizer is.
        d.pop("truncation", None)
        d.pop("padding", None)
        state = json.dumps(d, sort_keys=True)
    return hashlib.sha256(state.encode()).hexdigest()


# -- preprocessing as plain functions (picklable into data-loader workers, no model weights) ----


def clip_inputs(raw_batch: Sequence[np.ndarray], settings: ClipSettings) -> dict[str, torch.Tensor]:
    """All frames of all utterances -> uint8 ``pixels [sum k, 3, c, c]`` and ``frames [B]``."""
    pix = [clip_resize_crop(f, settings.image, backend=settings.preprocess_backend) for f in raw_batch]
    c = settings.image.crop_size
    return {"pixels": torch.cat(pix) if pix else torch.empty((0, 3, c, c), dtype=torch.uint8),
            "frames": torch.tensor([p.shape[0] for p in pix], dtype=torch.long)}


def wavlm_inputs(raw_batch: Sequence[np.ndarray], settings: WavLMSettings,
                 offsets: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Crop/pad to ``max_samples`` and normalise over the valid samples (docs/decisions.md).

    Uses the data stage's ``crop_or_pad``/``normalize_wave`` so extraction, training and
    prediction share one code path. ``offsets`` (samples) serve the ``random`` crop in training.
    """
    from giamic.data.audio import crop_or_pad, normalize_wave

    s = settings
    waves = np.zeros((len(raw_batch), s.max_samples), dtype=np.float32)
    valid = np.zeros(len(raw_batch), dtype=np.int64)
    for i, w in enumerate(raw_batch):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 1:
            raise ValueError(f"expected a 1-D wave, got shape {w.shape}")
        if w.size == 0:
            continue  # no samples: all-zero input, zero valid frames
        off = None if offsets is None else int(offsets[i])
        cropped, n = crop_or_pad(w, s.max_samples, mode="first" if s.crop == "first" else "random", offset=off)
        waves[i] = normalize_wave(cropped, n) if s.normalize else cropped
        valid[i] = n
    attn = (np.arange(s.max_samples)[None, :] < valid[:, None]).astype(np.int64)
    return {"input_values": torch.from_numpy(waves), "attention_mask": torch.from_numpy(attn)}


def clean_text(text: str, settings: TextSettings) -> str:
    if settings.strip_nonverbal_tags:
        text = " ".join(_NONVERBAL.sub(" ", text).split())
    return text


def text_inputs(raw_batch: Sequence[str], tokenizer, settings: TextSettings) -> dict[str, torch.Tensor]:
    """Tokenise with ``<s>``/``</s>`` added, truncate at ``max_tokens``."""
    enc = tokenizer([clean_text(t, settings) for t in raw_batch], add_special_tokens=True, truncation=True,
                    max_length=settings.max_tokens, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
