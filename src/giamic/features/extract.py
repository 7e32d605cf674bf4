"""``giamic extract``: run a frozen encoder once over a dataset into a :class:`FeatureStore`.

CLIP over 180 frames costs ~29 TFLOPs an utterance (our count: 162 GFLOPs a frame), ~40x everything
else, so the frozen encoders (CLIP, RoBERTa; WavLM in frozen mode) run once and training reads
their cache (docs/features.md).

How a run goes:

1. The dataset's utterances are planned into *chunks* (``chunk_size`` utterances; for video, whole
   dialog videos, so each video is decoded once for all its utterances with ``decode_windows``).
   A chunk's name hashes its utterances and their input fingerprints.
2. Chunk ``j`` belongs to shard ``j % num_shards`` (``--num-shards/--shard-id`` or torchrun's
   ``RANK``/``WORLD_SIZE``). The plan does not depend on the number of shards, and each chunk is
   computed by exactly one process in one fixed order, so any split gives byte-identical files.
3. Chunks already on disk with a valid manifest and checksum are skipped (resume, second run);
   the rest are preprocessed in data-loader workers and encoded in batches.
4. When every chunk of the plan exists, ``index.json`` is written (by whichever shard finishes
   last, or by a rerun) and files of older plans are removed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from giamic.errors import ConfigError
from giamic.features.encoders import Encoder
from giamic.features.registry import build_encoder
from giamic.features.store import (
    FeatureStoreError,
    ChunkRecord,
    check_chunk,
    chunk_paths,
    read_chunk_record,
    store_dir,
    write_chunk,
    write_index,
)
from giamic.log import progress as progress_bar
from giamic.utils.io import output_lock, write_json_atomic

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ExtractOptions:
    """Settings of one extraction run. Those that change features enter the key (:meth:`key_settings`)."""

    text_source: str = "gt"  # "gt" (transcript) or "asr" (transcript_asr, Whisper)
    video_max_sec: float | None = 6.0  # window from the utterance start, as the audio; None: whole turn
    video_max_frames: int | None = 180  # the paper's 180 frames; None: no limit
    video_fps: float | None = None  # frames per second kept of the window; None: the native rate (paper)
    crop_mode: str | None = None  # override the prepared crop mode ("fixed_window" | "half" | "full")
    dtype: str = "float32"  # compute dtype (autocast); features are stored as float16 either way
    chunk_size: int = 64  # utterances per chunk: the unit of resume and of sharding
    batch_size: int = 16  # utterances per forward (speech, text); video batches frames (frame_batch)
    workers: int = 0  # data-loader processes for decoding/preprocessing
    num_shards: int = 1
    shard_id: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.text_source not in ("gt", "asr"):
            raise ConfigError(f"text_source must be 'gt' or 'asr', got {self.text_source!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.crop_mode not in (None, "fixed_window", "half", "full"):
            raise ConfigError(f"unknown crop mode {self.crop_mode!r}")
        if not 0 <= self.shard_id < self.num_shards:
            raise ConfigError(f"shard_id {self.shard_id} outside 0..{self.num_shards - 1}")
        if self.video_fps is not None and not self.video_fps > 0:
            raise ConfigError(f"video_fps must be positive (frames per second), got {self.video_fps!r}")
        if self.chunk_size < 1 or self.batch_size < 1 or self.workers < 0:
            raise ConfigError("chunk_size and batch_size must be >= 1, workers >= 0")

    def key_settings(self, modality: str) -> dict:
        """The settings that change this modality's features (part of the cache key)."""
        out: dict[str, Any] = {"dtype": self.dtype}
        if modality == "video":
            out.update(video_max_sec=self.video_max_sec, video_max_frames=self.video_max_frames,
                       crop_mode=self.crop_mode)
            if self.video_fps is not None:  # absent at the native rate: caches made before it keep their key
                out["video_fps"] = float(self.video_fps)
        if modality == "text":
            out.update(text_source=self.text_source)
        return out

    @classmethod
    def from_env(cls, **kw) -> "ExtractOptions":
        """Options with ``num_shards``/``shard_id`` from torchrun's ``WORLD_SIZE``/``RANK`` when set."""
        if "num_shards" not in kw and "WORLD_SIZE" in os.environ:
            kw["num_shards"] = int(os.environ["WORLD_SIZE"])
            kw["shard_id"] = int(os.environ.get("RANK", "0"))
        return cls(**kw)


