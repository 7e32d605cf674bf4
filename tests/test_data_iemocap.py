"""IEMOCAP reader on hand-written mock trees (real file formats, counts we control; spec §4)."""
from __future__ import annotations

import json

import pytest

from giamic.data import DataError, SkipPolicy, load_dataset
from giamic.data.iemocap import (
    FULL_CORPUS_COUNTS,
    ExpectedCounts,
    check_counts,
    parse_utt_id,
    prepare_iemocap,
    speaker_side,
)

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"


def emo_block(start, end, uid, label):
    return (
        f"[{start:.4f} - {end:.4f}]\t{uid}\t{label}\t[2.5000, 3.0000, 3.5000]\n"
        f"C-E1:\tNeutral state;\t()\nC-E3:\tAnger;\t(annoyed)\n"
        f"A-E1:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 3; act 3; dom  3;\t()\n\n"
    )


def write_tree(root, dialogs, crlf=False, transcripts=None):
    """dialogs: {dialog_id: [(utt_id, label, start, end, text), ...]} -> a text-only IEMOCAP tree.

    Adds what the release has that a reader must skip: ``._`` resource forks, a per-annotator
    subfolder, non-evaluated transcription lines, a header line.
    """
    for dialog, rows in dialogs.items():
        sess = root / f"Session{int(dialog[3:5])}" / "dialog"
        emo = HEADER + "\n\n" + "".join(emo_block(s, e, u, lab) for u, lab, s, e, _ in rows)
        tr = "".join(f"{u} [{s:08.4f}-{e:08.4f}]: {t}\n" for u, _, s, e, t in rows if t is not None)
        tr += f"{dialog}_MXX0 [000.0000-000.5000]: [BREATHING]\n"
        if transcripts and dialog in transcripts:
            tr = transcripts[dialog]
        nl = "\r\n" if crlf else "\n"
        (sess / "EmoEvaluation" / "Categorical").mkdir(parents=True, exist_ok=True)
        (sess / "transcriptions").mkdir(parents=True, exist_ok=True)
        (sess / "EmoEvaluation" / f"{dialog}.txt").write_bytes(emo.replace("\n", nl).encode())
        (sess / "transcriptions" / f"{dialog}.txt").write_bytes(tr.replace("\n", nl).encode())
        (sess / "EmoEvaluation" / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07Mac OS X\xff\xfe")
        (sess / "transcriptions" / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07Mac OS X\xff\xfe")
        (sess / "EmoEvaluation" / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
            "".join(f"{u} :Anger; ()\n" for u, *_ in rows))


def standard_dialogs():
    """Two sessions; 9 utterances, 6 kept (neu, ang, hap, exc->hap, sad, sad), 3 filtered."""
    return {
        "Ses01F_impro01": [
            ("Ses01F_impro01_F000", "neu", 1.0, 2.5, "Excuse me."),
            ("Ses01F_impro01_M000", "ang", 3.0, 4.0, "Do you have your forms?"),
            ("Ses01F_impro01_M001", "xxx", 4.2, 5.0, "Yeah."),
            ("Ses01F_impro01_F001", "fru", 5.5, 6.0, "Let me see."),
        ],
        "Ses01M_script02_1": [
            ("Ses01M_script02_1_F000", "exc", 0.5, 1.9, "Look at this!"),
            ("Ses01M_script02_1_M000", "sad", 2.0, 3.3, "I miss her."),
        ],
        "Ses02M_impro05b": [
            ("Ses02M_impro05b_F010", "hap", 10.25, 12.0, "That's great."),
            ("Ses02M_impro05b_M011", "sad", 12.5, 13.0, "[LAUGHTER] no."),
            ("Ses02M_impro05b_M012", "oth", 13.5, 14.0, "Hm."),
        ],
    }


EXPECTED = ExpectedCounts(6, {"neu": 1, "ang": 1, "hap": 2, "sad": 2}, {"Ses01": 4, "Ses02": 2})


def prep(root, out, **kw):
    kw.setdefault("check_media", False)
    kw.setdefault("expected", EXPECTED)
    return prepare_iemocap(root, out, **kw)


def test_utt_id_grammar_speaker_and_side():
    p = parse_utt_id("Ses03M_impro08a_F012")
    assert (p.session, p.marker, p.kind, p.scenario, p.suffix, p.part, p.gender, p.index) == (
        "Ses03", "M", "impro", "08", "a", None, "F", "012")
    assert p.dialog == "Ses03M_impro08a"
    # The speaker comes from the last part (F), not the dialog prefix (M, the marker wearer).
    assert p.speaker == "Ses03_F" and p.side == "R"
    q = parse_utt_id("Ses01F_script02_1_F003")
    assert (q.part, q.dialog, q.side) == ("1", "Ses01F_script02_1", "L")
    assert [speaker_side(u) for u in ("Ses01F_impro01_F000", "Ses01F_impro01_M000",
                                      "Ses01M_impro01_M000", "Ses01M_impro01_F000")] == ["L", "R", "L", "R"]
    r = parse_utt_id("Ses05M_script01_1b_F003")  # the release's one part index with a letter
    assert (r.part, r.dialog, r.speaker, r.side) == ("1b", "Ses05M_script01_1b", "Ses05_F", "R")
    assert parse_utt_id("Ses01F_impro01_MXX0") is None and parse_utt_id("Ses06F_impro01_F000") is None


@pytest.mark.parametrize("crlf", [False, True])
def test_prepare_mock_tree(tmp_path, crlf):
    write_tree(tmp_path / "IEMOCAP_full_release", standard_dialogs(), crlf=crlf)
    res = prep(tmp_path, tmp_path / "out")  # the reader also finds IEMOCAP_full_release/ below the root
    ds = load_dataset(tmp_path / "out")
    assert ds.classes == ["neu", "ang", "hap", "sad"]
    assert [u.utt_id for u in ds.utterances] == [
        "Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01M_script02_1_F000", "Ses01M_script02_1_M000",
        "Ses02M_impro05b_F010", "Ses02M_impro05b_M011"]
    u = ds.by_id["Ses01M_script02_1_F000"]
    assert (u.label, u.raw_label, u.speaker, u.gender, u.side, u.dialog, u.group) == (
        "hap", "exc", "Ses01_F", "F", "R", "Ses01M_script02_1", "Ses01")
    assert (u.start, u.end, u.transcript) == (0.5, 1.9, "Look at this!")
    assert u.wav.as_posix().endswith("Session1/sentences/wav/Ses01M_script02_1/Ses01M_script02_1_F000.wav")
    assert u.avi.as_posix().endswith("Session1/dialog/avi/DivX/Ses01M_script02_1.avi")
    assert ds.by_id["Ses02M_impro05b_F010"].start == 10.25
    assert ds.by_id["Ses02M_impro05b_M011"].transcript == "[LAUGHTER] no."
    assert res.filtered_labels == {"xxx": 1, "fru": 1, "oth": 1}
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["counts"]["by_class"] == {"neu": 1, "ang": 1, "hap": 2, "sad": 2}
    assert meta["raw_label_counts"] == {"ang": 1, "exc": 1, "hap": 1, "neu": 1, "sad": 2}
    assert meta["skipped"] == [] and meta["fold_scheme"] == "leave_one_session_out"
    # Leave-one-session-out: fold i tests session i.
    assert [(f.name, f.test_group, len(f.train), len(f.test)) for f in ds.folds] == [
        ("fold1", "Ses01", 2, 4), ("fold2", "Ses02", 4, 2)]
    assert not set(ds.folds[0].train) & set(ds.folds[0].test)


def test_count_check_pass_and_mismatch_message(tmp_path):
    write_tree(tmp_path, standard_dialogs())
    wrong = ExpectedCounts(7, {"neu": 1, "ang": 2, "hap": 2, "sad": 2}, {"Ses01": 5, "Ses02": 2}, name="table X")
    with pytest.raises(DataError) as e:
        prep(tmp_path, tmp_path / "out", expected=wrong)
    msg = str(e.value)
    assert "differ from table X" in msg
    assert "total: found 6, expected 7" in msg and "class ang: found 1, expected 2" in msg
    assert "session Ses01: found 4, expected 5" in msg and "Ses02" not in msg and "class neu" not in msg
    assert "--partial" in msg
    assert not (tmp_path / "out" / "utterances.csv").exists()
    prep(tmp_path, tmp_path / "out", expected=wrong, partial=True)  # explicit flag: accepted
    assert len(load_dataset(tmp_path / "out")) == 6


def test_full_corpus_table_is_consistent():
    c = FULL_CORPUS_COUNTS
    assert c.total == 5531 == sum(c.by_class.values()) == sum(c.by_session.values())
    assert dict(c.by_class) == {"neu": 1708, "ang": 1103, "hap": 1636, "sad": 1084}


def test_default_expected_is_full_corpus(tmp_path):
    write_tree(tmp_path, standard_dialogs())
    with pytest.raises(DataError, match="total: found 6, expected 5531"):
        prepare_iemocap(tmp_path, tmp_path / "out", check_media=False)


def test_check_counts_function():
    from giamic.data import Utterance

    utts = [Utterance(f"u{i}", lab, "Ses01", session="Ses01") for i, lab in enumerate(["neu", "sad"])]
    check_counts(utts, ExpectedCounts(2, {"neu": 1, "sad": 1}, {"Ses01": 2}))
    with pytest.raises(DataError, match="class sad: found 1, expected 2"):
        check_counts(utts, ExpectedCounts(3, {"neu": 1, "sad": 2}, {"Ses01": 3}))


def test_malformed_emoevaluation_line(tmp_path):
    d = standard_dialogs()
    write_tree(tmp_path, d)
    p = tmp_path / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    text = p.read_text().replace("[3.0000 - 4.0000]\tSes01F_impro01_M000\tang", "[3.0000 - 4.0000] Ses01F_impro01_M000 ang")
    p.write_text(text)
    line = text.splitlines().index(next(ln for ln in text.splitlines() if "M000 ang" in ln)) + 1
    with pytest.raises(DataError, match=rf"Ses01F_impro01.txt:{line}: \[Ses01F_impro01_M000\] malformed utterance line"):
        prep(tmp_path, tmp_path / "out")
    res = prep(tmp_path, tmp_path / "out", policy=SkipPolicy("skip"), partial=True)
    assert [(i.utt_id, i.kind, i.line) for i in res.report.items] == [("Ses01F_impro01_M000", "malformed_line", line)]
    meta = json.loads((tmp_path / "out/dataset.json").read_text())
    assert meta["skipped"][0]["utt_id"] == "Ses01F_impro01_M000" and meta["skipped_counts"] == {"malformed_line": 1}
    assert "Ses01F_impro01_M000" not in load_dataset(tmp_path / "out").by_id


@pytest.mark.parametrize("bad,why", [
    ("[3.0000 - 4.0000]\tSes01F_impro01_M000\tangry\t[2.5, 3.0, 3.5]", "unknown label 'angry'"),
    ("[4.0000 - 3.0000]\tSes01F_impro01_M000\tang\t[2.5, 3.0, 3.5]", "end 3.0000 is not after start 4.0000"),
    ("[3.0000 - 4.0000]\tSes01F_impro02_M000\tang\t[2.5, 3.0, 3.5]", "belongs to dialog 'Ses01F_impro02'"),
    ("Ses01F_impro01_M000 ang", "unexpected line"),
])
def test_other_malformed_lines(tmp_path, bad, why):
    write_tree(tmp_path, standard_dialogs())
    p = tmp_path / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    lines = p.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if "\tSes01F_impro01_M000\t" in ln)
    lines[i] = bad
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"Ses01F_impro01.txt:{i + 1}: .*{why}"):
        prep(tmp_path, tmp_path / "out")


