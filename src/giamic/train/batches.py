"""Model inputs for training and evaluation: cached features and raw speech, batched into fixed slots.

Every modality is padded to a **fixed** length (video K = ``data.max_frames``, text N =
``data.max_tokens``, speech M = the encoder's frame count for ``data.audio_max_sec``) by
``giamic.collate``, so each modality sits in the same time slot of the concatenated sequence
whatever the batch. This matters beyond speed: the MIG convolution (eq. 11) sees the slot layout, so
fixed lengths make an utterance's logits independent of which other utterances share its batch
(needed for exact DDP agreement and exact resume; docs/decisions.md).

Two kinds of source:

* :class:`CachedModality`: a ``FeatureStore`` (memory-mapped float16 ``[T, D]`` per utterance),
  for CLIP and RoBERTa always, and for speech in the frozen-WavLM mode (``speech_mode=cached``);
* :class:`OnlineSpeech`: raw waves (``load_audio`` → ``crop_or_pad`` → ``normalize_wave``, the data
  stage's one code path) encoded inside the training step by the speech encoder, whose parameters
  are trained (``speech_mode=finetune``, the paper's recipe).

:class:`ModelInputs` records which utterances were read in which phase (``train``, ``val``,
``test``), so a test can prove that no test utterance reached training or model selection.

Cached modalities named in ``standardize`` are standardised per dimension
(:class:`giamic.modeldir.Standardization`) with statistics fitted by
:meth:`ModelInputs.fit_standardization` on the unit's training split alone, before any batch.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from giamic.collate import pad_features
from giamic.modalities import Modality
from giamic.modeldir import Standardization

PHASES = ("train", "val", "test", "other")


@dataclass
class Batch:
    ids: list[str]
    labels: torch.Tensor  # [B] int64
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # cached modalities, [B,T,D] float32
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # [B,T] bool
    waves: torch.Tensor | None = None  # [B,S] float32, online speech
    wave_valid: torch.Tensor | None = None  # [B] int64 real samples per wave

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> "Batch":
        nb = dict(non_blocking=True)
        return Batch(ids=self.ids, labels=self.labels.to(device, **nb),
                     features={k: v.to(device, **nb) for k, v in self.features.items()},
                     masks={k: v.to(device, **nb) for k, v in self.masks.items()},
                     waves=None if self.waves is None else self.waves.to(device, **nb),
                     wave_valid=None if self.wave_valid is None else self.wave_valid.to(device, **nb))


class CachedModality:
    """One modality read from a feature cache (``giamic.features.FeatureStore``, docs/architecture.md)."""

    kind = "cached"

    def __init__(self, modality: str, store: Any, length: int, dim: int, info: Any):
        self.modality, self.store, self.length, self.dim, self.info = modality, store, int(length), int(dim), info

    def load(self, utt_id: str) -> np.ndarray:
        return self.store[utt_id]


class OnlineSpeech:
    """Raw speech encoded online by a trainable encoder (``speech_mode=finetune``, the paper's WavLM).

    Waves are read with the data stage's ``load_audio`` and prepared by the encoder's own
    ``preprocess`` (``crop_or_pad`` + ``normalize_wave``, the code path of extraction and
    prediction) in the data loader; the forward with gradients runs in the training step."""

    kind = "online"

    def __init__(self, encoder: Any, dataset: Any, crop: str, info: Any):
        self.modality = Modality.SPEECH.value
        self.encoder = encoder
        self.dataset = dataset
        self.crop = crop  # first | random_train
        self.sr = int(encoder.settings.sample_rate)
        self.max_samples = int(encoder.settings.max_samples)
        self.normalize = bool(getattr(encoder.settings, "normalize", True))
        self.length = int(encoder.num_frames(self.max_samples))
        self.dim = int(encoder.dim)
        self.info = info

    @property
    def module(self) -> nn.Module:
        """The trainable encoder (its parameters go into the optimizer)."""
        return self.encoder

    def load(self, utt_id: str, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """One utterance's prepared wave ``[max_samples]`` float32 and its count of real samples.

        The steps of the encoder's ``preprocess`` for one wave (``crop_or_pad`` to the window,
        ``normalize_wave`` over the real samples when the encoder normalises), called directly: the
        batch form also builds a ``[B, max_samples]`` int64 attention mask, a third of its cost per
        utterance, which the loader does not need (``valid`` gives it in the step)."""
        from giamic.data import choose_offset, crop_or_pad, load_audio, normalize_wave

        utt = self.dataset.by_id[utt_id]
        if utt.wav is None:  # no audio: an all-padding wave (the model's empty-modality guard applies)
            return np.zeros(self.max_samples, dtype=np.float32), 0
        wave = load_audio(utt.wav, sr=self.sr)
        offset = 0
        if self.crop == "random_train" and rng is not None:
            offset = choose_offset(len(wave), self.max_samples, "random", rng)
        wave = wave[offset:]
        if wave.size == 0:
            return np.zeros(self.max_samples, dtype=np.float32), 0
        window, valid = crop_or_pad(wave, self.max_samples, mode="first")
        return (normalize_wave(window, valid) if self.normalize else window), int(valid)

    def encode(self, waves: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B,S]`` prepared waves → ``[B, length, D]`` features and mask, with gradients."""
        attn = (torch.arange(waves.shape[1], device=waves.device)[None, :] < valid[:, None]).long()
        feats, mask = self.encoder(input_values=waves, attention_mask=attn)
        return feats.float(), mask


