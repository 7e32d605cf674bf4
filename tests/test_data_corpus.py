"""The demo corpus (IEMOCAP layout) and media problems on a generated tree (issue #3)."""
from __future__ import annotations

import json
import logging
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
import soundfile as sf

from giamic.data import DataError, MediaError, SkipPolicy, decode_windows, load_audio, load_dataset, probe_video
from giamic.data.democorpus import make_corpus, plan_corpus
from giamic.data.iemocap import prepare_iemocap

SMALL = dict(seed=3, n_per_dialog=3, dialogs_per_session=2, dialog_wav=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "IEMOCAP_full_release"
    return make_corpus(root, **SMALL)


@pytest.fixture
def tree(corpus, tmp_path):
    """A private copy of the generated tree that a test may damage."""
    dst = tmp_path / "tree"
    shutil.copytree(corpus.root, dst)
    return dst


def prep(root, out, expected, **kw):
    """Prepare, and return the result with what the command shows: the logged notes and skips, then the summary."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("giamic.data")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        res = prepare_iemocap(root, out, expected=expected, **kw)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return res, "\n".join(lines + res.summary)


def test_demo_corpus_reads_like_iemocap(corpus, tmp_path):
    res, log = prep(corpus.root, tmp_path / "d", corpus.expected_counts())
    ds = load_dataset(tmp_path / "d")
    assert len(ds) == corpus.total == 30 and sorted(ds.by_id) == sorted(u.utt_id for u in corpus.kept)
    assert ds.counts["by_class"] == corpus.by_class
    assert ds.counts["by_group"] == corpus.by_session == {f"Ses0{i}": 6 for i in range(1, 6)}
    assert [f.test_group for f in ds.folds] == ["Ses01", "Ses02", "Ses03", "Ses04", "Ses05"]
    truth = {u.utt_id: u for u in corpus.utterances}
    for u in ds.utterances:
        t = truth[u.utt_id]
        assert (u.label, u.raw_label, u.side, u.start, u.end, u.transcript) == (
            t.label, t.raw_label, t.side, t.start, t.end, t.transcript)
    # Both marker-wearer letters, an impro suffix and a script part index are present.
    assert {u.dialog for u in ds.utterances} >= {"Ses01F_impro01", "Ses01M_impro02a"}
    filtered = sum(1 for u in corpus.utterances if u.label is None)
    assert sum(res.filtered_labels.values()) == filtered
    assert "counts match the demo corpus (seed 3)" in log
    expected_json = json.loads((corpus.root / "expected_counts.json").read_text())
    assert expected_json["total"] == 30
    # Every wav is 16 kHz mono and as long as its turn; every window has frames.
    u = ds.utterances[0]
    assert sf.info(str(u.wav)).samplerate == 16000 and sf.info(str(u.wav)).channels == 1
    assert len(load_audio(u.wav)) == pytest.approx((u.end - u.start) * 16000, abs=2)
    assert probe_video(u.avi).width == 360


def test_script_dialog_names(tmp_path):
    info = make_corpus(tmp_path / "c", seed=1, n_per_dialog=1, sessions=1, dialogs_per_session=4, dialog_wav=False)
    dialogs = {u.utt_id.rsplit("_", 1)[0] for u in info.utterances}
    assert dialogs == {"Ses01F_impro01", "Ses01M_impro02a", "Ses01F_script01_2", "Ses01M_script02_1"}


def test_deterministic_from_seed(tmp_path):
    kw = dict(n_per_dialog=2, sessions=1, dialogs_per_session=2, dialog_wav=False)
    a = make_corpus(tmp_path / "a", seed=7, **kw)
    b = make_corpus(tmp_path / "b", seed=7, **kw)
    c = make_corpus(tmp_path / "c", seed=8, **kw)
    assert a.utterances == b.utterances and a.utterances != c.utterances
    for rel in ("Session1/dialog/EmoEvaluation/Ses01F_impro01.txt", "Session1/dialog/transcriptions/Ses01M_impro02a.txt",
                f"Session1/sentences/wav/Ses01F_impro01/{a.utterances[0].utt_id}.wav",
                "Session1/dialog/avi/DivX/Ses01M_impro02a.avi"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_speaker_half_shows_the_speaker(corpus, tmp_path):
    """The speaker's mouth moves and the marker dots sit on the left actor (spec §4.5 rule)."""
    prep(corpus.root, tmp_path / "d", corpus.expected_counts())
    ds = load_dataset(tmp_path / "d")
    by_dialog = defaultdict(list)
    for u in ds.utterances:
        by_dialog[u.avi].append(u)
    checked = 0
    for avi, utts in by_dialog.items():
        from giamic.data import CropSpec, VideoWindow

        wins = [VideoWindow(u.start, u.end, u.crop) for u in utts]
        other = [VideoWindow(u.start, u.end, CropSpec("R" if u.side == "L" else "L")) for u in utts]
        frames = decode_windows(avi, wins + other)
        for k, u in enumerate(utts):
            spk, lst = frames[k].astype(int), frames[len(utts) + k].astype(int)
            assert spk.shape == (spk.shape[0], 120, 175, 3) and spk.shape[0] >= 10
            motion_spk = np.abs(np.diff(spk, axis=0)).mean()
            motion_lst = np.abs(np.diff(lst, axis=0)).mean()
            assert motion_spk > 3 * motion_lst, u.utt_id  # only the speaker talks
            # Near-white pixels: only the marker dots (8 dots of ~13 px) are that light.
            white_spk = (spk.min(axis=-1) > 200).sum(axis=(1, 2)).mean()
            white_lst = (lst.min(axis=-1) > 200).sum(axis=(1, 2)).mean()
            left_has_markers = (white_spk if u.side == "L" else white_lst) > 50
            right_has_markers = (white_lst if u.side == "L" else white_spk) > 50
            assert left_has_markers and not right_has_markers, u.utt_id
            checked += 1
    assert checked == 30


def test_each_modality_informative_but_imperfect():
    """Design check on the default plan: every cue beats chance, none is perfect, and combining
    the three (naive Bayes fitted on other seeds) beats the best single modality."""
    classes = ["neu", "ang", "hap", "sad"]
    mods = ("speech", "face", "text")
    train = [u for s in range(8) for sp in plan_corpus(100 + s) for d in sp.dialogs.values() for u in d if u.label]
    test = [u for sp in plan_corpus(0) for d in sp.dialogs.values() for u in d if u.label]
    assert len(test) == 200
    cnt = {m: defaultdict(Counter) for m in mods}
    for u in train:
        for m in mods:
            cnt[m][u.label][getattr(u, f"{m}_shows")] += 1

    def acc(ms):
        def pred(u):
            return max(classes, key=lambda c: sum(
                np.log((cnt[m][c][getattr(u, f"{m}_shows")] + 0.5) / (sum(cnt[m][c].values()) + 2)) for m in ms))
        return np.mean([pred(u) == u.label for u in test])

    single = {m: acc([m]) for m in mods}
    for m, a in single.items():
        assert 0.45 < a < 0.9, (m, a)
    assert acc(list(mods)) > max(single.values()) + 0.08
    # The listener always shows another emotion than the speaker's face.
    assert all(u.listener_shows != u.face_shows for u in test)


def test_speech_cues_follow_the_shown_emotion(corpus):
    """Angry speech is louder and brighter than sad speech (energy and spectral centroid)."""
    rms, cen = defaultdict(list), defaultdict(list)
    for u in corpus.utterances:
        d = u.utt_id.rsplit("_", 1)[0]
        x = load_audio(corpus.root / f"Session{int(u.utt_id[3:5])}" / "sentences" / "wav" / d / f"{u.utt_id}.wav")
        rms[u.speech_shows].append(np.sqrt(np.mean(x**2)))
        spec = np.abs(np.fft.rfft(x))
        cen[u.speech_shows].append((spec * np.fft.rfftfreq(len(x), 1 / 16000)).sum() / spec.sum())
    assert np.mean(rms["ang"]) > 2 * np.mean(rms["sad"])
    assert np.mean(cen["ang"]) > 1.5 * np.mean(cen["sad"])


# ------------------------------------------------------------------ bad media on the generated tree


def _first(corpus, dialog="Ses02F_impro01"):
    return next(u for u in corpus.kept if u.utt_id.startswith(dialog))


def _wav(tree, uid):
    d = uid.rsplit("_", 1)[0]
    return tree / f"Session{int(uid[3:5])}" / "sentences" / "wav" / d / f"{uid}.wav"


def _set_start(tree, uid, start, end):
    d = uid.rsplit("_", 1)[0]
    p = tree / f"Session{int(uid[3:5])}" / "dialog" / "EmoEvaluation" / f"{d}.txt"
    lines = p.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if f"\t{uid}\t" in ln)
    lines[i] = f"[{start:.4f} - {end:.4f}]" + lines[i][lines[i].index("\t"):]
    p.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage,pattern", [
    ("missing_wav", r"\.wav: \[{uid}\] audio file not found"),
    ("empty_wav", r"\.wav: \[{uid}\] cannot read audio"),
    ("corrupt_wav", r"\.wav: \[{uid}\] cannot read audio"),
    ("window_past_end", r"Ses02F_impro01\.avi: \[{uid}\] window \[500\.0000, 501\.0000\] of {uid} starts past the end"),
    ("corrupt_video", r"Ses02F_impro01\.avi: \[{uid}\] cannot open video"),
    ("missing_video", r"Ses02F_impro01\.avi: \[{uid}\] video file not found"),
])
def test_bad_media_raise_names_the_file(corpus, tree, tmp_path, damage, pattern):
    uid = _first(corpus).utt_id
    avi = tree / "Session2/dialog/avi/DivX/Ses02F_impro01.avi"
    if damage == "missing_wav":
        _wav(tree, uid).unlink()
    elif damage == "empty_wav":
        _wav(tree, uid).write_bytes(b"")
    elif damage == "corrupt_wav":
        _wav(tree, uid).write_bytes(b"RIFF....WAVEfmt " + bytes(range(256)) * 4)
    elif damage == "window_past_end":
        _set_start(tree, uid, 500.0, 501.0)
    elif damage == "corrupt_video":
        avi.write_bytes(b"\x00\x01garbage" * 1000)
    elif damage == "missing_video":
        avi.unlink()
    with pytest.raises(MediaError, match=pattern.format(uid=uid)):
        prep(tree, tmp_path / "d", corpus.expected_counts())
    assert not (tmp_path / "d" / "utterances.csv").exists()