def feature_key(encoder: Encoder, options: ExtractOptions = ExtractOptions()) -> str:
    """``<registry name>-<12 hex>``: the store key for this encoder identity and these settings."""
    blob = json.dumps({"identity": encoder.identity(), "extraction": options.key_settings(encoder.modality)},
                      sort_keys=True, default=str)
    return f"{encoder.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def find_feature_key(data_dir: str | os.PathLike, encoder_name: str, complete: bool = True, **settings) -> str:
    """Key of the one store under ``DATA_DIR/features`` made by ``encoder_name`` (and matching
    ``settings`` such as ``text_source="asr"``), without building the encoder. Raises when there is
    none or several (the message lists them)."""
    from giamic.features.registry import resolve_name
    from giamic.features.store import list_keys

    try:
        encoder_name = resolve_name(encoder_name)
    except KeyError:
        pass  # an imported store's name
    found = []
    for key in list_keys(data_dir):
        root = store_dir(data_dir, key)
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        if meta.get("encoder") != encoder_name:
            continue
        if complete and not (root / "index.json").is_file():
            continue
        ext = meta.get("extraction", {})
        if all(ext.get(k) == v for k, v in settings.items()):
            found.append(key)
    if len(found) != 1:
        what = f"encoder {encoder_name!r}" + (f" with {settings}" if settings else "")
        if not found:
            raise FeatureStoreError(f"{Path(data_dir) / 'features'}: no complete store for {what}; run `giamic extract`")
        raise FeatureStoreError(f"{Path(data_dir) / 'features'}: several stores for {what}: {', '.join(found)}; "
                                f"pass the key explicitly")
    return found[0]


# -- the plan ----------------------------------------------------------------------------------


@dataclass
class Unit:
    """A piece of work for one loader item: one dialog video (video) or a run of utterances."""

    video: str | None
    utts: list[str]


@dataclass
class Chunk:
    name: str
    utts: list[str]
    units: list[Unit]


