"""The video frame-rate setting (decode, extraction key, model directory, prediction) and the CLIP
execution setting (fp32 / bf16 / int8)."""
from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from giamic.data import CropSpec, VideoWindow, decode_windows
from giamic.errors import ConfigError
from giamic.features import ExtractOptions, build_encoder
from giamic.modeldir import (
    ModelDirError,
    PipelineSpec,
    Preprocessing,
    VideoPreprocessing,
)


def _write_video(path, n_frames, fps, width=96, height=64, rate=None):
    c = av.open(str(path), "w", format="avi")
    s = c.add_stream("mpeg4", rate=rate or Fraction(fps))
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    for i in range(n_frames):
        img = np.zeros((height, width, 3), np.uint8)
        img[..., 0] = (4 * i) % 256
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


@pytest.fixture(scope="module")
def ntsc(tmp_path_factory):
    # 8 s at 29.97 fps (IEMOCAP's rate)
    return _write_video(tmp_path_factory.mktemp("v") / "ntsc.avi", 240, None, rate=Fraction(30000, 1001))


def test_fps_keeps_the_first_frame_of_each_slot(ntsc):
    win = [VideoWindow(1.0, 8.0, CropSpec(mode="full"))]
    (native,), (t_native,) = decode_windows(ntsc, win, return_times=True)
    assert len(native) == 180  # the paper's 180 frames per 6 s at the native rate
    (two,), (t_two,) = decode_windows(ntsc, win, fps=2.0, return_times=True)
    assert len(two) == 12  # 6 s x 2 frames/s
    slots = np.floor((t_two - 1.0) * 2.0 + 1e-6).astype(int)
    assert list(slots) == list(range(12))  # one frame in every half-second slot, none skipped
    # Each kept frame is the first native frame of its slot, pixel for pixel.
    for t, img in zip(t_two, two):
        j = int(np.flatnonzero(np.isclose(t_native, t))[0])
        assert np.array_equal(img, native[j])
        assert j == 0 or np.floor((t_native[j - 1] - 1.0) * 2.0 + 1e-6) < np.floor((t - 1.0) * 2.0 + 1e-6)
    (five,) = decode_windows(ntsc, win, fps=5.0)
    assert len(five) == 30
    # At or above the native rate every frame is kept, as without the setting.
    (thirty,) = decode_windows(ntsc, win, fps=30.0)
    assert np.array_equal(thirty, native)
    # max_frames still caps the count.
    (capped,) = decode_windows(ntsc, win, fps=5.0, max_frames=7)
    assert len(capped) == 7
    with pytest.raises(ValueError, match="fps"):
        decode_windows(ntsc, win, fps=0.0)


def test_fps_thins_each_window_from_its_own_start(ntsc):
    wins = [VideoWindow(0.0, 2.0, CropSpec(mode="full")), VideoWindow(0.25, 1.25, CropSpec(mode="full"))]
    (a, b), (ta, tb) = decode_windows(ntsc, wins, fps=4.0, return_times=True)
    assert len(a) == 8 and len(b) == 4
    assert tb[0] >= 0.25 - 1e-6 and tb[0] < 0.25 + 1 / 29.97 + 1e-6
    assert np.all(np.diff(np.floor((tb - 0.25) * 4 + 1e-6)) == 1)


def test_extraction_key_includes_the_frame_rate_only_when_set():
    enc = build_encoder("tiny-clip")
    from giamic.features import feature_key

    base = ExtractOptions()
    assert "video_fps" not in base.key_settings("video")  # caches made before the setting keep their key
    two = ExtractOptions(video_fps=2)
    assert two.key_settings("video")["video_fps"] == 2.0
    assert "video_fps" not in two.key_settings("text")
    keys = {feature_key(enc, base), feature_key(enc, two), feature_key(enc, ExtractOptions(video_fps=5))}
    assert len(keys) == 3
    with pytest.raises(ConfigError, match="video_fps"):
        ExtractOptions(video_fps=-1)


def test_model_directory_records_the_frame_rate_and_old_ones_read_as_native():
    pre = Preprocessing(lengths={"video": 12}, video=VideoPreprocessing(max_frames=180, fps=2.0))
    d = pre.to_dict()
    assert d["video"]["fps"] == 2.0
    assert Preprocessing.from_dict(d).video.fps == 2.0
    native = Preprocessing(lengths={"video": 180}).to_dict()
    assert "fps" not in native["video"]  # the default writes what older versions wrote
    assert Preprocessing.from_dict(native).video.fps is None
    bad = dict(d, video=dict(d["video"], fps=0))
    with pytest.raises(ModelDirError, match="fps"):
        Preprocessing.from_dict(bad)