class ModelInputs:
    """Every modality's source for one dataset, plus the access log of the leakage test."""

    def __init__(self, dataset: Any, classes: Sequence[str], sources: dict[str, Any], record_access: bool = False,
                 standardize: Sequence[str] = ()):
        self.dataset = dataset
        self.standardize = tuple(m for m in standardize if isinstance(sources.get(m), CachedModality))
        self.standardization: Standardization | None = None
        self.classes = list(classes)
        self.sources = sources  # modality -> CachedModality | OnlineSpeech
        self.phase = "other"
        self.record_access = record_access
        self.accessed: dict[str, set[str]] = {p: set() for p in PHASES}
        self._label = {u.utt_id: u.label_id(self.classes) for u in dataset.utterances}

    @property
    def modalities(self) -> list[str]:
        return list(self.sources)

    @property
    def online_speech(self) -> OnlineSpeech | None:
        s = self.sources.get(Modality.SPEECH.value)
        return s if isinstance(s, OnlineSpeech) else None

    @property
    def input_dims(self) -> dict[str, int]:
        return {m: s.dim for m, s in self.sources.items()}

    @property
    def lengths(self) -> dict[str, int]:
        return {m: s.length for m, s in self.sources.items()}

    def label(self, utt_id: str) -> int:
        return self._label[utt_id]

    def fit_standardization(self, train_ids: Sequence[str]) -> Standardization | None:
        """Fit the per-dimension statistics of the ``standardize`` modalities on ``train_ids`` (the
        unit's training split: never its validation or test part) and apply them from now on."""
        self.standardization = None
        if not self.standardize:
            return None
        if self.record_access:
            self.accessed["train"].update(train_ids)
        self.standardization = Standardization.fit({m: self._cached_rows(m, train_ids) for m in self.standardize})
        return self.standardization

    def _cached_rows(self, modality: str, ids: Sequence[str]):
        """The cached features of ``ids``, one utterance at a time (streamed: a cache can be GBs)."""
        source = self.sources[modality]
        for u in ids:
            yield source.load(u)

    def labels(self, ids: Sequence[str]) -> np.ndarray:
        return np.asarray([self._label[u] for u in ids], dtype=np.int64)

    def item(self, utt_id: str, crop_rng: np.random.Generator | None = None) -> dict:
        if self.record_access:
            self.accessed[self.phase].add(utt_id)
        out: dict[str, Any] = {"id": utt_id, "label": self._label[utt_id]}
        st = self.standardization
        for m, s in self.sources.items():
            out[m] = s.load(utt_id, crop_rng) if isinstance(s, OnlineSpeech) else s.load(utt_id)
            if st is not None and m in st.mean:
                out[m] = st.apply(m, out[m])
        return out

    def collate(self, items: list[dict]) -> Batch:
        batch = Batch(ids=[it["id"] for it in items],
                      labels=torch.tensor([it["label"] for it in items], dtype=torch.long))
        for m, s in self.sources.items():
            if isinstance(s, OnlineSpeech):
                batch.waves = torch.from_numpy(np.stack([it[m][0] for it in items]))
                batch.wave_valid = torch.tensor([it[m][1] for it in items], dtype=torch.long)
            else:
                batch.features[m], batch.masks[m] = pad_features([it[m] for it in items], s.length, s.dim)
        return batch

    def batch(self, ids: Sequence[str]) -> Batch:
        return self.collate([self.item(u) for u in ids])


def crop_rng(seed: int, fold_number: int, epoch: int, utt_id: str) -> np.random.Generator:
    """A per-(seed, fold, epoch, utterance) generator for random crops: independent of worker
    count and batch order, so resumed and distributed runs crop identically."""
    return np.random.default_rng([int(seed), int(fold_number), int(epoch), zlib.crc32(utt_id.encode())])


class UnitDataset(torch.utils.data.Dataset):
    """``ModelInputs`` as a map-style dataset over utterance ids (for DataLoader workers)."""

    def __init__(self, inputs: ModelInputs, ids: Sequence[str], seed: int = 0, fold_number: int = 0,
                 epoch: int = 0, random_crop: bool = False):
        self.inputs, self.ids = inputs, list(ids)
        self.seed, self.fold_number, self.epoch, self.random_crop = seed, fold_number, epoch, random_crop

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        u = self.ids[i]
        rng = crop_rng(self.seed, self.fold_number, self.epoch, u) if self.random_crop else None
        return self.inputs.item(u, rng)