def test_missing_transcript_line_and_file(tmp_path):
    d = standard_dialogs()
    write_tree(tmp_path, d)
    p = tmp_path / "Session2/dialog/transcriptions/Ses02M_impro05b.txt"
    p.write_text("".join(ln + "\n" for ln in p.read_text().splitlines() if "F010" not in ln))
    with pytest.raises(DataError, match=r"Ses02M_impro05b.txt: \[Ses02M_impro05b_F010\] no transcription line"):
        prep(tmp_path, tmp_path / "out")
    res = prep(tmp_path, tmp_path / "out", policy=SkipPolicy("skip"), partial=True)
    assert [(i.utt_id, i.kind) for i in res.report.items] == [("Ses02M_impro05b_F010", "missing_transcript")]
    (tmp_path / "Session1/dialog/transcriptions/Ses01F_impro01.txt").unlink()
    with pytest.raises(DataError, match=r"transcriptions/Ses01F_impro01.txt: \[Ses01F_impro01_F000\] transcription file not found"):
        prep(tmp_path, tmp_path / "out")


def test_non_utf8_text(tmp_path):
    write_tree(tmp_path, standard_dialogs())
    p = tmp_path / "Session1/dialog/transcriptions/Ses01M_script02_1.txt"
    raw = p.read_bytes().replace(b"I miss her.", b"I miss her\xe9.")
    p.write_bytes(raw)
    line = raw[: raw.index(b"\xe9")].count(b"\n") + 1
    with pytest.raises(DataError, match=rf"Ses01M_script02_1.txt:{line}: \[Ses01M_script02_1_M000\] not valid utf-8 text \(byte 0xe9"):
        prep(tmp_path, tmp_path / "out")
    res = prep(tmp_path, tmp_path / "out", policy=SkipPolicy("skip"), partial=True)
    assert [(i.utt_id, i.kind, i.line) for i in res.report.items] == [("Ses01M_script02_1_M000", "encoding", line)]
    # Latin-1 on request reads it.
    prep(tmp_path, tmp_path / "out2", encoding="latin-1")
    assert load_dataset(tmp_path / "out2").by_id["Ses01M_script02_1_M000"].transcript == "I miss heré."


