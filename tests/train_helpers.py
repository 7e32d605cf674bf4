"""Shared helpers of the training tests: a synthetic prepared dataset with in-memory cached
features whose class signal is known, so the loop can be tested without media or encoders."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from giamic.data import Dataset, Utterance, folds_leave_one_group_out
from giamic.train.config import load_config
from giamic.modeldir import EncoderRecord, PipelineSpec, Preprocessing
from giamic.train.batches import CachedModality, ModelInputs

CLASSES = ["neu", "ang", "hap", "sad"]
DIMS = {"video": 12, "speech": 10, "text": 8}
LENGTHS = {"video": 6, "speech": 7, "text": 5}


def synthetic_dataset(n_per_group: int = 24, groups: int = 5, seed: int = 0, signal: float = 1.0,
                      root: Path | None = None):
    """A Dataset (no media) and per-modality feature dicts: class c shifts feature channel c."""
    rng = np.random.default_rng(seed)
    utts, feats = [], {m: {} for m in DIMS}
    for g in range(groups):
        for i in range(n_per_group):
            uid = f"G{g}_d{i % 3}_u{i:03d}"
            c = (i + g) % len(CLASSES)
            utts.append(Utterance(utt_id=uid, label=CLASSES[c], group=f"G{g}", dialog=f"G{g}_d{i % 3}"))
            for m, d in DIMS.items():
                t = int(rng.integers(2, LENGTHS[m] + 3))  # some longer than the slot: truncated
                x = rng.normal(size=(t, d)).astype(np.float16)
                x[:, c] += np.float16(signal)
                feats[m][uid] = x
    ds = Dataset(root=root or Path("."), name="synthetic", classes=list(CLASSES), utterances=utts,
                 folds=folds_leave_one_group_out(utts))
    return ds, feats


def synthetic_inputs(ds, feats, modalities=("video", "speech", "text"), record_access: bool = False) -> ModelInputs:
    sources = {m: CachedModality(m, feats[m], LENGTHS[m], DIMS[m], EncoderRecord(name=f"synthetic-{m}", dim=DIMS[m]))
               for m in modalities}
    return ModelInputs(ds, ds.classes, sources, record_access=record_access)


def tiny_config(*overrides: str):
    """The ``tiny`` preset, deterministic (no dropout), fast."""
    return load_config("tiny", ["model.fe_dropout=0", "model.attn_dropout=0", "train.max_epochs=3",
                                "train.batch_size=8", *overrides])


def pipeline_for(inputs: ModelInputs, variant: str = "full") -> PipelineSpec:
    return PipelineSpec(classes=tuple(inputs.classes), variant=variant, modalities=tuple(inputs.modalities),
                        encoders={m: EncoderRecord(name=s.info.name, dim=s.dim, mode="cached")
                                  for m, s in inputs.sources.items()},
                        preprocessing=Preprocessing(lengths=inputs.lengths))
