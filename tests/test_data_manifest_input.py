"""Manifests as people write them: a byte-order mark, extra columns, label spelling, audio in a video file."""
from __future__ import annotations

import json
import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from giamic.data import DataError, load_audio, load_dataset
from giamic.data.audio import audio_info
from giamic.data.manifest import prepare_manifest

SR_IN = 44100


def write_mp4(path, seconds=2.0, left=0.4, right=0.0, freq=440.0, with_audio=True):
    """An mp4 with a small video track and (optionally) a stereo 44.1 kHz AAC track: a sine of amplitude
    ``left`` on the left channel and ``right`` on the right one."""
    c = av.open(str(path), "w", format="mp4")
    v = c.add_stream("mpeg4", rate=Fraction(10))
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    a = None
    if with_audio:
        a = c.add_stream("aac", rate=SR_IN)
        a.layout = "stereo"
    n = int(seconds * SR_IN)
    t = np.arange(n) / SR_IN
    sig = np.stack([left * np.sin(2 * np.pi * freq * t), right * np.sin(2 * np.pi * freq * t)]).astype(np.float32)
    pos = 0
    for i in range(int(seconds * 10)):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
        frame.pts = i
        for p in v.encode(frame):
            c.mux(p)
        if a is not None:
            stop = min(n, int((i + 1) * SR_IN / 10))
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(sig[:, pos:stop]), format="fltp", layout="stereo")
            af.sample_rate, af.pts = SR_IN, pos
            for p in a.encode(af):
                c.mux(p)
            pos = stop
    for s in (v, a):
        if s is not None:
            for p in s.encode():
                c.mux(p)
    c.close()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("mi")
    write_mp4(d / "talk.mp4")
    write_mp4(d / "silent.mp4", with_audio=False)
    for i in range(12):
        sf.write(d / f"w{i}.wav", np.full(8000, 0.01 * (i + 1), np.float32), 16000)
    return d


def test_audio_from_a_video_container_is_mixed_and_resampled(media):
    info = audio_info(media / "talk.mp4")
    assert (info.sample_rate, info.channels) == (SR_IN, 2) and not info.is_standard
    assert info.duration == pytest.approx(2.0, abs=0.1)
    wave = load_audio(media / "talk.mp4")
    assert wave.dtype == np.float32 and wave.ndim == 1
    # 2 s at 16 kHz, give or take the AAC encoder's priming and padding (a few thousand input samples).
    assert abs(wave.size - 32000) < 1600
    mid = wave[4000:28000]
    # Channel mean: a 0.4 sine on the left and silence on the right give a 0.2 sine (RMS 0.2/sqrt 2).
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.2 / np.sqrt(2), rel=0.05)
    spectrum = np.abs(np.fft.rfft(mid))
    assert np.fft.rfftfreq(mid.size, 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)


def test_a_video_without_audio_track_is_an_error_naming_it(media):
    with pytest.raises(DataError, match=r"silent.mp4: no audio track"):
        load_audio(media / "silent.mp4")
    with pytest.raises(DataError, match=r"silent.mp4: no audio track"):
        audio_info(media / "silent.mp4")


def test_a_corrupt_wav_is_not_handed_to_ffmpeg(media, tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    with pytest.raises(DataError, match=r"bad.wav: cannot decode audio"):
        load_audio(tmp_path / "bad.wav")


def test_bom_extra_columns_label_spelling_and_mp4_audio(media, tmp_path, caplog):
    labels = ["Hap", " hap", "HAP ", "hap", "hap", "ang", "Ang", "ang", "ang", "ang", "Sad", "sad"]
    lines = ["ID, Label ,group,audio,video,start,Colour,age,"]  # a trailing comma: a nameless empty column
    for i, lab in enumerate(labels):
        audio, video = (f"w{i}.wav", "") if i else ("talk.mp4", "talk.mp4")
        lines.append(f"u{i},{lab},g{i % 3},{audio},{video},,{'red' if i % 2 else ''},{30 + i},")
    # Excel's "CSV UTF-8": a byte-order mark, CRLF line ends.
    (media / "excel.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))
    with caplog.at_level(logging.WARNING, logger="giamic"):
        prepare_manifest(media / "excel.csv", tmp_path / "d")
    ds = load_dataset(tmp_path / "d")
    assert ds.classes == ["ang", "hap", "sad"]
    assert [u.label for u in ds.utterances] == [lab.strip().lower() for lab in labels]
    assert [u.raw_label for u in ds.utterances][:3] == ["Hap", None, "HAP"]
    assert ds.by_id["u1"].meta == {"Colour": "red", "age": "31"} and ds.by_id["u0"].meta == {"Colour": "", "age": "30"}
    assert ds.meta["meta_columns"] == ["Colour", "age"] and ds.meta["small_classes"] == {"sad": 2}
    header = (tmp_path / "d" / "utterances.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["meta.Colour", "meta.age"]
    u0 = ds.by_id["u0"]
    assert u0.wav == u0.avi == media / "talk.mp4" and (u0.start, u0.end) == (0.0, pytest.approx(2.0, abs=0.1))
    assert any("talk.mp4: 44100 Hz, 2 channel(s)" in n for n in ds.meta["notes"])
    # One warning line for the extra columns, one naming the small class with its count and ids.
    extra = [r.getMessage() for r in caplog.records if "not manifest fields" in r.getMessage()]
    assert len(extra) == 1 and "['Colour', 'age']" in extra[0]
    small = [r.getMessage() for r in caplog.records if "fewer than 5" in r.getMessage()]
    assert len(small) == 1 and "'sad': 2 (u10, u11)" in small[0] and "'ang'" not in small[0]


def test_jsonl_bom_classes_option_and_typo_hint(media, tmp_path, caplog):
    rows = [{"id": f"j{i}", "label": lab, "group": f"g{i % 2}", "Transcripts": "hello", "score": [1, 2]}
            for i, lab in enumerate(["Neu", "neu", "ANG", "ang"])]
    (media / "m.jsonl").write_bytes(("\n".join(json.dumps(r) for r in rows) + "\n").encode("utf-8-sig"))
    with caplog.at_level(logging.WARNING, logger="giamic"):
        prepare_manifest(media / "m.jsonl", tmp_path / "d", classes=[" Neu", "ANG", "sad"])
    ds = load_dataset(tmp_path / "d")
    assert ds.classes == ["neu", "ang", "sad"] and [u.label for u in ds.utterances] == ["neu", "neu", "ang", "ang"]
    assert ds.by_id["j0"].meta == {"Transcripts": "hello", "score": "[1, 2]"} and ds.by_id["j0"].transcript is None
    text = caplog.text
    assert "did you mean 'Transcripts' -> 'transcript'?" in text
    assert "'neu': 2 (j0, j1); 'ang': 2 (j2, j3); 'sad': 0" in text
    with pytest.raises(DataError, match=r"--classes names \['neu'\] more than once"):
        prepare_manifest(media / "m.jsonl", tmp_path / "e", classes=["neu", "Neu"])


def test_audio_of_the_video_file_with_a_later_window_is_refused(media, tmp_path):
    (media / "late.csv").write_text("id,label,group,audio,video,start,end\nu1,a,g,talk.mp4,talk.mp4,0.5,1.5\n")
    with pytest.raises(DataError, match=r"late.csv:2: \[u1\] the audio column names the video file.*starts at 0.5 s"):
        prepare_manifest(media / "late.csv", tmp_path / "d")
