"""The full-size generated corpus (IEMOCAP's size, label for label) and the demo corpus staying as it was."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter

import av
import numpy as np
import pytest

from giamic.data import DataError, Utterance, load_audio, load_dataset
from giamic.data import democorpus
from giamic.data.democorpus import (
    IEMOCAP_SESSION_CLASS_COUNTS,
    iemocap_label_table,
    make_corpus,
    plan_corpus,
    plan_full_corpus,
)
from giamic.data.iemocap import FULL_CORPUS_COUNTS, LABEL_MAP, count_differences, parse_utt_id, prepare_iemocap


def _utts(plan):
    return [u for sp in plan for turns in sp.dialogs.values() for u in turns]


@pytest.fixture(scope="module")
def full_plan():
    return plan_full_corpus(0)


def test_apportion_by_largest_remainders():
    # 595 hap of 1,636 happy, split over the sessions' happy counts (hand-checked: 101.1, 118.9, 104.0,
    # 110.2, 160.8 -> floors sum to 593; the two largest remainders, Ses02 and Ses05, get one more).
    assert democorpus._apportion(595, [278, 327, 286, 303, 442]) == [101, 119, 104, 110, 161]
    assert democorpus._apportion(3, [1, 1, 1, 1]) == [1, 1, 1, 0]


def test_label_table_has_every_release_total():
    table = iemocap_label_table()
    by_label = Counter()
    for counts in table.values():
        by_label.update(counts)
    assert dict(by_label) == {"neu": 1708, "ang": 1103, "sad": 1084, "hap": 595, "exc": 1041, "fru": 1849,
                              "xxx": 2507, "sur": 107, "fea": 40, "oth": 3, "dis": 2}
    assert {s: sum(c.values()) for s, c in table.items()} == {
        "Ses01": 1819, "Ses02": 1811, "Ses03": 2136, "Ses04": 2103, "Ses05": 2170}


def test_full_size_plan_has_the_release_counts_per_session_and_class(full_plan):
    utts = _utts(full_plan)
    assert len(utts) == 10039 and len({u.utt_id for u in utts}) == 10039
    kept = [u for u in utts if u.label is not None]
    grid = Counter((u.utt_id[:5], u.label) for u in kept)
    assert {s: {c: grid[s, c] for c in ("neu", "ang", "hap", "sad")} for s in IEMOCAP_SESSION_CLASS_COUNTS} \
        == IEMOCAP_SESSION_CLASS_COUNTS
    # The reader's own count check (against the verified totals) finds nothing to report.
    rows = [Utterance(u.utt_id, u.label, u.utt_id[:5], session=u.utt_id[:5]) for u in kept]
    assert count_differences(rows, FULL_CORPUS_COUNTS) == []
    assert count_differences(rows[:-1], FULL_CORPUS_COUNTS) != []
    raw = Counter(u.raw_label for u in kept if u.label == "hap")
    assert (raw["hap"], raw["exc"]) == (595, 1041)
    assert all(LABEL_MAP.get(u.raw_label) == u.label for u in utts)


def test_full_size_plan_layout_is_the_release_s(full_plan):
    names = [d for sp in full_plan for d in sp.dialogs]
    assert len(names) == 154 and len(set(names)) == 154
    assert {"Ses03M_impro05b", "Ses03F_impro08a", "Ses01F_script01_3", "Ses05M_script03_2"} <= set(names)
    for sp in full_plan:
        for dialog, turns in sp.dialogs.items():
            assert turns, dialog
            for u in turns:
                pid = parse_utt_id(u.utt_id)
                assert pid is not None and pid.dialog == dialog and pid.session == sp.session
                assert u.side == pid.side
            starts = [u.start for u in turns]
            assert starts == sorted(starts) and turns[0].start > 0
    dur = np.array([u.end - u.start for u in _utts(full_plan)])
    assert 4.0 < dur.mean() < 5.0 and dur.min() >= 0.6 - 1e-9 and dur.max() <= 30.0 + 1e-9
    length = np.array([max(u.end for u in turns) for sp in full_plan for turns in sp.dialogs.values()])
    assert 240 < length.mean() < 400  # dialogs of several minutes, about 13 h in all like the release


def test_full_size_plan_counts_do_not_depend_on_the_seed(full_plan):
    other = _utts(plan_full_corpus(1))
    assert Counter((u.utt_id[:5], u.raw_label) for u in other) == Counter(
        (u.utt_id[:5], u.raw_label) for u in _utts(full_plan))
    assert [u.utt_id for u in other] != [u.utt_id for u in _utts(full_plan)]


def test_demo_plan_unchanged():
    # The demo corpus of seed 0, as every earlier version wrote it: same utterances, windows, cues, texts.
    h = hashlib.sha256()
    for u in _utts(plan_corpus(0)):
        h.update(repr(tuple(dataclasses.astuple(u))).encode())
    assert h.hexdigest() == "b6378ebddc1a4dd8df040f53faeef5c8643c98733e9aefc3a5b457eedc349f86"


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaled") / "corpus"
    info = make_corpus(root, seed=0, scale="iemocap", fraction=0.01, fps=10.0)
    return root, info


def test_scaled_full_corpus_prepares_with_audio_tracks(scaled, tmp_path):
    root, info = scaled
    assert info.total == 57 and len(info.utterances) == 100
    # Every utterance has its wav, the left-out ones too, as in the release; no dialog wavs.
    wavs = sorted(root.glob("Session*/sentences/wav/*/*.wav"))
    assert len(wavs) == 100 and not list(root.glob("Session*/dialog/wav"))
    # The corpus records its (scaled) counts: no flag needed.
    res = prepare_iemocap(root, tmp_path / "d")
    assert len(res.utterances) == 57 and res.filtered_labels == {"fru": 18, "xxx": 25}
    ds = load_dataset(tmp_path / "d")
    u = ds.utterances[3]
    with av.open(str(u.avi)) as c:
        (a,) = c.streams.audio
        assert (a.codec_context.name, a.rate, a.codec_context.channels) == ("mp2", 16000, 1)
        assert c.streams.video[0].codec_context.width == 180
    # The track is the dialog's mix, lined up with the timeline: the utterance's wav sits at its start.
    track, wave = load_audio(u.avi), load_audio(u.wav)
    i0 = int(u.start * 16000)  # where the generator put the utterance in the mix

    def corr(lag):
        return float(np.corrcoef(track[i0 + lag : i0 + lag + wave.size], wave)[0, 1])

    assert corr(0) > 0.9 and corr(0) > max(corr(-1), corr(1))  # aligned to the sample


def test_exact_full_size_writes_no_count_table(tmp_path, monkeypatch):
    # The exact size relies on the reader's full-release check: no expected_counts.json (a stale one is
    # removed). Rendering is the scaled-down plan's, to keep the test small.
    small = plan_full_corpus(0, fraction=0.01)
    for sp in small:
        sp.dialogs = {d: turns[:2] for d, turns in sp.dialogs.items()}
    monkeypatch.setattr(democorpus, "plan_full_corpus", lambda seed, rel, fraction: small)
    root = tmp_path / "c"
    root.mkdir()
    (root / "expected_counts.json").write_text(json.dumps({"total": 57, "by_class": {}, "by_session": {}}))
    make_corpus(root, scale="iemocap", fps=5.0, size=(90, 60))
    assert not (root / "expected_counts.json").exists()
    assert "Prepare it with: giamic prepare <this folder> --out DATA_DIR\n" in (root / "README.txt").read_text()
    with pytest.raises(DataError, match=r"differ from the full IEMOCAP release.*\n  total: found \d+, expected 5531"):
        prepare_iemocap(root, tmp_path / "d")


def run(argv):
    from giamic.cli import main

    return main(argv)  # errors reported (one line, exit code) by the CLI's handler


def test_make_corpus_scale_option(tmp_path, capsys):
    assert run(["make-corpus", str(tmp_path / "c"), "--scale", "iemocap", "--n-per-dialog", "3"]) == 2
    assert "apply to --scale demo only" in capsys.readouterr().err
    # The demo with audio tracks on request.
    assert run(["make-corpus", str(tmp_path / "d"), "--n-per-dialog", "1", "--dialogs-per-session", "2",
                "--video-audio"]) == 0
    with av.open(str(tmp_path / "d" / "Session1" / "dialog" / "avi" / "DivX" / "Ses01F_impro01.avi")) as c:
        assert len(c.streams.audio) == 1


def test_full_size_rendering_does_not_depend_on_workers(tmp_path):
    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    kw = dict(scale="iemocap", fraction=0.01, fps=5.0, size=(90, 60))
    make_corpus(tmp_path / "one", **kw)
    make_corpus(tmp_path / "two", workers=2, **kw)
    one, two = digest(tmp_path / "one"), digest(tmp_path / "two")
    assert len(one) == 162 and one == two  # 100 wavs, 10 videos, 5 text files a dialog, README, counts
