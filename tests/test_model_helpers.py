"""Shared builders for the model tests (tiny configs, random padded batches)."""
from __future__ import annotations

import torch

from giamic import GIAMIC, GIAMICConfig

LENGTHS = {"video": 6, "speech": 9, "text": 5}


def make_batch(cfg: GIAMICConfig, valid: dict[str, list[int]] | None = None, batch: int = 2,
               lengths: dict[str, int] | None = None, seed: int = 1):
    """Random features with right padding; ``valid[m][i]`` = valid length of sample i."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or LENGTHS
    feats, masks = {}, {}
    for m in cfg.modalities:
        T = lengths[m]
        lens = (valid or {}).get(m) or [T] + [max(1, T // 2 - i) for i in range(batch - 1)]
        feats[m] = torch.randn(batch, T, cfg.input_dims[m], generator=g)
        masks[m] = torch.arange(T)[None, :] < torch.tensor(lens)[:, None]
    labels = torch.arange(batch) % cfg.num_classes
    return feats, masks, labels


def with_garbage(feats, masks, seed: int = 7, scale: float = 1e3):
    """Copy of ``feats`` whose padded rows hold large random values (and one NaN / inf)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, x in feats.items():
        junk = torch.randn(x.shape, generator=g) * scale
        y = torch.where(masks[m][..., None], x, junk)
        pad = (~masks[m]).nonzero()
        if len(pad):
            b, t = pad[0].tolist()
            y[b, t, 0] = float("nan")
            y[b, t, -1] = float("inf")
        out[m] = y
    return out


def tiny_model(variant: str = "full", **overrides) -> GIAMIC:
    return GIAMIC(GIAMICConfig.tiny(variant, **overrides))
