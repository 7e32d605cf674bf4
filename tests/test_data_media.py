"""Audio and video input (spec §2 items 32-34, §3.2, §4.5): hand-checked shapes, positions, counts."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from giamic.data import (
    CropSpec,
    MediaError,
    VideoWindow,
    crop_or_pad,
    decode_windows,
    load_audio,
    normalize_wave,
    probe_video,
)
from giamic.data.audio import audio_info, choose_offset


def _write_video(path, n_frames, fps, width=360, height=240, rate=None):
    """Frame i has red = 4*i (so the frame index is readable after decoding) and a white
    marker square at pixel (x=200, y=100) for checking crop positions."""
    c = av.open(str(path), "w", format="avi")
    s = c.add_stream("mpeg4", rate=rate or Fraction(fps))
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.bit_rate = 4_000_000  # high quality so the decoded pixel values stay close to the drawn ones
    for i in range(n_frames):
        img = np.zeros((height, width, 3), np.uint8)
        img[..., 0] = (4 * i) % 256
        img[96:104, 196:204] = 255
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return _write_video(tmp_path_factory.mktemp("v") / "clip.avi", n_frames=50, fps=10)


# ----------------------------------------------------------------------------------- audio


def test_load_audio_downmixes_and_resamples_stereo_44k(tmp_path):
    sr = 44100
    t = np.arange(int(0.5 * sr)) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = np.zeros_like(left)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), sr)
    info = audio_info(tmp_path / "s.wav")
    assert (info.sample_rate, info.channels, info.is_standard) == (44100, 2, False)
    x = load_audio(tmp_path / "s.wav")
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 8000) <= 1  # 0.5 s at 16 kHz
    # Down-mix halves the amplitude; the 440 Hz tone survives resampling.
    mid = x[2000:6000]
    assert np.max(np.abs(mid)) == pytest.approx(0.25, abs=0.01)
    spec = np.abs(np.fft.rfft(mid))
    assert np.argmax(spec) * 16000 / len(mid) == pytest.approx(440, abs=5)


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="missing.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.wav: cannot decode audio"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00junkjunkjunk" * 10)
    with pytest.raises(MediaError, match="garbage.wav"):
        load_audio(tmp_path / "garbage.wav")
    sf.write(tmp_path / "zero.wav", np.zeros((0,), np.float32), 16000)
    with pytest.raises(MediaError, match="zero.wav: audio file holds no samples"):
        load_audio(tmp_path / "zero.wav")


def test_crop_or_pad_first_and_offset():
    w = np.arange(10, dtype=np.float32)
    out, valid = crop_or_pad(w, 4)
    assert valid == 4 and out.tolist() == [0, 1, 2, 3]
    out, valid = crop_or_pad(w, 4, offset=7)
    assert valid == 3 and out.tolist() == [7, 8, 9, 0]
    out, valid = crop_or_pad(w[:3], 5)
    assert valid == 3 and out.tolist() == [0, 1, 2, 0, 0]
    rng = np.random.default_rng(0)
    offs = {choose_offset(10, 4, "random", rng) for _ in range(200)}
    assert offs == set(range(7))  # every start in [0, n - max] is reachable, none beyond
    assert choose_offset(3, 4, "random", rng) == 0


def test_normalize_wave_uses_valid_samples_only():
    w = np.array([1.0, 3.0, 1.0, 3.0, 0.0, 0.0], np.float32)
    out = normalize_wave(w, valid=4)
    assert out[:4] == pytest.approx([-1, 1, -1, 1], abs=1e-5)
    assert out[4:].tolist() == [0.0, 0.0]
    # Padding amount does not change the normalised samples.
    padded, valid = crop_or_pad(w[:4], 96000)
    assert normalize_wave(padded, valid)[:4] == pytest.approx(out[:4], abs=1e-6)


# ----------------------------------------------------------------------------------- video


def test_cropspec_scales_reference_windows_to_frame_size():
    # Spec windows in 720x480 pixels: left (5,120,350,240), right (365,120,350,240).
    assert CropSpec("L").resolve(720, 480) == (5, 120, 355, 360)
    assert CropSpec("R").resolve(720, 480) == (365, 120, 715, 360)
    # Half size: 5*0.5 = 2.5 -> 3 (round half up), 355*0.5 = 177.5 -> 178, 120*0.5 = 60, 360*0.5 = 180.
    assert CropSpec("L").resolve(360, 240) == (3, 60, 178, 180)
    assert CropSpec("R").resolve(360, 240) == (183, 60, 358, 180)
    assert CropSpec("R", mode="half").resolve(360, 240) == (180, 0, 360, 240)
    assert CropSpec(mode="full").resolve(360, 240) == (0, 0, 360, 240)
    assert CropSpec(box=(300, 200, 100, 100)).resolve(360, 240) == (300, 200, 360, 240)  # clipped
    with pytest.raises(ValueError, match="needs a side"):
        CropSpec(mode="half")


def test_probe_video(video):
    info = probe_video(video)
    assert (info.width, info.height) == (360, 240)
    assert info.fps == pytest.approx(10.0)
    assert info.duration == pytest.approx(5.0)


def test_decode_windows_selects_frames_by_timestamp(video):
    wins = [
        VideoWindow(2.0, 2.55, CropSpec("R", mode="half")),  # frames at 2.0 .. 2.5 -> 6
        VideoWindow(0.15, 0.45, CropSpec(mode="full")),  # 0.2, 0.3, 0.4 -> 3 (unsorted input)
        VideoWindow(2.2, 2.4, CropSpec(box=(196, 96, 8, 8))),  # overlaps the first: 2.2, 2.3
    ]
    frames, times = decode_windows(video, wins, return_times=True)
    assert [f.shape for f in frames] == [(6, 240, 180, 3), (3, 240, 360, 3), (2, 8, 8, 3)]
    assert times[0] == pytest.approx([2.0, 2.1, 2.2, 2.3, 2.4, 2.5])
    assert times[1] == pytest.approx([0.2, 0.3, 0.4])
    # The red channel encodes the frame index (4*i): frames 20..25 and 2..4.
    assert np.abs(frames[0][:, 120, 10, 0].astype(int) - 4 * np.arange(20, 26)).max() <= 3
    assert np.abs(frames[1][:, 10, 10, 0].astype(int) - 4 * np.arange(2, 5)).max() <= 3
    # The box crop lands on the white marker square; the right half has it at x = 200 - 180.
    assert frames[2][..., 1].min() > 200
    assert frames[0][:, 100, 20, 1].min() > 200 and frames[0][:, 100, 60, 1].max() < 50


def test_decode_windows_max_frames_and_max_sec(video):
    (a,) = decode_windows(video, [VideoWindow(0.0, 4.0)], max_frames=7)
    assert a.shape[0] == 7
    (b,) = decode_windows(video, [VideoWindow(1.0, 4.0)], max_sec=1.0)  # [1.0, 2.0) -> 10 frames
    assert b.shape[0] == 10
    (c,) = decode_windows(video, [VideoWindow(1.0, 4.0)], max_sec=None, max_frames=None)  # [1, 4) -> 30
    assert c.shape[0] == 30


def test_window_past_end(video):
    # Runs past the end: the frames that exist (4.5 .. 4.9) are used.
    (a,) = decode_windows(video, [VideoWindow(4.5, 6.0)])
    assert a.shape[0] == 5
    # Starts after the end: an error naming the file and the window, or an empty array if allowed.
    with pytest.raises(MediaError, match=r"clip.avi: window \[5.5000, 6.0000\) holds no frame"):
        decode_windows(video, [VideoWindow(1.0, 2.0), VideoWindow(5.5, 6.0)])
    ok, empty = decode_windows(video, [VideoWindow(1.0, 2.0), VideoWindow(5.5, 6.0)], allow_empty=True)
    assert ok.shape[0] == 10 and empty.shape == (0, 240, 360, 3)


def test_ntsc_rate_6s_window_gives_at_most_180_frames(tmp_path):
    # spec §9 item 3: a 6-s window at 29.97 fps gives 179-180 frames.
    p = _write_video(tmp_path / "ntsc.avi", n_frames=200, fps=None, width=64, height=48, rate=Fraction(30000, 1001))
    (a,) = decode_windows(p, [VideoWindow(0.3, 7.0, CropSpec(mode="full"))])
    assert 179 <= a.shape[0] <= 180


def test_bad_videos_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="nope.avi: video file not found"):
        decode_windows(tmp_path / "nope.avi", [VideoWindow(0, 1)])
    (tmp_path / "empty.avi").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.avi: video file is empty"):
        probe_video(tmp_path / "empty.avi")
    (tmp_path / "junk.avi").write_bytes(b"\x13\x37" * 5000)
    with pytest.raises(MediaError, match="junk.avi"):
        decode_windows(tmp_path / "junk.avi", [VideoWindow(0, 1)])


def test_decode_windows_opens_once_and_stops_after_the_last_window(video, monkeypatch):
    import giamic.data.video as vmod

    opened, decoded = [], [0]
    real_open = av.open

    class Counting:
        def __init__(self, c):
            self._c = c

        def __getattr__(self, k):
            return getattr(self._c, k)

        def decode(self, *a, **k):
            for f in self._c.decode(*a, **k):
                decoded[0] += 1
                yield f

    def fake_open(*a, **k):
        opened.append(a[0])
        return Counting(real_open(*a, **k))

    monkeypatch.setattr(vmod.av, "open", fake_open)
    wins = [VideoWindow(1.0, 1.5), VideoWindow(0.2, 0.5), VideoWindow(0.4, 0.9)]
    out = decode_windows(video, wins)
    assert [f.shape[0] for f in out] == [5, 3, 5]
    assert len(opened) == 1
    # Frames 0.0 .. 1.5 are decoded (the one at 1.5 closes the last window); the other 34 are not.
    assert decoded[0] == 16