def _rel(path: Path | None, data_dir: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(data_dir.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _crop(utt, options: ExtractOptions):
    crop = utt.crop
    if crop is not None and options.crop_mode is not None and crop.box is None and crop.side is not None:
        crop = dataclasses.replace(crop, mode=options.crop_mode)
    elif crop is not None and options.crop_mode == "full" and crop.box is None:
        crop = dataclasses.replace(crop, mode="full")
    return crop


def fingerprint(utt, modality: str, options: ExtractOptions, data_dir: Path) -> dict:
    """What of the utterance's input the features depend on (the per-utterance part of the key)."""
    if modality == "video":
        crop = _crop(utt, options)
        return {"avi": _rel(utt.avi, data_dir), "size": _size(utt.avi), "start": utt.start, "end": utt.end,
                "crop": None if crop is None else [crop.side, list(crop.box) if crop.box else None, crop.mode]}
    if modality == "speech":
        return {"wav": _rel(utt.wav, data_dir), "size": _size(utt.wav)}
    text = utt.text(options.text_source)
    return {"text_sha": None if text is None else hashlib.sha256(text.encode()).hexdigest()}


def plan_chunks(utterances: list, modality: str, options: ExtractOptions, data_dir: Path) -> list[Chunk]:
    """Deterministic chunks over all utterances (independent of shards and of what is done)."""
    if modality == "video":
        groups: dict[str | None, list] = {}
        order: list = []
        for u in utterances:
            k = str(u.avi) if u.avi is not None else None
            if k is None:  # no video: each alone (nothing to decode)
                order.append((None, [u]))
                continue
            if k not in groups:
                groups[k] = []
                order.append((k, groups[k]))
            groups[k].append(u)
        units = [Unit(video=k, utts=[u.utt_id for u in us]) for k, us in order]
    else:
        units = [Unit(video=None, utts=[u.utt_id]) for u in utterances]
    by_id = {u.utt_id: u for u in utterances}
    chunks: list[Chunk] = []
    cur: list[Unit] = []

    def flush() -> None:
        if not cur:
            return
        utts = [u for un in cur for u in un.utts]
        units_ = list(cur) if modality == "video" else [Unit(video=None, utts=utts)]  # one loader item
        fp = [(u, fingerprint(by_id[u], modality, options, data_dir)) for u in utts]
        name = "c-" + hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:20]
        chunks.append(Chunk(name=name, utts=utts, units=units_))
        cur.clear()

    n = 0
    for unit in units:
        if cur and n + len(unit.utts) > options.chunk_size:
            flush()
            n = 0
        cur.append(unit)
        n += len(unit.utts)
        if n >= options.chunk_size:  # a video longer than a chunk stays whole, alone
            flush()
            n = 0
    flush()
    return chunks


# -- loader: decoding and preprocessing in worker processes -------------------------------------


class _UnitSource(torch.utils.data.Dataset):
    """Item ``i`` -> ``(chunk_pos, unit_pos, present utt ids, inputs, absent {utt: reason})``."""

    def __init__(self, items, by_id, modality, preprocess, options: ExtractOptions, sample_rate: int) -> None:
        self.items = items  # [(chunk_pos, unit_pos, Unit)]
        self.by_id = by_id
        self.modality = modality
        self.preprocess = preprocess
        self.options = options
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        ci, ui, unit = self.items[i]
        utts = [self.by_id[u] for u in unit.utts]
        absent: dict[str, str] = {}
        raw: list = []
        present: list[str] = []
        if self.modality == "video":
            raw, present = self._video(utts, absent)
        elif self.modality == "speech":
            from giamic.data.audio import load_audio
            from giamic.data.errors import MediaError

            for u in utts:
                if u.wav is None:
                    absent[u.utt_id] = "no audio file"
                    continue
                try:
                    raw.append(load_audio(u.wav, sr=self.sample_rate))
                    present.append(u.utt_id)
                except MediaError as e:
                    absent[u.utt_id] = f"media error: {e}"
        else:
            col = "transcript" if self.options.text_source == "gt" else "transcript_asr"
            for u in utts:
                t = u.text(self.options.text_source)
                if t is None or not t.strip():
                    absent[u.utt_id] = f"no text in column {col}"
                    continue
                raw.append(t)
                present.append(u.utt_id)
        inputs = self.preprocess(raw) if present else {}
        return ci, ui, present, inputs, absent

    def _video(self, utts, absent):
        from giamic.data.errors import MediaError
        from giamic.data.video import VideoWindow, decode_windows

        o = self.options
        wins, ids = [], []
        for u in utts:
            if u.avi is None:
                absent[u.utt_id] = "no video file"
            elif u.start is None or u.end is None or not u.end > u.start >= 0:
                absent[u.utt_id] = f"no valid start/end for the video window ({u.start}, {u.end})"
            else:
                try:
                    wins.append(VideoWindow(start=u.start, end=u.end, crop=_crop(u, o)))
                    ids.append(u.utt_id)
                except ValueError as e:
                    absent[u.utt_id] = f"bad crop: {e}"
        if not wins:
            return [], []
        try:
            frames = decode_windows(utts[0].avi, wins, max_frames=o.video_max_frames, max_sec=o.video_max_sec,
                                    allow_empty=True, fps=o.video_fps)
        except MediaError as e:
            for u in ids:
                absent[u] = f"media error: {e}"
            return [], []
        raw, present = [], []
        for u, f in zip(ids, frames):
            if f.shape[0] == 0:
                absent[u] = "no frame in the window"
            else:
                raw.append(f)
                present.append(u)
        return raw, present


def _collate(batch):
    return batch


# -- the run -----------------------------------------------------------------------------------


@dataclass
class ExtractResult:
    key: str
    root: Path
    computed: int = 0  # utterances encoded in this run
    reused: int = 0  # utterances found valid on disk
    chunks_total: int = 0
    chunks_computed: int = 0
    recomputed: list[str] = field(default_factory=list)  # why chunks on disk were rejected
    absent: dict[str, str] = field(default_factory=dict)  # this shard's absent utterances
    complete: bool = False  # index.json written
    encode_seconds: float = 0.0  # time inside the encoder forward
    seconds: float = 0.0


def _meta(encoder: Encoder, key: str, options: ExtractOptions, plan_chunk_size: int) -> dict:
    return {"format_version": 1, "key": key, "encoder": encoder.name, "modality": encoder.modality,
            "dim": encoder.dim, "identity": encoder.identity(),
            "extraction": options.key_settings(encoder.modality), "chunk_size": plan_chunk_size}


def extract(data_dir: str | os.PathLike, encoder: Encoder | str, options: ExtractOptions = ExtractOptions(),
            device: str | torch.device | None = None) -> ExtractResult:
    """Extract (or finish, or verify) the features of ``encoder`` over the dataset in ``data_dir``.

    ``encoder`` is an :class:`Encoder` or a registry name (built with its defaults). It must be
    frozen: the speech encoder is fine-tuned online by default (as in the paper) and is cached only
    in frozen mode (``build_encoder("wavlm", frozen=True)``; docs/decisions.md).
    """
    from giamic.data.dataset import load_dataset

    t_start = time.perf_counter()
    data_dir = Path(data_dir)
    if isinstance(encoder, str):
        encoder = build_encoder(encoder, device=device or "cpu")
    elif device is not None:
        encoder = encoder.to(device)
    if not encoder.frozen:
        raise ValueError(
            f"encoder '{encoder.name}' is trainable (the paper fine-tunes the speech encoder online); "
            "cache it only in frozen mode: build_encoder(name, frozen=True) / `giamic extract --frozen-speech`")
    encoder.eval()
    ds = load_dataset(data_dir)
    key = feature_key(encoder, options)
    root = store_dir(data_dir, key)
    # One process per store (per shard when sharded); a killed run's temporary files go first.
    part = f"shard-{options.shard_id}-of-{options.num_shards}" if options.num_shards > 1 else None
    with output_lock(root, part=part, what=f"feature store {key}"):
        return _extract_locked(data_dir, encoder, options, ds, key, root, t_start)


def _extract_locked(data_dir: Path, encoder: Encoder, options: ExtractOptions, ds, key: str, root: Path,
                    t_start: float) -> ExtractResult:
    meta_path = root / "meta.json"
    chunk_size = options.chunk_size
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old.get("identity") != json.loads(json.dumps(encoder.identity(), default=str)):
            raise FeatureStoreError(f"{meta_path}: store {key} holds another encoder identity (hash collision?)")
        if old.get("chunk_size", chunk_size) != chunk_size:
            # The plan must not change under a resumed run, or finished chunks would be recomputed.
            log.info("%s: keeping the store's chunk size %s (asked %s)", key, old["chunk_size"], chunk_size)
            chunk_size = int(old["chunk_size"])
    options_plan = dataclasses.replace(options, chunk_size=chunk_size)
    meta = _meta(encoder, key, options, chunk_size)
    if not meta_path.is_file():
        write_json_atomic(meta_path, meta)

    chunks = plan_chunks(ds.utterances, encoder.modality, options_plan, data_dir)
    result = ExtractResult(key=key, root=root, chunks_total=len(chunks))
    mine = [i for i in range(len(chunks)) if i % options.num_shards == options.shard_id]
    verified: dict[int, ChunkRecord] = {}
    todo: list[int] = []
    for i in mine:
        rec = _valid_record(root, key, chunks[i], result)
        if rec is None:
            todo.append(i)
        else:
            verified[i] = rec
            result.reused += len(chunks[i].utts)
            result.absent.update(rec.absent)

    if todo:
        _run_chunks(encoder, chunks, todo, ds, root, key, options, result, verified)
    result.complete = _finalize(root, key, encoder.dim, chunks, verified, result, options)
    result.seconds = time.perf_counter() - t_start
    return result


def _valid_record(root: Path, key: str, chunk: Chunk, result: ExtractResult) -> ChunkRecord | None:
    npy, man = chunk_paths(root, chunk.name)
    if not man.exists():
        return None
    rec = read_chunk_record(root, chunk.name)
    problem = None
    if rec is None:
        problem = f"{man}: unreadable manifest"
    elif rec.key != key or rec.utts != chunk.utts:
        problem = f"{man}: manifest does not match the plan"
    else:
        problem = check_chunk(root, rec, full=True)
    if problem:
        result.recomputed.append(problem)
        return None
    return rec


def _run_chunks(encoder: Encoder, chunks: list[Chunk], todo: list[int], ds, root: Path, key: str,
                options: ExtractOptions, result: ExtractResult, verified: dict[int, ChunkRecord]) -> None:
    items = [(ci, ui, unit) for ci in todo for ui, unit in enumerate(chunks[ci].units)]
    sr = getattr(encoder.settings, "sample_rate", 16000)
    source = _UnitSource(items, ds.by_id, encoder.modality, encoder.preprocessor(), options, sr)
    loader = torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=options.workers,
                                         collate_fn=_collate, prefetch_factor=2 if options.workers else None)
    pending: dict[int, dict] = {}
    units_left = {ci: len(chunks[ci].units) for ci in todo}
    dev = encoder.device
    dtype = DTYPES[options.dtype]
    autocast = (torch.autocast(device_type=dev.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    samples = progress_bar(loader, desc=key, total=len(items), unit="unit") if options.progress else loader
    with torch.no_grad():
        for sample in samples:
            ci, ui, present, inputs, absent = sample
            st = pending.setdefault(ci, {"features": {}, "absent": {}})
            st["absent"].update(absent)
            if present:
                t0 = time.perf_counter()
                with autocast:
                    rows = _encode_rows(encoder, inputs, options.batch_size, dev)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                result.encode_seconds += time.perf_counter() - t0
                for u, r in zip(present, rows):
                    if r.shape[0] == 0:
                        st["absent"][u] = ("audio shorter than one encoder frame" if encoder.modality == "speech"
                                           else "no valid position")
                    else:
                        st["features"][u] = r
            units_left[ci] -= 1
            if units_left[ci] == 0:
                st = pending.pop(ci)
                rec = write_chunk(root, key, chunks[ci].name, chunks[ci].utts, st["features"], st["absent"],
                                  encoder.dim)
                verified[ci] = rec
                result.chunks_computed += 1
                result.computed += len(chunks[ci].utts)
                result.absent.update(rec.absent)


def _encode_rows(encoder: Encoder, inputs: dict, batch_size: int, device) -> list[np.ndarray]:
    """Forward ``inputs`` (one loader item) and return the valid rows of each utterance (float32)."""
    if encoder.modality == "video":
        slices = [inputs]  # the CLIP encoder batches frames itself (frame_batch)
    else:
        n = next(iter(inputs.values())).shape[0]
        slices = [{k: v[s : s + batch_size] for k, v in inputs.items()} for s in range(0, n, batch_size)]
    rows: list[np.ndarray] = []
    for sl in slices:
        feats, mask = encoder(**{k: v.to(device, non_blocking=True) for k, v in sl.items()})
        feats = feats.float().cpu().numpy()
        lengths = mask.sum(1).cpu().numpy()
        rows.extend(feats[b, : int(lengths[b])] for b in range(feats.shape[0]))
    return rows


def _finalize(root: Path, key: str, dim: int, chunks: list[Chunk], verified: dict[int, ChunkRecord],
              result: ExtractResult, options: ExtractOptions) -> bool:
    """Write ``index.json`` when every planned chunk is on disk and sound; clean up old files."""
    records: list[ChunkRecord] = []
    missing = 0
    for i, c in enumerate(chunks):
        rec = verified.get(i)
        if rec is None:  # another shard's chunk
            rec = read_chunk_record(root, c.name)
            if rec is None or rec.utts != c.utts or check_chunk(root, rec, full=True) is not None:
                missing += 1
                continue
        records.append(rec)
    if missing:
        log.info("%s: %d of %d chunk(s) are other shards' and not finished yet; the index is written by the "
                 "last shard to finish (or rerun `giamic extract` to merge)", key, missing, len(chunks))
        return False
    index_path = root / "index.json"
    names = [r.name for r in records]
    if index_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            if [c["name"] for c in json.loads(index_path.read_text(encoding="utf-8"))["chunks"]] == names:
                return True
    write_index(root, key, dim, records)
    keep = {f"{n}.npy" for n in names} | {f"{n}.json" for n in names}
    removed = 0
    for p in (root / "chunks").iterdir():
        if p.name not in keep:  # chunks of an older plan and temporary files of killed writes
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
    if removed:
        log.info("%s: removed %d stale file(s) from older runs", key, removed)
    return True
