"""Any corpus through a manifest (docs/data.md; the prepared dataset of docs/architecture.md).

A manifest is a CSV (header row) or JSONL (one JSON object a line) file, one utterance a row:

=================  ========  ==========================================================
field              required  meaning
=================  ========  ==========================================================
id                 yes       unique utterance id (``utt_id`` accepted too)
label              yes       class name
group              yes       fold key (session, speaker, actor, ...)
speaker            no        speaker id (default: the group)
audio              no        audio file (wav/flac/ogg; any rate and channel count)
video              no        video file; ``start``/``end`` seconds on its timeline
start, end         no        default 0 and the end of the video
side               no        ``L`` / ``R``: which half of the frame shows the speaker
crop               no        ``x,y,w,h`` pixel box (or ``crop_x`` … ``crop_h`` columns)
crop_mode          no        ``half`` (default with a side), ``fixed_window``, ``full``
transcript         no        ground-truth text
transcript_asr     no        second text source (ASR)
session, dialog,   no        copied through
gender
=================  ========  ==========================================================

Relative paths are relative to the manifest's folder. Rows without any media are allowed (for
users who bring precomputed features, see ``docs/features.md``).

Forgiving where nothing is lost: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is ignored; header
names are matched without regard to case and surrounding spaces; other columns are kept as
metadata (``Utterance.meta``, ``meta.<name>`` columns of ``utterances.csv``) and listed once in a
warning; labels are lower-cased and stripped (the original spelling stays in ``raw_label``) and a
class with fewer than :data:`MIN_CLASS_EXAMPLES` utterances is named in a warning; the ``audio``
column may name a video or other container, whose first audio track is used.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from giamic.data.audio import audio_info
from giamic.data.dataset import Utterance, folds_grouped_kfold, folds_leave_one_group_out, write_dataset
from giamic.data.errors import DataError, MediaError, SkipPolicy, SkipReport
from giamic.data.textfiles import read_id_text_file, read_lines

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    """What :func:`prepare_manifest` and :func:`giamic.data.iemocap.prepare_iemocap` produced.

    ``summary`` holds the lines ``giamic prepare`` prints on stdout (the count table and the
    count check); notes and skips go to the log as they are found.
    """

    out: Path
    utterances: list[Utterance]
    report: SkipReport
    notes: list[str]
    filtered_labels: dict[str, int] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)

    def summary_text(self) -> str:
        return "\n".join(self.summary)
from giamic.data.video import CropSpec, VideoInfo, probe_video

MANIFEST_FIELDS = (
    "id", "utt_id", "label", "group", "speaker", "audio", "video", "start", "end", "side", "crop",
    "crop_x", "crop_y", "crop_w", "crop_h", "crop_mode", "transcript", "transcript_asr", "session",
    "dialog", "gender",
)
MIN_CLASS_EXAMPLES = 5  # fewer utterances than this in a class: a warning (a typo in a label?)

log = logging.getLogger(__name__)


def read_manifest_rows(path: str | os.PathLike, encoding: str = "utf-8") -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` pairs of a CSV or JSONL manifest (by suffix: ``.jsonl``/``.json`` = JSONL)."""
    path = Path(path)
    lines = read_lines(path, encoding)
    for ln in lines:
        if ln.error:
            raise ln.error
    if lines and lines[0].text.startswith("\ufeff"):  # a UTF-8 byte-order mark (Excel's "CSV UTF-8")
        lines[0] = replace(lines[0], text=lines[0].text[1:])
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for ln in lines:
            if not ln.text.strip():
                continue
            try:
                obj = json.loads(ln.text)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", path, ln.number, kind="malformed_row") from None
            if not isinstance(obj, dict):
                raise DataError("each line must be a JSON object", path, ln.number, kind="malformed_row")
            rows.append((ln.number, _canonical_keys(obj, path, ln.number)))
        return rows
    reader = csv.DictReader(io.StringIO("\n".join(ln.text for ln in lines) + "\n", newline=""))
    if not reader.fieldnames:
        raise DataError("empty manifest (no header row)", path, 1, kind="malformed_row")
    for row in reader:
        if None in row:
            raise DataError(f"more cells than header columns ({row[None]!r})", path, reader.line_num, kind="malformed_row")
        rows.append((reader.line_num, _canonical_keys({k: v for k, v in row.items() if k is not None}, path,
                                                      reader.line_num)))
    return rows