def test_bad_media_skip_policy_counts_and_lists(corpus, tree, tmp_path):
    kept = corpus.kept
    u_missing = next(u for u in kept if u.utt_id.startswith("Ses01F"))
    u_corrupt = next(u for u in kept if u.utt_id.startswith("Ses03M"))
    u_past = next(u for u in kept if u.utt_id.startswith("Ses04F"))
    _wav(tree, u_missing.utt_id).unlink()
    _wav(tree, u_corrupt.utt_id).write_bytes(b"not a wav at all")
    _set_start(tree, u_past.utt_id, 900.0, 901.5)
    (tree / "Session5/dialog/avi/DivX/Ses05M_impro02a.avi").write_bytes(b"")
    lost_video = [u.utt_id for u in kept if u.utt_id.startswith("Ses05M_impro02a")]
    with pytest.raises(DataError, match=r"\(\d+ item\(s\) were skipped"):
        prep(tree, tmp_path / "d", corpus.expected_counts(), policy=SkipPolicy("skip"))
    res, log = prep(tree, tmp_path / "d", corpus.expected_counts(), policy=SkipPolicy("skip"), partial=True)
    got = sorted((i.utt_id, i.kind) for i in res.report.items)
    want = sorted([(u_missing.utt_id, "missing_audio"), (u_corrupt.utt_id, "corrupt_audio"),
                   (u_past.utt_id, "window_past_end")] + [(x, "empty_video") for x in lost_video])
    assert got == want
    assert f"skipped {len(want)} item(s)" in log and u_corrupt.utt_id in log
    ds = load_dataset(tmp_path / "d")
    assert len(ds) == 30 - len(want)
    assert sorted((s["utt_id"], s["kind"]) for s in ds.skipped) == want
    assert ds.meta["skipped_counts"]["empty_video"] == len(lost_video)


