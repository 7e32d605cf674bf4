"""``giamic import-features``: bring your own per-utterance features into a :class:`FeatureStore`.

Sources: a directory of ``<utt_id>.npy`` files (loaded with ``allow_pickle=False``) or one
``.safetensors`` file whose tensor names are utterance ids. Each array is ``[T, D]`` (any T >= 1,
one D for all), a floating dtype, finite. The store is written under ``DATA_DIR/features/<name>``
with the same chunk files, manifests and index as an extracted one, so training can name it like an
encoder key (``video=my-video``). Dataset utterances without an array are recorded as absent; arrays
for ids that are not in the dataset are listed and skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from giamic.errors import ConfigError
from giamic.features.store import FeatureStoreError, store_dir, write_chunk, write_index
from giamic.modalities import MODALITIES
from giamic.utils.io import write_json_atomic

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ImportResult:
    key: str
    imported: int = 0
    absent: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # arrays for ids not in the dataset (skipped)
    dim: int = 0


def _iter_source(src: Path) -> Iterator[tuple[str, np.ndarray, str]]:
    """``(utt_id, array, where)`` for every array in ``src``; ``where`` names the file for errors."""
    if src.is_dir():
        for p in sorted(src.glob("*.npy")):
            try:
                a = np.load(p, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise FeatureStoreError(f"{p}: cannot read as a .npy array without pickle ({e})") from e
            yield p.stem, a, str(p)
        return
    if src.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(src), framework="pt") as f:  # "pt" also reads bfloat16
                for k in sorted(f.keys()):
                    t = f.get_tensor(k)
                    if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16
                        t = t.float()
                    yield k, t.numpy(), f"{src}[{k}]"
        except (OSError, ValueError, RuntimeError) as e:
            if isinstance(e, FeatureStoreError):
                raise
            raise FeatureStoreError(f"{src}: cannot read as safetensors ({e})") from e
        return
    if src.suffix == ".npy":
        raise FeatureStoreError(f"{src}: a single .npy holds one array; pass a directory of <utt_id>.npy files")
    raise FeatureStoreError(f"{src}: expected a directory of <utt_id>.npy files or a .safetensors file")


def import_features(data_dir: str | os.PathLike, name: str, modality: str, source: str | os.PathLike,
                    chunk_size: int = 256) -> ImportResult:
    """Import precomputed features as store ``name`` (see module docstring). Returns the counts."""
    from giamic.data.dataset import load_dataset

    if modality not in MODALITIES:
        raise ConfigError(f"modality must be video, speech or text, got {modality!r}")
    if not _NAME.match(name):
        raise ConfigError(f"invalid store name {name!r}: letters, digits, '.', '_' and '-' only")
    src = Path(source)
    if not src.exists():
        raise FeatureStoreError(f"{src}: no such file or directory")
    data_dir = Path(data_dir)
    ds = load_dataset(data_dir)
    ids = [u.utt_id for u in ds.utterances]
    wanted = set(ids)
    arrays: dict[str, np.ndarray] = {}
    res = ImportResult(key=name)
    content = hashlib.sha256()
    for utt, a, where in _iter_source(src):
        if utt not in wanted:
            res.unknown.append(utt)
            continue
        if a.ndim != 2:
            raise FeatureStoreError(f"{where}: shape {list(a.shape)}, expected [T, D] (2-D)")
        if not np.issubdtype(a.dtype, np.floating):
            raise FeatureStoreError(f"{where}: dtype {a.dtype}, expected a floating type")
        if a.shape[0] < 1 or a.shape[1] < 1:
            raise FeatureStoreError(f"{where}: empty array {list(a.shape)}")
        if res.dim == 0:
            res.dim = int(a.shape[1])
        elif a.shape[1] != res.dim:
            raise FeatureStoreError(f"{where}: dim {a.shape[1]} differs from the others' {res.dim}")
        a16 = a.astype(np.float16)
        if not np.isfinite(a16).all():
            raise FeatureStoreError(f"{where}: holds NaN/Inf (or values beyond float16 range)")
        arrays[utt] = a16
        content.update(utt.encode() + b"|" + a16.tobytes())
    if not arrays:
        raise FeatureStoreError(f"{src}: no array for any utterance of {data_dir} "
                                f"(expected <utt_id>.npy files or safetensors keys such as {ids[:3]})")
    root = store_dir(data_dir, name)
    meta_path = root / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if not old.get("imported"):
            raise FeatureStoreError(f"{root}: an extracted store has this name; choose another --name")
    identity = {"imported_from": str(src.resolve()), "content_sha256": content.hexdigest(), "dim": res.dim}
    write_json_atomic(meta_path, {"format_version": 1, "key": name, "encoder": name, "modality": modality,
                                  "dim": res.dim, "identity": identity, "extraction": {}, "imported": True,
                                  "chunk_size": chunk_size})
    records = []
    for s in range(0, len(ids), chunk_size):
        utts = ids[s : s + chunk_size]
        feats = {u: arrays[u] for u in utts if u in arrays}
        absent = {u: "not in the imported features" for u in utts if u not in arrays}
        h = hashlib.sha256()
        for u in utts:
            h.update(u.encode() + b"|" + (hashlib.sha256(feats[u].tobytes()).digest() if u in feats else b"-"))
        records.append(write_chunk(root, name, "c-" + h.hexdigest()[:20], utts, feats, absent, res.dim))
        res.absent.update(absent)
    write_index(root, name, res.dim, records)
    keep = {f"{r.name}.{ext}" for r in records for ext in ("npy", "json")}
    for p in (root / "chunks").iterdir():
        if p.name not in keep:  # chunks of an earlier import under the same name
            p.unlink(missing_ok=True)
    res.imported = len(arrays)
    return res
