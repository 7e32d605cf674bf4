"""IEMOCAP reader and protocol (docs/data.md; the choices are in docs/decisions.md).

Reads an ``IEMOCAP_full_release`` tree as distributed: ``SessionN/dialog/EmoEvaluation/*.txt``
(top level only: per-annotator subfolders and ``._`` resource forks are ignored),
``SessionN/dialog/transcriptions/*.txt``, per-utterance wavs under ``SessionN/sentences/wav`` and
dialog videos under ``SessionN/dialog/avi/DivX``. Writes the prepared dataset of
``docs/architecture.md`` with five leave-one-session-out folds, and checks the full-corpus
counts (5,531 utterances; per class and per session, docs/data.md).
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from giamic.data.dataset import Utterance, folds_leave_one_group_out, write_dataset
from giamic.data.errors import DataError, MediaError, SkipPolicy, SkipReport
from giamic.data.manifest import PrepareResult, check_utterance_media, log_notes, log_skips
from giamic.data.textfiles import read_id_text_file, read_lines
from giamic.data.video import VideoInfo

log = logging.getLogger(__name__)

# The paper's four classes: class index = position; exc is merged into hap.
CLASSES = ["neu", "ang", "hap", "sad"]
LABEL_MAP = {"neu": "neu", "ang": "ang", "hap": "hap", "exc": "hap", "sad": "sad"}
# Every label IEMOCAP's EmoEvaluation utterance lines use; others are malformed lines.
KNOWN_LABELS = frozenset({"neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx"})


@dataclass(frozen=True)
class ExpectedCounts:
    """A count table to assert: total, per class, per session."""

    total: int
    by_class: Mapping[str, int]
    by_session: Mapping[str, int]
    name: str = "the expected table"


# The full release, 4 classes (verified totals). Only these are asserted; the per-session × class
# breakdown is printed, not checked (the figures quoted for it are not independently verified).
FULL_CORPUS_COUNTS = ExpectedCounts(
    total=5531,
    by_class={"neu": 1708, "ang": 1103, "hap": 1636, "sad": 1084},
    by_session={"Ses01": 1085, "Ses02": 1023, "Ses03": 1151, "Ses04": 1031, "Ses05": 1241},
    name="the full IEMOCAP release",
)

# A generated corpus (``giamic make-corpus``) records its own counts here, at its root; a real
# release has no such file and is checked against FULL_CORPUS_COUNTS.
EXPECTED_COUNTS_FILE = "expected_counts.json"

log = logging.getLogger(__name__)


def corpus_expected_counts(root: str | os.PathLike) -> ExpectedCounts | None:
    """The count table a corpus records about itself (``ROOT/expected_counts.json``), or ``None``.

    Looked for in ``root`` and, like the sessions, in ``root/IEMOCAP_full_release``.
    """
    root = Path(root)
    for base in (root, root / "IEMOCAP_full_release"):
        path = base / EXPECTED_COUNTS_FILE
        if path.is_file():
            counts = load_expected_counts(path)
            log.info("checking the counts recorded in %s (%s)", path, counts.name)
            return counts
    return None


def load_expected_counts(path: str | os.PathLike) -> ExpectedCounts:
    """Read an expected-count table (``{"total", "by_class", "by_session"}``) from a JSON file."""
    import json

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        return ExpectedCounts(int(obj["total"]), dict(obj["by_class"]), dict(obj["by_session"]),
                              name=str(obj.get("name", path)))
    except FileNotFoundError:
        raise DataError("file not found", path, kind="missing_file") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"not an expected-count table ({e!r}); need total, by_class, by_session", path,
                        kind="malformed_file") from None


# Utterance ID grammar: Ses{SS}{G}_{impro|script}{NN}{suffix?}[_{part}]_{g}{III}
# (G: the actor wearing the markers in that recording; g: the speaker of the utterance).
UTT_ID_RE = re.compile(r"^Ses(0[1-5])([FM])_(impro|script)(\d{2})([a-z]?)(?:_(\d+[a-z]?))?_([FM])(\d{3})$")
DIALOG_ID_RE = re.compile(r"^Ses(0[1-5])([FM])_(impro|script)(\d{2})([a-z]?)(?:_(\d+[a-z]?))?$")
# [START - END]<TAB>ID<TAB>LABEL<TAB>[V, A, D]; times accept a missing fraction (the release has four
# decimals).
EMO_LINE_RE = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t\[(.+)\]\s*$")
TRANSCRIPT_RE = re.compile(r"^(Ses\S+) \[(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\]: ?(.*)$")
_ANY_ID_RE = re.compile(r"Ses0[1-5][FM]_\S+?_[FM]\d{3}\b")


@dataclass(frozen=True)
class UttId:
    """The parts of an IEMOCAP utterance ID such as ``Ses01F_impro01_F000`` (see ``UTT_ID_RE``)."""

    utt_id: str
    session: str  # "Ses01"
    marker: str  # G: gender letter of the actor wearing the markers in this recording
    kind: str  # "impro" | "script"
    scenario: str  # NN
    suffix: str  # "", "a", "b"
    part: str | None  # scripted dialogs: part index
    gender: str  # g: gender letter of this utterance's speaker
    index: str  # III

    @property
    def dialog(self) -> str:
        return self.utt_id.rsplit("_", 1)[0]

    @property
    def speaker(self) -> str:
        """Session plus the speaker's gender letter, e.g. ``Ses01_F`` (10 speakers).

        Taken from the last part of the ID, not the dialog prefix: the prefix names the marker
        wearer, who is the speaker of only about half of a dialog's utterances.
        """
        return f"{self.session}_{self.gender}"

    @property
    def side(self) -> str:
        """Video half showing the speaker: the marker wearer is on the left (docs/decisions.md)."""
        return "L" if self.gender == self.marker else "R"


def parse_utt_id(utt_id: str) -> UttId | None:
    """Parse an utterance ID; ``None`` when it does not follow the grammar of ``UTT_ID_RE``."""
    m = UTT_ID_RE.match(utt_id)
    if not m:
        return None
    ss, g_mark, kind, nn, suffix, part, g, idx = m.groups()
    return UttId(utt_id, f"Ses{ss}", g_mark, kind, nn, suffix, part, g, idx)


def speaker_side(utt_id: str) -> str:
    """``"L"`` or ``"R"`` for an utterance ID (marker wearer left: FF→L, FM→R, MM→L, MF→R)."""
    p = parse_utt_id(utt_id)
    if p is None:
        raise DataError(f"{utt_id!r} is not an IEMOCAP utterance ID", kind="malformed_id")
    return p.side


@dataclass(frozen=True)
class EmoEntry:
    """One utterance line of an EmoEvaluation file."""

    utt_id: str
    label: str
    start: float
    end: float
    vad: tuple[float, ...]
    path: Path
    line: int


def parse_emo_evaluation(path: str | os.PathLike, report: SkipReport, encoding: str = "utf-8") -> list[EmoEntry]:
    """Parse one ``EmoEvaluation/<dialog>.txt``.

    Accepted lines: the ``%`` header, blank lines, utterance lines (``[START - END]<TAB>ID<TAB>
    LABEL<TAB>[V, A, D]``) and annotator lines (``C-…``, ``A-…``). Anything else, an utterance
    line that does not parse, an ID of another dialog, an unknown label, ``end <= start`` or a
    repeated ID is a malformed line: an error naming the file and line, or a counted skip.
    """
    path = Path(path)
    dialog = path.stem
    out: list[EmoEntry] = []
    seen: dict[str, int] = {}
    for ln in read_lines(path, encoding):
        text = ln.text.strip()
        if not text or text.startswith("%"):
            if ln.error:
                report.handle(ln.error)
            continue
        if text.startswith(("C-", "A-")):
            if ln.error:
                report.handle(ln.error)
            continue
        guess = _ANY_ID_RE.search(text)
        guessed_id = guess.group(0) if guess else None
        if ln.error:
            report.handle(ln.error, utt_id=guessed_id)
            continue
        if not text.startswith("["):
            report.handle(
                DataError(f"unexpected line {text[:60]!r} (not a header, utterance or annotator line)",
                          path, ln.number, kind="malformed_line"),
                utt_id=guessed_id,
            )
            continue
        m = EMO_LINE_RE.match(ln.text.rstrip("\r\n"))
        problem = None
        if not m:
            problem = "malformed utterance line: expected '[START - END]<TAB>UTT_ID<TAB>LABEL<TAB>[V, A, D]'"
        else:
            start, end, uid, label, vad_text = m.groups()
            pid = parse_utt_id(uid)
            try:
                vad = tuple(float(v) for v in vad_text.split(","))
            except ValueError:
                vad = ()
            if pid is None:
                problem = f"utterance ID {uid!r} does not follow the IEMOCAP ID grammar"
            elif pid.dialog != dialog:
                problem = f"utterance {uid!r} belongs to dialog {pid.dialog!r}, not {dialog!r}"
            elif label not in KNOWN_LABELS:
                problem = f"unknown label {label!r} (expected one of {sorted(KNOWN_LABELS)})"
            elif not float(end) > float(start):
                problem = f"end {end} is not after start {start}"
            elif len(vad) != 3:
                problem = f"dimensional ratings [{vad_text}] are not three numbers"
            elif uid in seen:
                problem = f"utterance {uid!r} listed twice (first on line {seen[uid]})"
        if problem:
            report.handle(DataError(problem, path, ln.number, kind="malformed_line"), utt_id=guessed_id)
            continue
        seen[uid] = ln.number
        out.append(EmoEntry(uid, label, float(start), float(end), vad, path, ln.number))
    return out


@dataclass
class TranscriptFile:
    """Parsed ``transcriptions/<dialog>.txt``: text per ID plus the lines that could not be used."""

    path: Path
    texts: dict[str, tuple[str, int]] = field(default_factory=dict)
    bad: dict[str, DataError] = field(default_factory=dict)


def parse_transcriptions(path: str | os.PathLike, encoding: str = "utf-8") -> TranscriptFile:
    """Parse one transcription file (lines ``UTT_ID [SSS.ssss-EEE.eeee]: text``).

    Lines without an ID (or with IDs of non-evaluated segments) are not utterances and are
    ignored; EmoEvaluation decides which utterances exist. A line that starts with an ID but does
    not parse, or is not valid text, is kept as the reason in case that ID is needed.
    """
    path = Path(path)
    tf = TranscriptFile(path)
    for ln in read_lines(path, encoding):
        first = ln.text.split(" ", 1)[0].strip()
        if ln.error:
            tf.bad.setdefault(first, ln.error)
            continue
        m = TRANSCRIPT_RE.match(ln.text.strip())
        if not m:
            if first.startswith("Ses"):
                tf.bad.setdefault(first, DataError(
                    "malformed transcription line: expected 'UTT_ID [START-END]: text'", path, ln.number,
                    kind="malformed_transcript"))
            continue
        uid, _s, _e, text = m.groups()
        if uid in tf.texts:
            tf.bad.setdefault(uid, DataError(
                f"transcript of {uid} given twice (first on line {tf.texts[uid][1]})", path, ln.number,
                kind="malformed_transcript"))
            continue
        tf.texts[uid] = (text.strip(), ln.number)
    return tf


def find_sessions(root: str | os.PathLike) -> list[Path]:
    """``Session1`` … ``Session5`` folders under ``root`` (or under ``root/IEMOCAP_full_release``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("IEMOCAP root is not a folder", root, kind="missing_file")
    for base in (root, root / "IEMOCAP_full_release"):
        sessions = [base / f"Session{i}" for i in range(1, 6) if (base / f"Session{i}").is_dir()]
        if sessions:
            return sessions
    raise DataError("no Session1 … Session5 folders here (expected an IEMOCAP_full_release tree)", root, kind="missing_file")


def count_table(utterances: list[Utterance]) -> tuple[int, dict[str, int], dict[str, int], dict[str, dict[str, int]]]:
    """Total, per class, per session and per session × class counts of prepared utterances."""
    by_class = {c: 0 for c in CLASSES}
    by_session: dict[str, int] = {}
    grid: dict[str, dict[str, int]] = {}
    for u in utterances:
        by_class[u.label] = by_class.get(u.label, 0) + 1
        s = u.session or u.group
        by_session[s] = by_session.get(s, 0) + 1
        grid.setdefault(s, {c: 0 for c in CLASSES})[u.label] += 1
    return len(utterances), by_class, dict(sorted(by_session.items())), dict(sorted(grid.items()))


def count_differences(utterances: list[Utterance], expected: ExpectedCounts) -> list[str]:
    """Human-readable differences between the prepared counts and ``expected`` (empty = match)."""
    total, by_class, by_session, _ = count_table(utterances)
    diffs = []
    if total != expected.total:
        diffs.append(f"total: found {total}, expected {expected.total}")
    for c, n in expected.by_class.items():
        if by_class.get(c, 0) != n:
            diffs.append(f"class {c}: found {by_class.get(c, 0)}, expected {n}")
    for s, n in expected.by_session.items():
        if by_session.get(s, 0) != n:
            diffs.append(f"session {s}: found {by_session.get(s, 0)}, expected {n}")
    for s in sorted(set(by_session) - set(expected.by_session)):
        diffs.append(f"session {s}: found {by_session[s]}, expected none")
    return diffs


def check_counts(utterances: list[Utterance], expected: ExpectedCounts = FULL_CORPUS_COUNTS, n_skipped: int = 0) -> None:
    """Raise :class:`DataError` listing every count that differs from ``expected``."""
    diffs = count_differences(utterances, expected)
    if diffs:
        note = f" ({n_skipped} item(s) were skipped, see the list above)" if n_skipped else ""
        raise DataError(
            f"utterance counts differ from {expected.name}" + note + ":\n  "
            + "\n  ".join(diffs)
            + "\nA partial tree needs --partial.",
            kind="count_mismatch",
        )


def format_count_table(utterances: list[Utterance]) -> str:
    """The per-session × class table printed by ``giamic prepare``."""
    total, by_class, by_session, grid = count_table(utterances)
    head = f"{'session':<8}" + "".join(f"{c:>7}" for c in CLASSES) + f"{'total':>8}"
    rows = [head]
    for s, row in grid.items():
        rows.append(f"{s:<8}" + "".join(f"{row.get(c, 0):>7}" for c in CLASSES) + f"{by_session[s]:>8}")
    rows.append(f"{'all':<8}" + "".join(f"{by_class.get(c, 0):>7}" for c in CLASSES) + f"{total:>8}")
    return "\n".join(rows)


def prepare_iemocap(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    policy: SkipPolicy = SkipPolicy(),
    partial: bool = False,
    expected: ExpectedCounts | None = None,
    check_media: bool = True,
    strict_audio: bool = False,
    encoding: str = "utf-8",
    asr_transcripts: str | os.PathLike | None = None,
) -> PrepareResult:
    """Read an IEMOCAP tree and write the prepared dataset to ``out`` (docs/data.md).

    * Utterances: EmoEvaluation lines with labels neu/ang/hap/exc/sad, ``exc`` → ``hap`` (the
      paper's 5,531); all dialogs, improvised and scripted (the count needs both).
    * Speaker = session + the gender letter of the ID's last part; side by the marker rule.
    * Paths: ``SessionN/sentences/wav/<dialog>/<utt>.wav`` and ``SessionN/dialog/avi/DivX/<dialog>.avi``.
    * ``check_media``: every wav is opened (header) and every dialog video probed once; a
      missing/corrupt/empty file or a window starting past the video's end is an error or a skip.
      Wavs that are not 16 kHz mono are converted at load time and listed; ``strict_audio`` makes
      them errors instead.
    * Counts: unless ``partial``, the result must match ``expected``; by default the table the
      corpus records about itself (``expected_counts.json`` at its root, written by
      ``giamic make-corpus``) or, without one, the full release's.
    """
    if expected is None:
        expected = corpus_expected_counts(root) or FULL_CORPUS_COUNTS
    report = SkipReport(policy)
    notes: list[str] = []
    filtered: Counter[str] = Counter()
    sessions = find_sessions(root)
    asr = read_id_text_file(asr_transcripts, encoding) if asr_transcripts else None
    utterances: list[Utterance] = []
    video_cache: dict[Path, VideoInfo | MediaError] = {}
    for sess_dir in sessions:
        sess_num = int(sess_dir.name.removeprefix("Session"))
        session = f"Ses{sess_num:02d}"
        emo_dir = sess_dir / "dialog" / "EmoEvaluation"
        if not emo_dir.is_dir():
            raise DataError("missing dialog/EmoEvaluation folder", emo_dir.parent, kind="missing_file")
        # Top level only: per-annotator subfolders (Categorical/, Attribute/, ...) hold other formats.
        emo_files = sorted(p for p in emo_dir.glob("*.txt") if p.is_file() and not p.name.startswith("._"))
        transcripts: dict[str, TranscriptFile | DataError] = {}
        for emo_path in emo_files:
            dm = DIALOG_ID_RE.match(emo_path.stem)
            if not dm or f"Ses{dm.group(1)}" != session:
                notes.append(f"ignored {emo_path}: not a dialog of {session}")
                continue
            dialog = emo_path.stem
            for e in parse_emo_evaluation(emo_path, report, encoding):
                if e.label not in LABEL_MAP:
                    filtered[e.label] += 1
                    continue
                pid = parse_utt_id(e.utt_id)
                assert pid is not None  # parse_emo_evaluation only returns valid IDs
                u = _build_utterance(e, pid, sess_dir, dialog, session)
                # Ground-truth transcript: joined by ID.
                tf = transcripts.get(dialog)
                if tf is None:
                    tpath = sess_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
                    try:
                        tf = parse_transcriptions(tpath, encoding)
                    except DataError as err:
                        tf = DataError("transcription file not found", tpath, kind="missing_transcript") if err.kind == "missing_file" else err
                    transcripts[dialog] = tf
                try:
                    text = _transcript_for(tf, e.utt_id)
                    u = replace(u, transcript=text)
                    if asr is not None:
                        if e.utt_id not in asr:
                            raise DataError("no ASR transcript line", Path(asr_transcripts), kind="missing_transcript")  # type: ignore[arg-type]
                        u = replace(u, transcript_asr=asr[e.utt_id])
                    if check_media:
                        check_utterance_media(u, strict_audio, video_cache, notes)
                except DataError as err:
                    report.handle(err, utt_id=e.utt_id)
                    continue
                utterances.append(u)
    # A skip recorded while parsing EmoEvaluation may name an ID that later parsed fine elsewhere;
    # utterances named in any skip are left out so that each listed skip really is absent.
    skipped_ids = report.skipped_ids
    utterances = [u for u in utterances if u.utt_id not in skipped_ids]
    raw_labels: Counter[str] = Counter(u.raw_label for u in utterances)
    summary = [format_count_table(utterances),
               f"labels left out (not in the 4 classes): {dict(sorted(filtered.items()))}",
               f"happy = hap {raw_labels['hap']} + exc {raw_labels['exc']}"]
    log_notes(notes)
    log_skips(report)
    if partial:
        diffs = count_differences(utterances, expected)
        summary.append("partial tree: count check off"
                       + (f" ({len(diffs)} count(s) differ from {expected.name})" if diffs else ""))
    else:
        check_counts(utterances, expected, n_skipped=len(report.items))
        summary.append(f"counts match {expected.name}: {expected.total} utterances")
    if not utterances:
        raise DataError("no utterance left to write", Path(root), kind="empty_dataset")
    if len({u.group for u in utterances}) >= 2:
        folds = folds_leave_one_group_out(utterances)
    else:  # a one-session partial tree (only reachable with --partial): nothing to hold out
        folds = []
        log.info("note: one session only: no leave-one-session-out folds written")
    write_dataset(
        out, name="iemocap", classes=CLASSES, utterances=utterances, folds=folds,
        fold_scheme="leave_one_session_out", source=str(Path(root).resolve()), skipped=report.to_json(),
        extra={
            "partial": partial,
            "text_encoding": encoding,
            "asr_source": str(Path(asr_transcripts).resolve()) if asr_transcripts else "",
            "skipped_counts": report.counts(),
            "filtered_labels": dict(sorted(filtered.items())),
            "raw_label_counts": dict(sorted(raw_labels.items())),
            "notes": notes,
            "media_checked": check_media,
        },
    )
    return PrepareResult(Path(out), utterances, report, notes, dict(filtered), summary)


def _build_utterance(e: EmoEntry, pid: UttId, sess_dir: Path, dialog: str, session: str) -> Utterance:
    return Utterance(
        utt_id=e.utt_id, label=LABEL_MAP[e.label], group=session, speaker=pid.speaker, session=session,
        dialog=dialog, gender=pid.gender, start=e.start, end=e.end,
        wav=(sess_dir / "sentences" / "wav" / dialog / f"{e.utt_id}.wav").resolve(),
        avi=(sess_dir / "dialog" / "avi" / "DivX" / f"{dialog}.avi").resolve(),
        side=pid.side, raw_label=e.label,
    )


def _transcript_for(tf: TranscriptFile | DataError, utt_id: str) -> str:
    if isinstance(tf, DataError):
        raise DataError(tf.message, tf.path, tf.line, kind=tf.kind, utt_id=utt_id)
    if utt_id in tf.bad:
        err = tf.bad[utt_id]
        raise DataError(err.message, err.path, err.line, kind=err.kind, utt_id=utt_id)
    if utt_id not in tf.texts:
        raise DataError(f"no transcription line for {utt_id}", tf.path, kind="missing_transcript", utt_id=utt_id)
    return tf.texts[utt_id][0]