def test_stereo_44k_wav_converted_or_strict(corpus, tree, tmp_path):
    u = _first(corpus)
    x = load_audio(_wav(tree, u.utt_id))
    t44 = np.interp(np.arange(int(len(x) * 44100 / 16000)) / 44100, np.arange(len(x)) / 16000, x)
    sf.write(_wav(tree, u.utt_id), np.stack([t44, t44], 1), 44100)
    res, log = prep(tree, tmp_path / "d", corpus.expected_counts())
    assert "44100 Hz, 2 channel(s); expected 16000 Hz mono; resampled/down-mixed at load time" in log
    y = load_audio(load_dataset(tmp_path / "d").by_id[u.utt_id].wav)
    assert abs(len(y) - len(x)) <= 2 and np.corrcoef(x[: len(y)], y[: len(x)])[0, 1] > 0.99
    with pytest.raises(MediaError, match=rf"\[{u.utt_id}\] 44100 Hz, 2 channel\(s\).*--strict-audio"):
        prep(tree, tmp_path / "d2", corpus.expected_counts(), strict_audio=True)


def test_window_running_past_the_end_uses_existing_frames(corpus, tree, tmp_path):
    u = _first(corpus)
    dur = probe_video(tree / "Session2/dialog/avi/DivX/Ses02F_impro01.avi").duration
    _set_start(tree, u.utt_id, dur - 0.35, dur + 2.0)
    res, log = prep(tree, tmp_path / "d", corpus.expected_counts())
    assert f"{u.utt_id}: window ends at" in log and "the frames that exist are used" in log
    v = load_dataset(tmp_path / "d").by_id[u.utt_id]
    (frames,) = decode_windows(v.avi, [v.video_window()])
    assert frames.shape[0] in (3, 4)  # 0.35 s at 10 fps
