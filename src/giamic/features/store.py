"""The feature cache on disk: sharded fp16 arrays, memory-mapped reads (docs/features.md).

Layout of ``DATA_DIR/features/<key>/``::

    meta.json               key, encoder name, modality, dim, encoder identity, extraction settings
    chunks/c-<hash>.npy     fp16 [rows, D]: the valid rows of several utterances, concatenated
    chunks/c-<hash>.json    the chunk's manifest: utterances, (offset, length) each, absent ones
                            with the reason, SHA-256 and size of the .npy. Written last: its
                            presence commits the chunk.
    index.json              the complete store: chunk list + utt_id -> (chunk, offset, length)
                            + absent utterances. Written once every planned chunk exists.

Guarantees:

* Every file is written through a temporary file and a rename (``giamic.utils.io``): a kill leaves
  whole files or none. A chunk counts only when its manifest exists and the array's size (always)
  and SHA-256 (on resume and ``verify``) match it, so corrupt or truncated chunks are recomputed.
* A chunk's name is a hash of its utterances and their input fingerprints (media path, size,
  window, crop, text hash): a changed input gives a new chunk name, never a stale read.
* Reads open each chunk array once with ``np.load(mmap_mode="r")`` and slice it: no per-tensor
  file opens, no copies until the caller asks for one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from giamic.features.errors import FeatureStoreError
from giamic.utils.io import write_bytes_atomic, write_json_atomic

FEATURES_DIR = "features"
STORE_FORMAT = 1


class AbsentFeatureError(KeyError):
    """The utterance is in the store but its modality is absent (no file, empty transcript, ...)."""

    def __str__(self) -> str:  # KeyError would print the repr of the tuple
        return str(self.args[0]) if self.args else ""


def store_dir(data_dir: str | os.PathLike, key: str) -> Path:
    if not key or "/" in key or "\\" in key or key.startswith("."):
        raise ValueError(f"invalid feature key {key!r}")
    return Path(data_dir) / FEATURES_DIR / key


def list_keys(data_dir: str | os.PathLike) -> list[str]:
    """Keys of every store under ``DATA_DIR/features`` that has a ``meta.json`` (complete or not)."""
    root = Path(data_dir) / FEATURES_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ChunkRecord:
    """The manifest of one chunk (``chunks/<name>.json``)."""

    name: str
    utts: list[str]
    entries: dict[str, list[int]]  # utt_id -> [offset, length]
    absent: dict[str, str]  # utt_id -> reason
    rows: int
    dim: int
    sha256: str
    nbytes: int
    key: str
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "key": self.key, "utts": self.utts, "entries": self.entries,
                "absent": self.absent, "rows": self.rows, "dim": self.dim, "sha256": self.sha256,
                "nbytes": self.nbytes, **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, d: dict) -> "ChunkRecord":
        return cls(name=d["name"], utts=list(d["utts"]), entries={k: list(v) for k, v in d["entries"].items()},
                   absent=dict(d["absent"]), rows=int(d["rows"]), dim=int(d["dim"]), sha256=d["sha256"],
                   nbytes=int(d["nbytes"]), key=d["key"], extra=d.get("extra", {}))


def chunk_paths(root: Path, name: str) -> tuple[Path, Path]:
    return root / "chunks" / f"{name}.npy", root / "chunks" / f"{name}.json"


def write_chunk(root: Path, key: str, name: str, utts: list[str], features: Mapping[str, np.ndarray],
                absent: Mapping[str, str], dim: int) -> ChunkRecord:
    """Write one chunk: the array first, then its manifest (the commit marker).

    ``features[utt]`` is ``[T, dim]`` (any float dtype, stored as fp16) for each present utterance;
    every utterance of ``utts`` must be in exactly one of ``features`` and ``absent``.
    """
    entries: dict[str, list[int]] = {}
    parts = []
    offset = 0
    for u in utts:
        if u in absent:
            if u in features:
                raise ValueError(f"utterance {u} is both present and absent in chunk {name}")
            continue
        a = np.asarray(features[u])
        if a.ndim != 2 or a.shape[1] != dim:
            raise ValueError(f"features of {u} have shape {a.shape}, expected [T, {dim}]")
        a16 = a.astype(np.float16)
        if not np.isfinite(a16).all():
            raise ValueError(f"features of {u} hold NaN/Inf after conversion to float16 (chunk {name})")
        entries[u] = [offset, int(a16.shape[0])]
        offset += a16.shape[0]
        parts.append(a16)
    arr = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float16)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    data = buf.getvalue()
    npy, man = chunk_paths(root, name)
    write_bytes_atomic(npy, data)
    rec = ChunkRecord(name=name, utts=list(utts), entries=entries, absent={u: absent[u] for u in utts if u in absent},
                      rows=int(arr.shape[0]), dim=dim, sha256=hashlib.sha256(data).hexdigest(), nbytes=len(data),
                      key=key)
    _test_hook_after_array(npy)
    write_json_atomic(man, rec.to_json())
    return rec


def _test_hook_after_array(npy: Path) -> None:
    """Kill-and-resume tests: ``GIAMIC_TEST_KILL_AFTER_CHUNKS=N`` kills the process with SIGKILL
    once N chunk manifests exist in this store, right after writing the next array and before its
    manifest — the worst moment for a crash. Unset in normal use."""
    n = os.environ.get("GIAMIC_TEST_KILL_AFTER_CHUNKS")
    if n is None:
        return
    done = len(list(npy.parent.glob("c-*.json")))
    if done >= int(n):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def read_chunk_record(root: Path, name: str) -> ChunkRecord | None:
    """The manifest of chunk ``name``, or None when it is missing or unreadable."""
    _, man = chunk_paths(root, name)
    try:
        return ChunkRecord.from_json(json.loads(man.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_chunk(root: Path, rec: ChunkRecord, full: bool) -> str | None:
    """Why a committed chunk cannot be used (None when it is fine). ``full`` checks the SHA-256."""
    npy, _ = chunk_paths(root, rec.name)
    if not npy.is_file():
        return f"{npy}: array file missing"
    size = npy.stat().st_size
    if size != rec.nbytes:
        return f"{npy}: size {size} bytes, manifest says {rec.nbytes} (truncated or overwritten)"
    if full and sha256_file(npy) != rec.sha256:
        return f"{npy}: SHA-256 does not match its manifest (corrupt)"
    return None


def write_index(root: Path, key: str, dim: int, records: list[ChunkRecord]) -> dict:
    """Write ``index.json`` spanning ``records`` (in plan order); the store is then complete."""
    entries: dict[str, list] = {}
    absent: dict[str, str] = {}
    for ci, rec in enumerate(records):
        for u in rec.utts:
            if u in entries or u in absent:
                raise FeatureStoreError(f"{root}: utterance {u} appears in two chunks")
            if u in rec.absent:
                absent[u] = rec.absent[u]
            else:
                entries[u] = [ci, *rec.entries[u]]
    for r in records:
        if r.dim != dim:
            raise FeatureStoreError(f"{chunk_paths(root, r.name)[0]}: dim {r.dim}, store dim {dim}")
    index = {
        "format_version": STORE_FORMAT,
        "key": key,
        "dim": dim,
        "chunks": [{"name": r.name, "rows": r.rows, "nbytes": r.nbytes, "sha256": r.sha256} for r in records],
        "entries": entries,
        "absent": absent,
    }
    write_json_atomic(root / "index.json", index, indent=None)
    return index


class FeatureStore(Mapping[str, np.ndarray]):
    """Read-only view of a complete feature store (docs/features.md, docs/architecture.md).

    ``store[utt_id]`` -> ``np.ndarray`` float16 ``[T, D]``, a read-only memory-mapped slice (copy it
    with ``np.array`` to own it). Utterances whose modality is absent are not keys (``in`` is False)
    and ``store[u]`` raises :class:`AbsentFeatureError` with the reason; see :attr:`absent`.
    """

    def __init__(self, root: Path, meta: dict, index: dict) -> None:
        self.root = Path(root)
        self.meta = meta
        self.key: str = index["key"]
        self.dim: int = int(index["dim"])
        self._chunks = index["chunks"]
        self._entries: dict[str, list[int]] = index["entries"]
        self.absent: dict[str, str] = dict(index["absent"])
        self._maps: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, data_dir: str | os.PathLike, key: str, verify: bool = False) -> "FeatureStore":
        """Open ``DATA_DIR/features/<key>``; sizes are always checked, SHA-256 too with ``verify``."""
        root = store_dir(data_dir, key)
        meta_path, index_path = root / "meta.json", root / "index.json"
        if not meta_path.is_file():
            known = list_keys(data_dir)
            raise FeatureStoreError(
                f"{root}: no feature store with key {key!r}"
                + (f"; stores here: {', '.join(known)}" if known else "; run `giamic extract` first"))
        if not index_path.is_file():
            n = len(list((root / "chunks").glob("c-*.json"))) if (root / "chunks").is_dir() else 0
            raise FeatureStoreError(
                f"{index_path}: store is incomplete ({n} chunk(s) written, no index); "
                f"rerun `giamic extract {data_dir}` with the same settings to finish it")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise FeatureStoreError(f"{root}: unreadable meta.json/index.json ({e})") from e
        if index.get("format_version") != STORE_FORMAT:
            raise FeatureStoreError(f"{index_path}: format_version {index.get('format_version')} "
                                    f"(this version reads {STORE_FORMAT}); re-extract")
        store = cls(root, meta, index)
        problems = store.verify(full=verify)
        if problems:
            raise FeatureStoreError("corrupt feature store; rerun `giamic extract` to repair:\n  " + "\n  ".join(problems))
        return store

    # -- Mapping interface ---------------------------------------------------------------------
    def __getitem__(self, utt_id: str) -> np.ndarray:
        e = self._entries.get(utt_id)
        if e is None:
            if utt_id in self.absent:
                raise AbsentFeatureError(f"{utt_id}: {self.meta.get('modality', 'feature')} absent "
                                         f"({self.absent[utt_id]}) in store {self.key}")
            raise KeyError(utt_id)
        ci, off, n = e
        return self._array(ci)[off : off + n]

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def length(self, utt_id: str) -> int:
        """Number of valid rows T of ``utt_id`` without touching the array."""
        return int(self._entries[utt_id][2])

    @property
    def modality(self) -> str | None:
        return self.meta.get("modality")

    @property
    def identity(self) -> dict:
        return self.meta.get("identity", {})

    def _array(self, ci: int) -> np.ndarray:
        a = self._maps.get(ci)
        if a is None:
            c = self._chunks[ci]
            npy, _ = chunk_paths(self.root, c["name"])
            if c["rows"] == 0:
                a = np.zeros((0, self.dim), dtype=np.float16)
            else:
                try:
                    a = np.load(npy, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise FeatureStoreError(f"{npy}: cannot map chunk ({e}); rerun `giamic extract`") from e
                if a.dtype != np.float16 or a.shape != (c["rows"], self.dim):
                    raise FeatureStoreError(f"{npy}: holds {a.dtype}{list(a.shape)}, index says "
                                            f"float16[{c['rows']}, {self.dim}]")
            self._maps[ci] = a
        return a

    def verify(self, full: bool = True) -> list[str]:
        """Problems found in the chunk files (empty when sound); ``full`` also checks SHA-256."""
        problems = []
        for c in self._chunks:
            rec = ChunkRecord(name=c["name"], utts=[], entries={}, absent={}, rows=c["rows"], dim=self.dim,
                              sha256=c["sha256"], nbytes=c["nbytes"], key=self.key)
            p = check_chunk(self.root, rec, full)
            if p:
                problems.append(p)
        return problems

    def __getstate__(self) -> dict:  # data-loader workers re-map lazily instead of pickling maps
        d = self.__dict__.copy()
        d["_maps"] = {}
        return d

    def __repr__(self) -> str:
        return f"FeatureStore({self.key!r}, {len(self)} utterances, {len(self.absent)} absent, dim={self.dim})"
