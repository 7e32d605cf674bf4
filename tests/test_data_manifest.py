"""Manifest datasets (CSV / JSONL), folds by group, and the prepared-directory contract."""
from __future__ import annotations

import dataclasses
import json
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from giamic.data import (
    CropSpec,
    DataError,
    SkipPolicy,
    Utterance,
    decode_windows,
    folds_grouped_kfold,
    load_dataset,
    set_asr_transcripts,
    write_utterances,
)
from giamic.data.manifest import prepare_manifest


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    sf.write(d / "a.wav", np.zeros(16000, np.float32) + 0.1, 16000)
    sf.write(d / "b48k.wav", np.zeros((48000, 2), np.float32), 48000)
    c = av.open(str(d / "clip.avi"), "w", format="avi")
    s = c.add_stream("mpeg4", rate=Fraction(5))
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for i in range(20):  # 4 s at 5 fps
        for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return d


def quiet(*a, **k):
    res = prepare_manifest(*a, **k)
    return res.utterances, res.report


CSV = """id,label,group,speaker,audio,video,start,end,side,crop,transcript
u1,ang,A,spk1,a.wav,clip.avi,0.5,1.5,L,,I am furious
u2,neu,A,spk1,b48k.wav,,,,,,okay
u3,sad,B,,,clip.avi,1,2,,"10,5,20,30",
u4,hap,C,spk3,,,,,,,great news
"""


def test_csv_manifest(media, tmp_path):
    (media / "m.csv").write_text(CSV)
    utts, report = quiet(media / "m.csv", tmp_path / "d")
    ds = load_dataset(tmp_path / "d")
    assert ds.classes == ["ang", "hap", "neu", "sad"] and [u.utt_id for u in ds.utterances] == ["u1", "u2", "u3", "u4"]
    u1, u2, u3, u4 = ds.utterances
    assert (u1.wav, u1.avi, u1.start, u1.end, u1.side, u1.speaker) == (
        media / "a.wav", media / "clip.avi", 0.5, 1.5, "L", "spk1")
    assert u1.crop == CropSpec("L", mode="half") and u1.transcript == "I am furious"
    assert u2.avi is None and u2.crop is None and u2.start is None
    assert u3.crop == CropSpec(box=(10, 5, 20, 30)) and u3.speaker == "B" and u3.transcript is None
    assert u4.wav is None and u4.avi is None
    assert ds.meta["fold_scheme"] == "leave_one_group_out"
    assert [(f.test_group, f.test) for f in ds.folds] == [("A", ["u1", "u2"]), ("B", ["u3"]), ("C", ["u4"])]
    assert any("b48k.wav: 48000 Hz, 2 channel(s)" in n for n in ds.meta["notes"])
    # The prepared crop feeds decode_windows: box 20x30 at (10, 5); window [1, 2) at 5 fps -> 5 frames.
    (frames,) = decode_windows(u3.avi, [u3.video_window()])
    assert frames.shape == (5, 30, 20, 3)


