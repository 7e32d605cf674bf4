"""The prepared dataset directory: ``utterances.csv``, ``dataset.json``, ``folds.json``.

This module is the data contract of ``docs/architecture.md``. Every reader (IEMOCAP, manifest)
ends in :func:`write_dataset`; every later stage starts from :func:`load_dataset`. Folds are
leave one session out for IEMOCAP (the paper's 5-fold protocol) or, for other corpora,
leave-one-group-out or a deterministic grouped k-fold.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from giamic.data.errors import DataError
from giamic.data.video import CropSpec, VideoWindow
from giamic.utils.io import write_json_atomic, write_text_atomic

FORMAT_VERSION = 1
UTTERANCES_CSV = "utterances.csv"
DATASET_JSON = "dataset.json"
FOLDS_JSON = "folds.json"

# Column order of utterances.csv (docs/architecture.md). Optional columns are written only when used.
BASE_COLUMNS = (
    "utt_id", "label", "group", "speaker", "session", "dialog", "gender",
    "start", "end", "wav", "avi", "side", "transcript",
)
OPTIONAL_COLUMNS = ("transcript_asr", "crop_x", "crop_y", "crop_w", "crop_h", "crop_mode", "raw_label")
# A manifest's own extra columns are kept as ``meta.<name>`` columns after all the others.
META_PREFIX = "meta."
REQUIRED_COLUMNS = ("utt_id", "label", "group")


@dataclass(frozen=True)
class Utterance:
    """One row of ``utterances.csv``; paths absolute, empty cells ``None`` (docs/architecture.md).

    ``start``/``end`` are seconds on the video timeline; ``crop_box`` (pixels) overrides ``side``;
    ``crop_mode`` is the crop rule used with ``side`` (``fixed_window`` for IEMOCAP, docs/decisions.md);
    ``raw_label`` keeps the corpus's own label (IEMOCAP's ``exc`` before the merge into ``hap``).
    ``meta`` holds a manifest's extra columns (name -> text as given), stored as ``meta.<name>``
    columns of ``utterances.csv``; giamic carries them along and never interprets them.
    """

    utt_id: str
    label: str
    group: str
    speaker: str | None = None
    session: str | None = None
    dialog: str | None = None
    gender: str | None = None
    start: float | None = None
    end: float | None = None
    wav: Path | None = None
    avi: Path | None = None
    side: str | None = None
    transcript: str | None = None
    transcript_asr: str | None = None
    crop_box: tuple[int, int, int, int] | None = None
    crop_mode: str = "fixed_window"
    raw_label: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)

    def label_id(self, classes: Sequence[str]) -> int:
        """Index of this utterance's label in ``classes`` (class index = position)."""
        try:
            return list(classes).index(self.label)
        except ValueError:
            raise DataError(f"label {self.label!r} is not one of the classes {list(classes)}", utt_id=self.utt_id) from None

    @property
    def crop(self) -> CropSpec | None:
        """The speaker crop, or ``None`` without a video. A box wins; without box or side: full frame."""
        if self.avi is None:
            return None
        if self.crop_box is not None:
            return CropSpec(box=self.crop_box)
        if self.side in ("L", "R"):
            return CropSpec(side=self.side, mode=self.crop_mode)  # type: ignore[arg-type]
        return CropSpec(mode="full")

    def video_window(self, offset: float = 0.0) -> VideoWindow | None:
        """The utterance's frame window; ``offset`` (s) shifts it with a ``random_train`` audio crop."""
        if self.avi is None or self.start is None or self.end is None:
            return None
        return VideoWindow(start=self.start + offset, end=self.end, crop=self.crop)  # type: ignore[arg-type]

    def text(self, source: str = "gt") -> str | None:
        """Transcript from ``source`` ``"gt"`` (ground truth) or ``"asr"`` (Whisper, ``transcript_asr``)."""
        if source == "gt":
            return self.transcript
        if source == "asr":
            return self.transcript_asr
        raise ValueError(f"unknown text source {source!r} (expected 'gt' or 'asr')")


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: ``test`` is the held-out group; ``train`` everything else."""

    name: str
    test_group: str
    train: list[str]
    test: list[str]

    def to_json(self) -> dict:
        return {"name": self.name, "test_group": self.test_group, "train": list(self.train), "test": list(self.test)}


@dataclass
class Dataset:
    """A prepared dataset directory loaded in memory (docs/architecture.md)."""

    root: Path
    name: str
    classes: list[str]
    utterances: list[Utterance]
    folds: list[Fold]
    fold_scheme: str = ""
    source: str = ""
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id: dict[str, Utterance] = {u.utt_id: u for u in self.utterances}

    def __len__(self) -> int:
        return len(self.utterances)

    def fold(self, name_or_index: str | int) -> Fold:
        if isinstance(name_or_index, int):
            return self.folds[name_or_index]
        for f in self.folds:
            if f.name == name_or_index or f.test_group == name_or_index:
                return f
        raise KeyError(f"no fold {name_or_index!r} in {self.root}")

    def label_ids(self, utt_ids: Iterable[str] | None = None) -> np.ndarray:
        ids = [u.utt_id for u in self.utterances] if utt_ids is None else list(utt_ids)
        return np.asarray([self.by_id[i].label_id(self.classes) for i in ids], dtype=np.int64)


# --------------------------------------------------------------------------- folds


def folds_leave_one_group_out(utterances: Sequence[Utterance]) -> list[Fold]:
    """One fold per group, groups in sorted order (IEMOCAP: fold i tests Session i)."""
    groups = sorted({u.group for u in utterances})
    if len(groups) < 2:
        raise DataError(f"leave-one-group-out needs at least 2 groups, found {groups}")
    folds = []
    for k, g in enumerate(groups):
        folds.append(
            Fold(
                name=f"fold{k + 1}",
                test_group=g,
                train=[u.utt_id for u in utterances if u.group != g],
                test=[u.utt_id for u in utterances if u.group == g],
            )
        )
    return folds


def folds_grouped_kfold(utterances: Sequence[Utterance], k: int, seed: int = 0) -> list[Fold]:
    """Grouped k-fold: every group lands whole in one test fold; deterministic in ``seed``.

    Groups are shuffled with ``seed`` and then assigned, largest first, to the fold with the
    fewest utterances so far (ties: lowest fold index), which balances fold sizes without ever
    splitting a group. ``test_group`` lists the fold's groups joined by ``+``.
    """
    sizes = Counter(u.group for u in utterances)
    groups = sorted(sizes)
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    if len(groups) < k:
        raise DataError(f"grouped {k}-fold needs at least {k} groups, found {len(groups)}")
    rng = np.random.default_rng(seed)
    shuffled = [groups[i] for i in rng.permutation(len(groups))]
    # Stable sort keeps the shuffled order among equal sizes, so the seed matters for ties.
    shuffled.sort(key=lambda g: -sizes[g])
    members: list[list[str]] = [[] for _ in range(k)]
    load = [0] * k
    for g in shuffled:
        j = min(range(k), key=lambda i: (load[i], i))
        members[j].append(g)
        load[j] += sizes[g]
    folds = []
    for j in range(k):
        test_groups = set(members[j])
        folds.append(
            Fold(
                name=f"fold{j + 1}",
                test_group="+".join(sorted(test_groups)),
                train=[u.utt_id for u in utterances if u.group not in test_groups],
                test=[u.utt_id for u in utterances if u.group in test_groups],
            )
        )
    return folds


# --------------------------------------------------------------------------- writing


def _fmt_float(x: float | None) -> str:
    # Six decimals (1 µs) keep IEMOCAP's 4-decimal times exact and drop float noise.
    return "" if x is None else f"{x:.6f}".rstrip("0").rstrip(".")


def _fmt_path(p: Path | None, data_dir: Path) -> str:
    if p is None:
        return ""
    p = Path(p).resolve()
    try:
        return p.relative_to(data_dir).as_posix()
    except ValueError:
        return str(p)


def utterances_to_csv_text(utterances: Sequence[Utterance], data_dir: str | os.PathLike) -> str:
    """The text of ``utterances.csv`` for ``utterances`` (paths under ``data_dir`` made relative)."""
    data_dir = Path(data_dir).resolve()
    cols = list(BASE_COLUMNS)
    if any(u.transcript_asr is not None for u in utterances):
        cols.append("transcript_asr")
    if any(u.crop_box is not None for u in utterances):
        cols += ["crop_x", "crop_y", "crop_w", "crop_h"]
    if any(u.crop_mode != "fixed_window" for u in utterances):
        cols.append("crop_mode")
    if any(u.raw_label is not None for u in utterances):
        cols.append("raw_label")
    meta_keys = list(dict.fromkeys(k for u in utterances for k in u.meta))
    cols += [META_PREFIX + k for k in meta_keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for u in utterances:
        box = u.crop_box or (None, None, None, None)
        row = {
            "utt_id": u.utt_id, "label": u.label, "group": u.group, "speaker": u.speaker or "",
            "session": u.session or "", "dialog": u.dialog or "", "gender": u.gender or "",
            "start": _fmt_float(u.start), "end": _fmt_float(u.end),
            "wav": _fmt_path(u.wav, data_dir), "avi": _fmt_path(u.avi, data_dir), "side": u.side or "",
            "transcript": u.transcript or "", "transcript_asr": u.transcript_asr or "",
            "crop_x": "" if box[0] is None else str(box[0]), "crop_y": "" if box[1] is None else str(box[1]),
            "crop_w": "" if box[2] is None else str(box[2]), "crop_h": "" if box[3] is None else str(box[3]),
            "crop_mode": u.crop_mode, "raw_label": u.raw_label or "",
        }
        row.update({META_PREFIX + k: u.meta.get(k, "") for k in meta_keys})
        w.writerow([row[c] for c in cols])
    return buf.getvalue()


def write_utterances(data_dir: str | os.PathLike, utterances: Sequence[Utterance]) -> Path:
    """Write ``DATA_DIR/utterances.csv`` atomically (used by ``prepare`` and ``giamic transcribe``).

    Rewriting with ``dataclasses.replace(u, transcript_asr=text)`` is how a second text source is
    stored (the ASR transcripts of ``giamic transcribe``). Folds and ``dataset.json`` are not touched.
    """
    data_dir = Path(data_dir)
    ids = [u.utt_id for u in utterances]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        raise DataError(f"duplicate utt_id(s) {dup[:5]}", data_dir / UTTERANCES_CSV)
    path = data_dir / UTTERANCES_CSV
    write_text_atomic(path, utterances_to_csv_text(utterances, data_dir))
    return path


def set_asr_transcripts(data_dir: str | os.PathLike, texts: Mapping[str, str], source: str = "", require_all: bool = True) -> int:
    """Fill ``transcript_asr`` of a prepared dataset from ``{utt_id: text}``; returns the count filled.

    ``require_all`` makes a missing utterance an error naming it (no silent gaps in the second text
    source); ids not in the dataset are an error too. ``source`` is recorded in ``dataset.json``.
    """
    ds = load_dataset(data_dir)
    unknown = sorted(set(texts) - set(ds.by_id))
    if unknown:
        raise DataError(f"{len(unknown)} ASR transcript id(s) not in the dataset, e.g. {unknown[:5]}", Path(data_dir) / UTTERANCES_CSV)
    missing = [u.utt_id for u in ds.utterances if u.utt_id not in texts]
    if missing and require_all:
        raise DataError(f"no ASR transcript for {len(missing)} utterance(s), e.g. {missing[:5]}", Path(data_dir) / UTTERANCES_CSV)
    new = [replace(u, transcript_asr=texts[u.utt_id]) if u.utt_id in texts else u for u in ds.utterances]
    write_utterances(data_dir, new)
    meta_path = Path(data_dir) / DATASET_JSON
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["asr_source"] = source
    write_json_atomic(meta_path, meta)
    return sum(1 for u in ds.utterances if u.utt_id in texts)


def dataset_counts(utterances: Sequence[Utterance], classes: Sequence[str]) -> dict[str, Any]:
    """Counts stored in ``dataset.json``: total, per class, per group, per group × class."""
    by_group: dict[str, dict[str, int]] = {}
    for u in utterances:
        by_group.setdefault(u.group, {c: 0 for c in classes})[u.label] += 1
    return {
        "total": len(utterances),
        "by_class": {c: sum(1 for u in utterances if u.label == c) for c in classes},
        "by_group": {g: sum(v.values()) for g, v in sorted(by_group.items())},
        "by_group_class": dict(sorted(by_group.items())),
    }


def write_dataset(
    data_dir: str | os.PathLike,
    *,
    name: str,
    classes: Sequence[str],
    utterances: Sequence[Utterance],
    folds: Sequence[Fold],
    fold_scheme: str,
    source: str,
    skipped: Sequence[dict] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the three files of a prepared dataset directory (docs/architecture.md), each atomically."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    bad = sorted({u.label for u in utterances} - set(classes))
    if bad:
        raise DataError(f"labels {bad} are not in the classes {list(classes)}", data_dir / UTTERANCES_CSV)
    write_utterances(data_dir, utterances)
    meta: dict[str, Any] = {
        "name": name,
        "classes": list(classes),
        "fold_scheme": fold_scheme,
        "source": source,
        "counts": dataset_counts(utterances, classes),
        "skipped": list(skipped),
        "format_version": FORMAT_VERSION,
    }
    if extra:
        meta.update(extra)
    write_json_atomic(data_dir / FOLDS_JSON, [f.to_json() for f in folds])
    write_json_atomic(data_dir / DATASET_JSON, meta)
    return data_dir


# --------------------------------------------------------------------------- reading


def _parse_float(value: str, col: str, path: Path, line: int) -> float | None:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(f"column {col!r}: {value!r} is not a number", path, line, kind="malformed_row") from None


def _resolve(value: str, data_dir: Path) -> Path | None:
    if value == "":
        return None
    p = Path(value)
    return p if p.is_absolute() else (data_dir / p).resolve()


def read_utterances(data_dir: str | os.PathLike) -> list[Utterance]:
    """Parse ``DATA_DIR/utterances.csv``; errors name the file and line."""
    data_dir = Path(data_dir).resolve()
    path = data_dir / UTTERANCES_CSV
    if not path.is_file():
        raise DataError("not found (run `giamic prepare` first)", path, kind="missing_file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 ({e.reason})", path, line, kind="encoding") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"header lacks column(s) {missing}", path, 1, kind="malformed_row")
    meta_cols = [c for c in header if c.startswith(META_PREFIX)]
    out: list[Utterance] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        g = lambda c: (row.get(c) or "").strip()  # noqa: E731 - a local accessor keeps the table below readable
        uid = g("utt_id")
        if not uid:
            raise DataError("empty utt_id", path, line, kind="malformed_row")
        if uid in seen:
            raise DataError(f"duplicate utt_id {uid!r} (first on line {seen[uid]})", path, line, kind="malformed_row")
        seen[uid] = line
        if not g("label") or not g("group"):
            raise DataError("empty label or group", path, line, kind="malformed_row", utt_id=uid)
        box_vals = [g(c) for c in ("crop_x", "crop_y", "crop_w", "crop_h")]
        box = None
        if any(box_vals):
            try:
                box = tuple(int(float(v)) for v in box_vals)
            except ValueError:
                raise DataError(f"crop box {box_vals} is not four numbers", path, line, kind="malformed_row", utt_id=uid) from None
        side = g("side") or None
        if side not in (None, "L", "R"):
            raise DataError(f"side must be L, R or empty, got {side!r}", path, line, kind="malformed_row", utt_id=uid)
        start, end = _parse_float(g("start"), "start", path, line), _parse_float(g("end"), "end", path, line)
        if start is not None and end is not None and not end > start:
            raise DataError(f"end {end} is not after start {start}", path, line, kind="malformed_row", utt_id=uid)
        out.append(
            Utterance(
                utt_id=uid, label=g("label"), group=g("group"), speaker=g("speaker") or None,
                session=g("session") or None, dialog=g("dialog") or None, gender=g("gender") or None,
                start=start, end=end, wav=_resolve(g("wav"), data_dir), avi=_resolve(g("avi"), data_dir),
                side=side, transcript=(row.get("transcript") or None),
                transcript_asr=(row.get("transcript_asr") or None), crop_box=box,  # type: ignore[arg-type]
                crop_mode=g("crop_mode") or "fixed_window", raw_label=g("raw_label") or None,
                meta={c[len(META_PREFIX):]: row.get(c) or "" for c in meta_cols},
            )
        )
    return out


def load_dataset(data_dir: str | os.PathLike) -> Dataset:
    """Load a prepared dataset directory (docs/architecture.md) and check it is consistent.

    Checks: every label is a class; every fold id is a known utterance; train and test of a fold
    are disjoint (no test utterance leaks into training). Errors name the offending file.
    """
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        what = "not a directory" if data_dir.exists() else "no such directory"
        raise DataError(f"{what}; give a dataset directory written by `giamic prepare`", data_dir, kind="missing_file")
    if not (data_dir / UTTERANCES_CSV).is_file():
        raise DataError(f"not a prepared dataset (no {UTTERANCES_CSV}); run `giamic prepare` first", data_dir,
                        kind="missing_file")
    utts = read_utterances(data_dir)
    meta_path = data_dir / DATASET_JSON
    if not meta_path.is_file():
        raise DataError("not found (run `giamic prepare` first)", meta_path, kind="missing_file")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({e})", meta_path, kind="malformed_file") from None
    classes = list(meta.get("classes") or [])
    if not classes:
        raise DataError("no 'classes' list", meta_path, kind="malformed_file")
    bad = sorted({u.label for u in utts} - set(classes))
    if bad:
        raise DataError(f"labels {bad} are not in the classes {classes} of {meta_path.name}", data_dir / UTTERANCES_CSV)
    folds_path = data_dir / FOLDS_JSON
    folds: list[Fold] = []
    if folds_path.is_file():
        try:
            raw = json.loads(folds_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"not valid JSON ({e})", folds_path, kind="malformed_file") from None
        ids = {u.utt_id for u in utts}
        for f in raw:
            fold = Fold(name=f["name"], test_group=f["test_group"], train=list(f["train"]), test=list(f["test"]))
            unknown = (set(fold.train) | set(fold.test)) - ids
            if unknown:
                raise DataError(f"fold {fold.name} names unknown utterances, e.g. {sorted(unknown)[:3]}", folds_path)
            if set(fold.train) & set(fold.test):
                raise DataError(f"fold {fold.name}: train and test overlap", folds_path)
            folds.append(fold)
    return Dataset(
        root=data_dir, name=str(meta.get("name", data_dir.name)), classes=classes, utterances=utts, folds=folds,
        fold_scheme=str(meta.get("fold_scheme", "")), source=str(meta.get("source", "")),
        counts=dict(meta.get("counts") or {}), skipped=list(meta.get("skipped") or []), meta=meta,
    )