def _canonical_keys(row: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    """Known field names matched without regard to case and surrounding spaces; other names stripped."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = str(key).strip()
        name = name.lower() if name.lower() in MANIFEST_FIELDS else name
        if name in out:
            raise DataError(f"column {name!r} given twice", path, line, kind="malformed_row")
        out[name] = value
    return out


def _meta_value(v: Any) -> str:
    """A metadata cell as text: strings as given, other JSON values in JSON notation."""
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def extra_columns(rows: Sequence[tuple[int, dict[str, Any]]]) -> list[str]:
    """Names of the non-giamic columns of manifest rows, in order of first appearance."""
    return list(dict.fromkeys(k for _, row in rows for k in row if k and k not in MANIFEST_FIELDS))


def _s(v: Any) -> str:
    return "" if v is None else str(v).strip()


def _float(v: Any, col: str, path: Path, line: int) -> float | None:
    s = _s(v)
    if not s:
        return None
    try:
        return float(s)
    except ValueError:
        raise DataError(f"{col} {s!r} is not a number", path, line, kind="malformed_row") from None


def parse_manifest_row(row: dict[str, Any], path: Path, line: int) -> Utterance:
    """One manifest row to an :class:`Utterance` (no media checks); :class:`DataError` names the line."""
    uid = _s(row.get("id")) or _s(row.get("utt_id"))
    if not uid:
        raise DataError("missing id", path, line, kind="malformed_row")
    meta = {}
    for k, v in row.items():
        if k in MANIFEST_FIELDS or (not k and not _meta_value(v)):
            continue
        if not k:
            raise DataError(f"a value ({v!r}) under a column without a name", path, line, kind="malformed_row",
                            utt_id=uid)
        meta[k] = _meta_value(v)
    raw_label, group = _s(row.get("label")), _s(row.get("group"))
    label = raw_label.lower()  # "Hap", " hap" and "hap" are one class
    if not label:
        raise DataError("missing label", path, line, kind="malformed_row", utt_id=uid)
    if not group:
        raise DataError("missing group (the fold key)", path, line, kind="malformed_row", utt_id=uid)
    base = path.parent

    def media(key: str) -> Path | None:
        s = _s(row.get(key))
        if not s:
            return None
        p = Path(s).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    wav, avi = media("audio"), media("video")
    start, end = _float(row.get("start"), "start", path, line), _float(row.get("end"), "end", path, line)
    side = _s(row.get("side")).upper() or None
    if side not in (None, "L", "R"):
        raise DataError(f"side must be L, R or empty, got {side!r}", path, line, kind="malformed_row", utt_id=uid)
    box = None
    crop = row.get("crop")
    vals: list[Any]
    if isinstance(crop, (list, tuple)):
        vals = list(crop)
    elif _s(crop):
        vals = _s(crop).replace(";", ",").split(",")
    else:
        vals = [row.get(c) for c in ("crop_x", "crop_y", "crop_w", "crop_h")]
        vals = vals if any(_s(v) for v in vals) else []
    if vals:
        try:
            box = tuple(int(float(_s(v))) for v in vals)
        except ValueError:
            box = ()
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
            raise DataError(f"crop must be x,y,w,h with w,h > 0, got {vals!r}", path, line, kind="malformed_row", utt_id=uid)
    crop_mode = _s(row.get("crop_mode")) or ("half" if side else "full")
    try:
        CropSpec(side=side, box=box, mode=crop_mode)  # type: ignore[arg-type]
    except ValueError as e:
        raise DataError(str(e), path, line, kind="malformed_row", utt_id=uid) from None
    if avi is None and (start is not None or end is not None or side or box):
        raise DataError("start/end/side/crop given without a video", path, line, kind="malformed_row", utt_id=uid)
    if avi is not None:
        start = 0.0 if start is None else start
        if start < 0 or (end is not None and not end > start):
            raise DataError(f"bad window start={start} end={end}", path, line, kind="malformed_row", utt_id=uid)
        if wav == avi and start > 0:
            raise DataError(f"the audio column names the video file, whose audio is read from its beginning, but "
                            f"the window starts at {start:g} s; give the utterance's own audio file, or a window "
                            "starting at 0", path, line, kind="malformed_row", utt_id=uid)
    return Utterance(
        utt_id=uid, label=label, group=group, speaker=_s(row.get("speaker")) or group,
        session=_s(row.get("session")) or None, dialog=_s(row.get("dialog")) or None,
        gender=_s(row.get("gender")) or None, start=start, end=end, wav=wav, avi=avi, side=side,
        transcript=_s(row.get("transcript")) or None, transcript_asr=_s(row.get("transcript_asr")) or None,
        crop_box=box, crop_mode=crop_mode,  # type: ignore[arg-type]
        raw_label=raw_label if raw_label != label else None, meta=meta,
    )


def prepare_manifest(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    folds: str = "logo",
    k: int = 5,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    policy: SkipPolicy = SkipPolicy(),
    check_media: bool = True,
    strict_audio: bool = False,
    name: str | None = None,
    asr_transcripts: str | os.PathLike | None = None,
    encoding: str = "utf-8",
) -> PrepareResult:
    """Read a manifest and write the prepared dataset to ``out`` (docs/architecture.md).

    ``folds="logo"``: one fold per group; ``folds="kfold"``: grouped ``k``-fold, deterministic in
    ``seed``. ``classes`` fixes the class order (a label outside it is an error); by default the
    sorted set of labels. Media checks as for IEMOCAP: missing/corrupt/empty files and windows
    starting past the video's end are errors or, under the skip policy, counted skips.

    Labels and ``classes`` are compared lower-cased and stripped. Columns that are not manifest
    fields are kept as metadata and named once in a warning; a class with fewer than
    :data:`MIN_CLASS_EXAMPLES` utterances is named in a warning (both recorded in ``dataset.json``
    as ``meta_columns`` and ``small_classes``).
    """
    path = Path(manifest).resolve()
    if classes is not None:
        classes = [c.strip().lower() for c in classes]
        dup = sorted(c for c, n in Counter(classes).items() if n > 1)
        if dup:
            raise DataError(f"--classes names {dup} more than once (labels are compared lower-cased)", path,
                            kind="malformed_row")
    report = SkipReport(policy)
    notes: list[str] = []
    asr = read_id_text_file(asr_transcripts, encoding) if asr_transcripts else None
    utts: list[Utterance] = []
    seen: dict[str, int] = {}
    video_cache: dict[Path, VideoInfo | MediaError] = {}
    rows = read_manifest_rows(path, encoding)
    meta_columns = extra_columns(rows)
    if meta_columns:
        _warn_extra_columns(path, meta_columns)
    for line, row in rows:
        try:
            u = parse_manifest_row(row, path, line)
            if u.utt_id in seen:
                raise DataError(f"duplicate id {u.utt_id!r} (first on line {seen[u.utt_id]})", path, line, kind="malformed_row")
            seen[u.utt_id] = line
            if classes is not None and u.label not in classes:
                raise DataError(f"label {u.label!r} is not one of --classes {list(classes)}", path, line,
                                kind="unknown_label", utt_id=u.utt_id)
            if asr is not None:
                if u.utt_id not in asr:
                    raise DataError("no ASR transcript line", Path(asr_transcripts), kind="missing_transcript")  # type: ignore[arg-type]
                u = replace(u, transcript_asr=asr[u.utt_id])
            if check_media:
                u = check_utterance_media(u, strict_audio, video_cache, notes)
            elif u.avi is not None and u.end is None:
                raise DataError("end is required when media checks are off", path, line, kind="malformed_row", utt_id=u.utt_id)
        except DataError as err:
            report.handle(err, utt_id=err.utt_id or _s(row.get("id")) or _s(row.get("utt_id")) or None)
            continue
        utts.append(u)
    if not utts:
        raise DataError("no utterance left to write", path, kind="empty_dataset")
    cls = list(classes) if classes is not None else sorted({u.label for u in utts})
    small_classes = _warn_small_classes(path, utts, cls)
    if folds == "logo":
        fold_list = folds_leave_one_group_out(utts)
        scheme = "leave_one_group_out"
    elif folds == "kfold":
        fold_list = folds_grouped_kfold(utts, k, seed)
        scheme = f"grouped_kfold(k={k},seed={seed})"
    else:
        raise ValueError(f"folds must be 'logo' or 'kfold', got {folds!r}")
    summary = count_lines(utts, cls)
    log_notes(notes)
    log_skips(report)
    write_dataset(
        out, name=name or path.stem, classes=cls, utterances=utts, folds=fold_list, fold_scheme=scheme,
        source=str(path), skipped=report.to_json(),
        extra={"skipped_counts": report.counts(), "notes": notes, "media_checked": check_media,
               "text_encoding": encoding,
               "asr_source": str(Path(asr_transcripts).resolve()) if asr_transcripts else "",
               "meta_columns": meta_columns, "small_classes": small_classes},
    )
    summary.append(f"wrote {len(utts)} utterances, {len(fold_list)} folds ({scheme}) to {out}")
    return PrepareResult(Path(out), utts, report, notes, summary=summary)


def _warn_extra_columns(path: Path, columns: list[str]) -> None:
    hints = []
    for c in columns:
        close = difflib.get_close_matches(c.lower(), MANIFEST_FIELDS, n=1, cutoff=0.8)
        if close:
            hints.append(f"{c!r} -> {close[0]!r}?")
    log.warning("%s: column(s) %s are not manifest fields; kept as metadata (meta.<name> columns of "
                "utterances.csv), not used%s", path, columns, f" (did you mean {', '.join(hints)})" if hints else "")


def _warn_small_classes(path: Path, utts: list[Utterance], classes: list[str]) -> dict[str, int]:
    """Warn about classes with fewer than :data:`MIN_CLASS_EXAMPLES` utterances; returns them with their counts."""
    counts = Counter(u.label for u in utts)
    small = {c: counts.get(c, 0) for c in classes if counts.get(c, 0) < MIN_CLASS_EXAMPLES}
    if small:
        parts = []
        for c, n in small.items():
            ids = [u.utt_id for u in utts if u.label == c][:3]
            parts.append(f"{c!r}: {n}" + (f" ({', '.join(ids)}{', ...' if n > 3 else ''})" if ids else ""))
        log.warning("%s: class(es) with fewer than %d utterances: %s; a typo in a label makes a class of its "
                    "own (fix the label, or give the class list with --classes)", path, MIN_CLASS_EXAMPLES,
                    "; ".join(parts))
    return small


def log_notes(notes: list[str], limit: int = 10) -> None:
    """Log the first ``limit`` notes and how many more there are (all of them go to dataset.json)."""
    for n in notes[:limit]:
        log.info("note: %s", n)
    if len(notes) > limit:
        log.info("note: ... and %d more (listed in dataset.json)", len(notes) - limit)


def log_skips(report: SkipReport) -> None:
    """Log the skipped items of a skip policy (they are also listed in dataset.json)."""
    if report.items:
        log.warning("%s", report.summary())


def count_lines(utts: list[Utterance], classes: list[str]) -> list[str]:
    """The per-group × class count table of a prepared manifest corpus."""
    groups = sorted({u.group for u in utts})
    w = max([5] + [len(g) for g in groups])
    lines = [f"{'group':<{w}}" + "".join(f"{c:>8}" for c in classes) + f"{'total':>8}"]
    for g in groups:
        row = [sum(1 for u in utts if u.group == g and u.label == c) for c in classes]
        lines.append(f"{g:<{w}}" + "".join(f"{n:>8}" for n in row) + f"{sum(row):>8}")
    lines.append(f"{'all':<{w}}" + "".join(f"{sum(1 for u in utts if u.label == c):>8}" for c in classes)
                 + f"{len(utts):>8}")
    return lines


def check_utterance_media(u: Utterance, strict_audio: bool, video_cache: dict, notes: list[str]) -> Utterance:
    """Check an utterance's media before it is written (IEMOCAP and manifest corpora alike).

    Audio that is not 16 kHz mono is a note (converted at load time) or, with ``strict_audio``, an
    error; a video that cannot be probed or a window starting past its end is an error; a window
    ending past the end is a note (the frames that exist are used). ``video_cache`` holds one probe
    per video file. Returns the utterance with a missing window end set to the video's end.
    """
    if u.wav is not None:
        info = audio_info(u.wav)
        if not info.is_standard:
            msg = f"{info.sample_rate} Hz, {info.channels} channel(s); expected 16000 Hz mono"
            if strict_audio:
                raise MediaError(msg + " (--strict-audio)", u.wav, kind="audio_format")
            notes.append(f"{u.wav}: {msg}; resampled/down-mixed at load time")
    if u.avi is not None:
        vi = video_cache.get(u.avi)
        if vi is None:
            try:
                vi = probe_video(u.avi)
            except MediaError as err:
                vi = err
            video_cache[u.avi] = vi
        if isinstance(vi, MediaError):
            raise MediaError(vi.message, vi.path, kind=vi.kind)
        start = u.start or 0.0
        if start >= vi.duration:
            end = f"{u.end:.4f}" if u.end is not None else "end"
            raise MediaError(f"window [{start:.4f}, {end}] of {u.utt_id} starts past the end of the video "
                             f"({vi.duration:.3f} s)", u.avi, kind="window_past_end")
        if u.end is None:
            u = replace(u, start=start, end=vi.duration)
        elif u.end > vi.duration + (1.0 / vi.fps if vi.fps else 0.0):
            notes.append(f"{u.utt_id}: window ends at {u.end:.4f}s, past the video end {vi.duration:.3f}s; "
                         "the frames that exist are used")
    return u