def test_jsonl_manifest_and_default_video_end(media, tmp_path):
    rows = [
        {"id": "x1", "label": "pos", "group": "g1", "video": str(media / "clip.avi"), "side": "R",
         "crop_mode": "fixed_window", "transcript": "yes"},
        {"id": "x2", "label": "neg", "group": "g2", "audio": "a.wav", "transcript_asr": "no"},
        {"id": "x3", "label": "neg", "group": "g2", "crop": [1, 2, 3, 4], "video": "clip.avi", "start": 3},
    ]
    (media / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    quiet(media / "m.jsonl", tmp_path / "d", classes=["neg", "pos"])
    ds = load_dataset(tmp_path / "d")
    assert ds.classes == ["neg", "pos"] and ds.by_id["x1"].label_id(ds.classes) == 1
    x1 = ds.by_id["x1"]
    assert (x1.start, x1.end) == (0.0, 4.0)  # whole video when no window is given
    assert x1.crop == CropSpec("R", mode="fixed_window")
    assert ds.by_id["x2"].text("asr") == "no" and ds.by_id["x3"].crop_box == (1, 2, 3, 4)


@pytest.mark.parametrize("text,suffix,pattern", [
    ("id,label,group\nu1,a,g\nu1,b,g\n", ".csv", r"m.csv:3: .*duplicate id 'u1' \(first on line 2\)"),
    ("id,label,group\nu1,,g\n", ".csv", r"m.csv:2: \[u1\] missing label"),
    ("id,label\nu1,a\n", ".csv", r"m.csv:2: \[u1\] missing group"),
    (",id,label,group\nx,u1,a,g\n", ".csv", r"m.csv:2: \[u1\] a value \('x'\) under a column without a name"),
    ("id,label,Label,group\nu1,a,a,g\n", ".csv", r"m.csv:2: column 'label' given twice"),
    ("id,label,group,video,side\nu1,a,g,clip.avi,X\n", ".csv", r"m.csv:2: \[u1\] side must be L, R or empty"),
    ("id,label,group,video,start,end\nu1,a,g,clip.avi,2,1\n", ".csv", r"m.csv:2: \[u1\] bad window"),
    ("id,label,group,video,start\nu1,a,g,clip.avi,9\n", ".csv", r"clip.avi: \[u1\] window \[9.0000, end\] of u1 starts past the end"),
    ("id,label,group,audio\nu1,a,g,nothere.wav\n", ".csv", r"nothere.wav: \[u1\] audio file not found"),
    ('{"id": "u1", "label": "a", "group": "g"}\n{"id": "u2", "label": \n', ".jsonl", r"m.jsonl:2: not valid JSON"),
    ("id,label,group\nu1,a,g\nu2,z,g\n", ".csv", r"m.csv:3: \[u2\] label 'z' is not one of --classes"),
])
def test_manifest_errors_name_file_and_line(media, tmp_path, text, suffix, pattern):
    p = media / f"m{suffix}"
    p.write_text(text)
    classes = ["a", "b"] if "--classes" in pattern else None
    with pytest.raises(DataError, match=pattern):
        quiet(p, tmp_path / "d", classes=classes)


def test_manifest_skip_policy(media, tmp_path):
    (media / "m.csv").write_text("id,label,group,audio\nu1,a,g1,a.wav\nu2,a,g2,nothere.wav\nu3,b,g2,a.wav\n")
    utts, report = quiet(media / "m.csv", tmp_path / "d", policy=SkipPolicy("skip"))
    assert [u.utt_id for u in utts] == ["u1", "u3"]
    assert [(i.utt_id, i.kind) for i in report.items] == [("u2", "missing_audio")]
    assert load_dataset(tmp_path / "d").skipped[0]["utt_id"] == "u2"


def _utts(sizes):
    return [Utterance(f"{g}_{i}", "a", g) for g, n in sizes.items() for i in range(n)]


def test_grouped_kfold_keeps_groups_whole_and_balances():
    utts = _utts({"g1": 10, "g2": 9, "g3": 5, "g4": 4, "g5": 1, "g6": 1})
    folds = folds_grouped_kfold(utts, 3, seed=0)
    assert len(folds) == 3
    test_sets = [set(f.test) for f in folds]
    assert set().union(*test_sets) == {u.utt_id for u in utts} and sum(map(len, test_sets)) == 30
    for f in folds:
        groups = {i.split("_")[0] for i in f.test}
        assert f.test_group == "+".join(sorted(groups))
        assert not groups & {i.split("_")[0] for i in f.train}
    # Largest first to the lightest fold: 10->f1, 9->f2, 5->f3, 4->f3 (9), 1->f2 (10, tie with f3:
    # lowest index), 1->f3 (10): three folds of 10.
    assert sorted(len(s) for s in test_sets) == [10, 10, 10]
    assert [f.test for f in folds_grouped_kfold(utts, 3, seed=0)] == [f.test for f in folds]  # deterministic
    with pytest.raises(DataError, match="at least 7 groups"):
        folds_grouped_kfold(utts, 7)


def test_kfold_from_manifest(media, tmp_path):
    rows = "".join(f"u{i},{'ab'[i % 2]},grp{i % 5}\n" for i in range(20))
    (media / "m.csv").write_text("id,label,group\n" + rows)
    quiet(media / "m.csv", tmp_path / "d", folds="kfold", k=2, seed=4)
    ds = load_dataset(tmp_path / "d")
    assert ds.meta["fold_scheme"] == "grouped_kfold(k=2,seed=4)" and len(ds.folds) == 2
    assert sorted(len(f.test) for f in ds.folds) == [8, 12]  # five groups of 4 -> 3 + 2


def test_write_utterances_round_trip_and_asr(media, tmp_path):
    (media / "m.csv").write_text(CSV)
    quiet(media / "m.csv", tmp_path / "d")
    ds = load_dataset(tmp_path / "d")
    new = [dataclasses.replace(u, transcript_asr=f"asr {u.utt_id}") for u in ds.utterances]
    write_utterances(tmp_path / "d", new)
    again = load_dataset(tmp_path / "d")
    assert again.utterances == new and again.folds == ds.folds
    n = set_asr_transcripts(tmp_path / "d", {"u1": "a", "u2": "b", "u3": "c", "u4": "d"}, source="whisper-x")
    ds3 = load_dataset(tmp_path / "d")
    assert n == 4 and ds3.by_id["u3"].transcript_asr == "c" and ds3.meta["asr_source"] == "whisper-x"
    with pytest.raises(DataError, match=r"no ASR transcript for 1 utterance\(s\), e.g. \['u4'\]"):
        set_asr_transcripts(tmp_path / "d", {"u1": "a", "u2": "b", "u3": "c"})


def test_load_dataset_rejects_bad_rows(tmp_path):
    (tmp_path / "utterances.csv").write_text("utt_id,label,group,start,end\nu1,a,g,1.0,x\n")
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a"]}))
    with pytest.raises(DataError, match=r"utterances.csv:2: column 'end': 'x' is not a number"):
        load_dataset(tmp_path)
    (tmp_path / "utterances.csv").write_text("utt_id,label,group\nu1,b,g\n")
    with pytest.raises(DataError, match=r"labels \['b'\] are not in the classes"):
        load_dataset(tmp_path)


def test_manifest_asr_file(media, tmp_path):
    (media / "m.csv").write_text("id,label,group\nu1,a,g1\nu2,b,g2\n")
    (media / "asr.csv").write_text("utt_id,text\nu1,hello there\nu2,bye\n")
    quiet(media / "m.csv", tmp_path / "d", asr_transcripts=media / "asr.csv")
    ds = load_dataset(tmp_path / "d")
    assert [u.text("asr") for u in ds.utterances] == ["hello there", "bye"]
    assert ds.meta["asr_source"].endswith("asr.csv")
    (media / "asr.csv").write_text("utt_id,text\nu1,hello\n")
    with pytest.raises(DataError, match=r"asr.csv: \[u2\] no ASR transcript line"):
        quiet(media / "m.csv", tmp_path / "d", asr_transcripts=media / "asr.csv")