def test_asr_transcripts_file(tmp_path):
    write_tree(tmp_path, standard_dialogs())
    ids = ["Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01M_script02_1_F000", "Ses01M_script02_1_M000",
           "Ses02M_impro05b_F010", "Ses02M_impro05b_M011", "Ses02M_impro05b_M012"]
    (tmp_path / "asr.tsv").write_text("".join(f"{u}\thyp {k}\n" for k, u in enumerate(ids)))
    prep(tmp_path, tmp_path / "out", asr_transcripts=tmp_path / "asr.tsv")
    ds = load_dataset(tmp_path / "out")
    assert ds.by_id["Ses01M_script02_1_F000"].text("asr") == "hyp 2"
    assert ds.by_id["Ses01M_script02_1_F000"].text("gt") == "Look at this!"
    (tmp_path / "asr.tsv").write_text("".join(f"{u}\thyp\n" for u in ids[:3]))
    with pytest.raises(DataError, match=r"asr.tsv: \[Ses01M_script02_1_M000\] no ASR transcript line"):
        prep(tmp_path, tmp_path / "out", asr_transcripts=tmp_path / "asr.tsv")


def test_not_an_iemocap_tree(tmp_path):
    with pytest.raises(DataError, match="no Session1"):
        prep(tmp_path, tmp_path / "out")
