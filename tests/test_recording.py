"""Emotion over a whole recording (``giamic analyze``, ``Predictor.analyze``): a generated
recording with known utterance times, two speakers at places that are not IEMOCAP's halves, and
models trained here on the demo corpus."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from recording_helpers import recording, trained_models

TOL = 0.3  # seconds, each side


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_models(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    # PCM audio in AVI: the per-utterance reader (predict) and the whole-track decode give the same samples.
    return recording(tmp_path_factory.getbasetemp(), "interview.avi", seconds=75.0, seed=2)


@pytest.fixture(scope="module")
def rec_mp4(tmp_path_factory):
    return recording(tmp_path_factory.getbasetemp(), "interview2.mp4", seconds=75.0, seed=4)


@pytest.fixture(scope="module")
def predictor(models):
    from giamic.inference import Predictor

    return Predictor.load([models["full"], models["VS"]])


def _expected(info):
    """The truth cut by the same length rules as the detected segments."""
    from giamic.inference.segments import Span, finalize

    return finalize([Span(u.start, u.end, u.speaker, u.text, "file") for u in info.utterances], info.duration)


def _assert_times(segments, expected):
    got = np.array([(s.start, s.end) for s in segments])
    want = np.array([(s.start, s.end) for s in expected])
    assert got.shape == want.shape, (got.tolist(), want.tolist())
    err = np.abs(got - want)
    assert err.max() <= TOL, f"worst boundary off by {err.max():.3f}s:\n{np.c_[want, got]}"


# --------------------------------------------------------------------------- segmentation


def test_generated_recording_truth_is_consistent(rec):
    path, info = rec
    assert path.is_file() and len(info.speakers) == 2 and info.duration == 75.0
    us = info.utterances
    assert len(us) >= 10 and {u.speaker for u in us} == {"A", "B"}
    assert {u.label for u in us} <= {"neu", "ang", "hap", "sad"} and len({u.label for u in us}) >= 3
    assert any(u.duration > 6.0 for u in us), "some utterance is longer than the model's window"
    assert all(b.start - a.end >= 0.7 for a, b in zip(us, us[1:]))
    # Not IEMOCAP's layout: the faces are at different heights, not in two fixed half windows.
    (ax, ay, _, _), (bx, by, _, _) = info.speakers["A"], info.speakers["B"]
    assert ay != by and ax < bx


def test_vad_path_recovers_the_utterances(predictor, rec_mp4):
    from giamic.inference import AnalyzeOptions, analyze_recording

    path, info = rec_mp4
    a = analyze_recording(predictor, path, AnalyzeOptions())
    assert a.segmentation == "vad" and a.model.endswith("VS/seed0/fold1/model")  # no text: the V+S model
    _assert_times(a.segments, _expected(info))
    assert all(s.error is None and s.label for s in a.segments)
    assert any(s.source == "vad+split" for s in a.segments)
    assert all(s.end - s.start <= 6.0 + 1e-6 for s in a.segments)


def test_segments_file_path_and_speaker_face(predictor, rec, tmp_path):
    from giamic.data.demorecording import write_segments_file
    from giamic.inference import AnalyzeOptions, analyze_recording

    path, info = rec
    seg_file = write_segments_file(info, tmp_path / "truth.csv")
    a = analyze_recording(predictor, path, AnalyzeOptions(segments_file=seg_file))
    assert a.segmentation.startswith("file:") and a.modalities == ["video", "speech", "text"]
    expected = _expected(info)
    _assert_times(a.segments, expected)
    for s, e in zip(a.segments, expected):
        assert s.text == e.text and s.text_source == "transcript" and s.speaker == e.speaker
        # The speaking face is chosen: its box lies on the speaker's drawn face, not the listener's.
        x, y, w, h = info.speakers[e.speaker]
        fx, fy, fw, fh = s.face_box
        assert x <= fx + fw / 2 <= x + w and y <= fy + fh / 2 <= y + h, (s.index, e.speaker, s.face_box)
        assert s.faces == 2 and s.crop.startswith("speaking face")


def test_labels_equal_per_utterance_prediction_on_the_same_windows(predictor, rec, tmp_path):
    """Each segment goes through exactly the path of ``predict`` on its window and crop."""
    from giamic.data.demorecording import write_segments_file
    from giamic.inference import AnalyzeOptions, PredictOptions, Window

    path, info = rec
    segs = predictor.analyze(path, AnalyzeOptions(segments_file=write_segments_file(info, tmp_path / "t.csv")))
    assert len(segs) >= 10
    for s in segs:
        r = predictor.predict_file(path, PredictOptions(window=Window(s.start, s.end), box=s.crop_box),
                                   transcript=s.text)
        assert r.label == s.label and r.model == s.model
        got = np.array([s.probabilities[c] for c in predictor.classes])
        want = np.array([r.probabilities[c] for c in predictor.classes])
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"segment {s.index}")
        assert r.frames == s.frames


def test_segments_files_srt_vtt_csv_and_errors(tmp_path):
    from giamic.inference.errors import InputError
    from giamic.inference.segments import Span, finalize, read_segments_file

    (tmp_path / "a.srt").write_text("1\n00:00:01,500 --> 00:00:03,000\nHello there.\n\n2\n00:01:02,000 --> "
                                    "00:01:09,500\nA long one\nover two lines\n", encoding="utf-8")
    (tmp_path / "a.vtt").write_text("WEBVTT\n\n00:01.500 --> 00:03.000\n<v Ann>Hello there.\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text("start,end,speaker,text\n1.5,3,Ann,\"Hello, there.\"\n00:01:02,69.5,Bob,\n",
                                    encoding="utf-8")
    srt = read_segments_file(tmp_path / "a.srt")
    assert [(s.start, s.end, s.text) for s in srt] == [(1.5, 3.0, "Hello there."), (62.0, 69.5, "A long one over two lines")]
    vtt = read_segments_file(tmp_path / "a.vtt")
    assert [(s.start, s.end, s.speaker, s.text) for s in vtt] == [(1.5, 3.0, "Ann", "Hello there.")]
    csv_ = read_segments_file(tmp_path / "a.csv")
    assert [(s.start, s.end, s.speaker, s.text) for s in csv_] == [(1.5, 3.0, "Ann", "Hello, there."),
                                                                  (62.0, 69.5, "Bob", None)]
    # 7.5 s: two equal pieces within the 6-s window; 0.3 s: left out.
    out = finalize(srt + [Span(80.0, 80.3)])
    assert [(s.start, s.end, s.source) for s in out] == [(1.5, 3.0, "file"), (62.0, 65.75, "file+split"),
                                                        (65.75, 69.5, "file+split")]
    (tmp_path / "bad.csv").write_text("start,end\n3,2\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.csv:2: end"):
        read_segments_file(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="must be .csv, .srt or .vtt"):
        read_segments_file(tmp_path / "a.txt")


def test_forced_crops_and_no_audio(predictor, rec, tmp_path):
    from giamic.data.demorecording import make_recording, write_segments_file
    from giamic.inference import AnalyzeOptions, analyze_recording
    from giamic.inference.errors import InputError, MissingModalityError

    path, info = rec
    seg_file = write_segments_file(info, tmp_path / "t.csv")
    a = analyze_recording(predictor, path, AnalyzeOptions(segments_file=seg_file, face=1))
    x, y, w, h = info.speakers["A"]  # the leftmost face, whoever speaks
    assert all(s.crop == "face 1" and x <= s.face_box[0] + s.face_box[2] / 2 <= x + w for s in a.segments)
    b = analyze_recording(predictor, path, AnalyzeOptions(segments_file=seg_file, full_frame=True))
    assert {s.crop_box for s in b.segments} == {(0, 0, 426, 240)} and all(s.face_box is None for s in b.segments)
    silent = tmp_path / "silent.mp4"
    make_recording(silent, seconds=20, seed=1, audio=False)
    with pytest.raises(MissingModalityError, match="has V"):
        analyze_recording(predictor, silent)
    with pytest.raises(InputError, match="longer than the limit"):
        analyze_recording(predictor, path, AnalyzeOptions(max_duration=60))


# --------------------------------------------------------------------------- outputs and the command


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.rows = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows += 1
        if tag not in ("meta", "img", "br", "input", "link", "source", "track"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def test_cli_writes_table_subtitles_timeline_and_report(models, rec, tmp_path, capsys):
    import srt
    import webvtt
    from PIL import Image

    from giamic.cli import main

    path, info = rec
    out = tmp_path / "out"
    rc = main(["analyze", str(path), "-m", str(models["full"]), "-m", str(models["VS"]), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"{path}:" in text and "utterance(s)" in text
    stem = path.stem
    data = json.loads((out / f"{stem}.emotions.json").read_text())
    segs = data["segments"]
    n = len(segs)
    assert n == len(_expected(info)) and data["segmentation"] == "vad"
    rows = (out / f"{stem}.emotions.csv").read_text().splitlines()
    assert rows[0].split(",")[:9] == ["start", "end", "speaker", "text", "label", "p_neu", "p_ang", "p_hap", "p_sad"]
    assert len(rows) == n + 1
    subs = list(srt.parse((out / f"{stem}.srt").read_text(encoding="utf-8")))
    assert len(subs) == n
    for sub, s in zip(subs, segs):
        assert abs(sub.start.total_seconds() - s["start"]) < 1e-3 and abs(sub.end.total_seconds() - s["end"]) < 1e-3
        assert sub.content.split("\n")[0] == f"{s['label']} {s['probabilities'][s['label']]:.2f}"
    cues = webvtt.read(str(out / f"{stem}.vtt"))
    assert len(cues) == n
    for cue, s in zip(cues, segs):
        h, m, sec = cue.start.split(":")
        assert abs(int(h) * 3600 + int(m) * 60 + float(sec) - s["start"]) < 1e-3
        assert cue.text.split("\n")[0] == f"{s['label']} {s['probabilities'][s['label']]:.2f}"
    img = Image.open(out / f"{stem}.timeline.png")
    assert img.format == "PNG" and img.size == (1000, 320)
    page = (out / f"{stem}.report.html").read_text(encoding="utf-8")
    p = _Html()
    p.feed(page)
    assert not p.errors and not p.stack
    srcs = [a.get("src", "") for t, a in p.tags if t in ("img", "video", "script", "link", "audio")] + \
           [a.get("href", "") for t, a in p.tags if t == "link"]
    assert all(s == "" or s.startswith("data:") for s in srcs), srcs  # self-contained: nothing else to fetch
    assert any(t == "video" and a["src"].startswith("data:video/x-msvideo;base64,") for t, a in p.tags)
    assert p.rows == n + 1


def test_cli_directory_summary_and_failures(models, rec, tmp_path, capsys):
    import shutil

    from giamic.cli import main

    d = tmp_path / "recs"
    (d / "sub").mkdir(parents=True)
    shutil.copy(rec[0], d / "sub" / "one.avi")
    (d / "broken.mp4").write_bytes(b"not a video at all")
    rc = main(["analyze", str(d), "-m", str(models["VS"]), "--out", str(tmp_path / "o"), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 1
    by_name = {Path(r["input"]).name: r for r in res}
    assert "not a media file" in by_name["broken.mp4"]["error"]
    assert Path(by_name["one.avi"]["outputs"]["html"]).parent == tmp_path / "o" / "sub"
    rc = main(["analyze", str(rec[0]), "-m", str(models["VS"]), "--max-segment", "9"])
    assert rc == 2 and "--max-segment" in capsys.readouterr().err


def test_make_recording_command_writes_media_and_truth(tmp_path, capsys):
    import soundfile as sf

    from giamic.cli import main

    out = tmp_path / "talk.wav"
    assert main(["make-recording", str(out), "--seconds", "12", "--speakers", "3", "--seed", "1"]) == 0
    assert "utterances by 3 speaker(s)" in capsys.readouterr().out
    info = sf.info(str(out))
    assert info.samplerate == 16000 and abs(info.duration - 12) < 1e-3
    truth = json.loads((tmp_path / "talk.truth.json").read_text())
    rows = (tmp_path / "talk.segments.csv").read_text().splitlines()
    assert rows[0] == "start,end,speaker,text" and len(rows) == len(truth["utterances"]) + 1 >= 3
    assert main(["make-recording", str(tmp_path / "x.mp4"), "--size", "100x50"]) == 2
    assert "too small" in capsys.readouterr().err


def test_whisper_path_keeps_the_pauses_and_carries_asr_text(predictor, tmp_path_factory):
    """--asr: utterances are the VAD's spans (cut again between Whisper segments), with the words
    Whisper timed inside each; Whisper's own segments would run over the pauses."""
    from giamic.inference import AnalyzeOptions, analyze_recording
    from giamic.inference.segments import Span, finalize

    path, info = recording(tmp_path_factory.getbasetemp(), "asr.mp4", seconds=30.0, seed=8)
    a = analyze_recording(predictor, path, AnalyzeOptions(asr_model="tiny.en"))
    assert a.segmentation == "whisper:tiny.en" and a.modalities == ["video", "speech", "text"]
    assert all(s.text_source == "asr:tiny.en" and s.text is not None and s.label for s in a.segments)
    for u in info.utterances:  # each utterance begins and ends a segment; no segment crosses a pause
        inside = [s for s in a.segments if s.start < u.end and s.end > u.start]
        assert inside and abs(inside[0].start - u.start) <= TOL and abs(inside[-1].end - u.end) <= TOL
        assert all(u.start - TOL <= s.start and s.end <= u.end + TOL for s in inside)
    # Pieces cut at the 6-s window keep their own words.
    w = ((0.1, 0.5, " one"), (6.5, 7.0, " two"), (9.0, 9.4, " three"))
    pieces = finalize([Span(0.0, 10.0, text="one two three", source="whisper", words=w)])
    assert [(p.start, p.end, p.text) for p in pieces] == [(0.0, 5.0, "one"), (5.0, 10.0, "two three")]