def test_old_model_directory_fixture_reads_native_rate():
    from pathlib import Path

    from giamic.modeldir import read_pipeline

    spec: PipelineSpec = read_pipeline(Path(__file__).parent / "data" / "modeldir_v1" / "model")
    assert spec.preprocessing.video.fps is None


def test_training_config_checks_the_frame_rate():
    from giamic.train.config import load_config

    cfg = load_config("tiny", ["data.video_fps=2"])
    assert cfg.data.video_fps == 2.0
    assert cfg.fingerprint() != load_config("tiny").fingerprint()  # a unit at another rate is another unit
    with pytest.raises(ConfigError, match="video_fps"):
        load_config("tiny", ["data.video_fps=-3"])


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (3, 120, 160, 3), dtype=np.uint8)


def test_clip_execution_enters_the_identity_and_stays_close_to_fp32(frames):
    fp32 = build_encoder("tiny-clip")
    assert "execution" not in fp32.identity()["settings"]  # fp32 identities are those of older versions
    f32, m32 = fp32.encode([frames])
    for ex, cos_min in (("bf16", 0.99), ("int8", 0.98)):
        enc = build_encoder("tiny-clip", execution=ex)
        ident = enc.identity()
        assert ident["settings"]["execution"] == ex
        assert ident["weights_sha256"] == fp32.identity()["weights_sha256"]  # same weights, other execution
        f, m = enc.encode([frames])
        assert f.dtype == torch.float32 and f.shape == f32.shape and torch.equal(m, m32)
        cos = torch.nn.functional.cosine_similarity(f[0], f32[0], dim=-1)
        assert cos.min() > cos_min, (ex, cos)
        assert not torch.equal(f, f32)  # it really ran another way
        if ex == "bf16":  # the bf16 copy gives exactly what autocast over the fp32 weights gives
            from giamic.features.image import clip_normalize

            pix = clip_normalize(fp32.preprocess([frames])["pixels"], fp32.settings.image)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                auto = fp32.model(pixel_values=pix).image_embeds.float()
            assert torch.equal(auto, f[0])
    with pytest.raises(ValueError, match="execution"):
        build_encoder("tiny-clip", execution="fp8")


def test_clip_execution_gives_its_own_cache_key():
    from giamic.features import feature_key

    keys = {feature_key(build_encoder("tiny-clip", execution=ex)) for ex in ("fp32", "bf16", "int8")}
    assert len(keys) == 3


def test_prediction_uses_the_recorded_rate_and_logs_an_override(tmp_path, ntsc, caplog):
    from test_inference import make_model_dir

    from giamic.inference import PredictOptions, Predictor
    from giamic.inference.inputs import InputItem

    md = make_model_dir(tmp_path / "v", "V")
    spec_path = md / "pipeline.json"
    import json

    d = json.loads(spec_path.read_text())
    d["preprocessing"]["video"]["fps"] = 2.0
    spec_path.write_text(json.dumps(d))
    p = Predictor.load(md)
    assert p.models[0].video_pre.fps == 2.0
    with caplog.at_level(logging.WARNING, logger="giamic"):
        trained = p.load_item(InputItem(ntsc), PredictOptions())
        assert len(trained.frames) == 12 and not caplog.records
        native = p.load_item(InputItem(ntsc), PredictOptions(video_fps=0))
        assert len(native.frames) == 180
        five = p.load_item(InputItem(ntsc), PredictOptions(video_fps=5))
        assert len(five.frames) == 30
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2 and "trained at 2 frames/s" in notes[0] and "native" in notes[0]
    r = p.predict_file(ntsc, PredictOptions(video_fps=5))
    assert r.frames == 30


def test_predict_cli_options(tmp_path, ntsc, capsys):
    import json

    from test_inference import make_model_dir

    from giamic.cli import main

    md = make_model_dir(tmp_path / "v", "V")
    rc = main(["predict", str(ntsc), "--model", str(md), "--video-fps", "3", "--clip-execution", "bf16",
               "--json", "--no-progress"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["frames"] == 18 and out[0]["label"] in ("neu", "ang", "hap", "sad")
    assert main(["predict", str(ntsc), "--model", str(md), "--video-fps", "-1"]) == 2
    capsys.readouterr()
    assert main(["predict", str(ntsc), "--model", str(md), "--cpu-fast", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["frames"] == 12  # 2 frames/s of the 6-s window
