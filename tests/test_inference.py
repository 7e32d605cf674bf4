"""``giamic predict`` and the Python API on generated media: inputs, crops, windows, missing
modalities, bad input, checkpoint checks. Model directories are written here with the
model-directory contract's ``save_model_dir`` (``giamic.modeldir``) around tiny untrained encoders (the end-to-end test with a
trained checkpoint is ``test_inference_e2e.py``)."""
from __future__ import annotations

import json
import pickle
import struct
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from giamic.inference import InputError, MissingModalityError, ModelDirError, PredictOptions, Predictor, Window

SR = 16000


# ------------------------------------------------------------------------------------------ media
def tone(seconds: float, freq: float = 220.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.2 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def make_media(path: Path, seconds: float = 3.0, video: bool = True, audio: bool = True, size=(320, 240),
               fps: int = 30, halves: bool = False, wave: np.ndarray | None = None) -> Path:
    """A small file: moving gray frames (or red-left/blue-right halves) and a 16 kHz PCM tone."""
    w, h = size
    with av.open(str(path), "w") as c:
        vs = None
        if video:
            vs = c.add_stream("mpeg4", rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if audio:
            a = c.add_stream("pcm_s16le", rate=SR)
            a.layout = "mono"
        if video:
            for i in range(int(seconds * fps)):
                img = np.full((h, w, 3), (40 + 4 * i) % 255, np.uint8)
                if halves:
                    img[:, : w // 2] = (220, 20, 20)
                    img[:, w // 2 :] = (20, 20, 220)
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
        if audio:
            x = tone(seconds) if wave is None else wave
            pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
            for s in range(0, len(pcm), 1600):
                f = av.AudioFrame.from_ndarray(pcm[None, s : s + 1600], format="s16", layout="mono")
                f.sample_rate, f.pts = SR, s
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def make_model_dir(directory: Path, variant: str = "full", crop_mode: str = "fixed_window") -> Path:
    """A model directory (``giamic.modeldir``) with tiny untrained encoders (random weights)."""
    from giamic import GIAMIC, GIAMICConfig
    from giamic.features import build_encoder
    from giamic.modeldir import (AudioPreprocessing, EncoderRecord, PipelineSpec, Preprocessing, TextPreprocessing,
                                 VideoPreprocessing, save_model_dir)

    names = {"video": "tiny-clip", "speech": "tiny-wavlm", "text": "tiny-roberta"}
    cfg0 = GIAMICConfig.tiny(variant)
    encs = {m: build_encoder(names[m]) for m in cfg0.modalities}
    cfg = GIAMICConfig.tiny(variant, input_dims={m: e.dim for m, e in encs.items()})
    torch.manual_seed(1)
    model = GIAMIC(cfg).eval()
    lengths = {"video": 180, "speech": 299, "text": 64}
    pipe = PipelineSpec(
        classes=("neu", "ang", "hap", "sad"),
        variant=variant,
        modalities=cfg.modalities,
        encoders={
            m: EncoderRecord(name=e.name, identity=e.identity(), dim=e.dim,
                             mode="finetune" if m == "speech" else "cached")
            for m, e in encs.items()
        },
        preprocessing=Preprocessing(
            audio=AudioPreprocessing(sr=SR, max_sec=6.0, max_samples=96000, crop="first", normalize=True),
            video=VideoPreprocessing(max_frames=180, max_sec=6.0, crop_mode=crop_mode),
            text=TextPreprocessing(source="gt", max_tokens=64),
            lengths={m: lengths[m] for m in cfg.modalities},
        ),
    )
    return save_model_dir(directory, model, pipe, speech_encoder=encs.get("speech"))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    sub = d / "my clips ü"
    sub.mkdir()
    out = {
        "av": make_media(sub / "clip één.avi", 3.0),
        "av2": make_media(d / "b.mkv", 2.0),
        "halves": make_media(d / "halves.avi", 1.0, audio=False, size=(720, 480), halves=True),
        "video_only": make_media(d / "silent.mp4", 2.0, audio=False),
        "wav": d / "voice.wav",
        "notmedia": d / "notes.mp4",
        "empty_wav": d / "empty.wav",
    }
    sf.write(out["wav"], tone(2.5, 180.0), SR)
    out["notmedia"].write_text("this is not a video\n")
    sf.write(out["empty_wav"], np.zeros(0, np.float32), SR)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {"full": make_model_dir(d / "full"), "ST": make_model_dir(d / "st", "ST")}


@pytest.fixture(scope="module")
def full(models) -> Predictor:
    return Predictor.load(models["full"])


# ------------------------------------------------------------------------------------------ tests
def test_file_prediction_equals_prediction_from_the_same_arrays(full, media):
    r = full.predict_file(media["av"], transcript="I am so happy today")
    assert r.error is None and r.modalities == ["video", "speech", "text"]
    p = np.array(list(r.probabilities.values()))
    assert p.sum() == pytest.approx(1.0, abs=1e-5) and r.label == max(r.probabilities, key=r.probabilities.get)
    assert r.frames == 90 and r.audio_seconds == pytest.approx(3.0, abs=0.01) and r.window == (0.0, 3.0)
    # The same frames/samples given as arrays must give the same probabilities (one code path).
    from giamic.data import CropSpec, VideoWindow, decode_windows

    (frames,) = decode_windows(media["av"], [VideoWindow(0.0, 6.0, CropSpec(mode="full"))])
    with av.open(str(media["av"])) as c:  # PCM in the AVI: the exact samples written
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float32) / 32768
    raw = full.predict_raw(frames=frames, wave=pcm, text="I am so happy today")
    assert raw.probabilities == pytest.approx(r.probabilities, abs=1e-5)
    # A different transcript changes the answer: the text really reaches the model.
    other = full.predict_file(media["av"], transcript="zzzz qqqq xxxx")
    assert other.probabilities != pytest.approx(r.probabilities, abs=1e-6)


def test_batch_results_equal_one_by_one_and_failures_do_not_lose_others(full, media):
    paths = [media["av"], media["notmedia"], media["av2"], media["av"].parent / "missing.avi"]
    texts = ["hello", "x", "good morning", "y"]
    batch = full.predict_files(paths, transcripts=texts, batch_size=4)
    assert [r.input for r in batch] == [str(p) for p in paths]
    assert batch[1].error and "not a media file" in batch[1].error and str(paths[1]) in batch[1].error
    assert batch[3].error and "no such file" in batch[3].error
    for i in (0, 2):
        single = full.predict_file(paths[i], transcript=texts[i])
        assert batch[i].probabilities == pytest.approx(single.probabilities, abs=1e-5)


def test_audio_from_a_video_container_equals_the_same_audio_as_wav(media, tmp_path):
    from giamic.inference.inputs import read_audio_window

    x = tone(2.0, 330.0)
    make_media(tmp_path / "v.avi", 2.0, wave=x)
    sf.write(tmp_path / "a.wav", x, SR, subtype="PCM_16")
    w = Window(0.5, 1.5)
    from_video = read_audio_window(tmp_path / "v.avi", w)
    from_wav = read_audio_window(tmp_path / "a.wav", w)
    assert from_video.shape == from_wav.shape == (SR,)
    np.testing.assert_allclose(from_video, from_wav, atol=1e-4)


def test_window_and_crop_options_select_frames_and_region(full, media):
    r = full.predict_file(media["av"], PredictOptions(window=Window(1.0, 2.0)), transcript="ok")
    assert r.frames == 30 and r.audio_seconds == pytest.approx(1.0, abs=1e-3)
    from giamic.inference.inputs import InputItem as item

    vmodel = Predictor.load(make_model_dir(media["halves"].parent / "vmodel", "V"))
    left = vmodel.load_item(item(media["halves"]), PredictOptions(side="L")).frames
    right = vmodel.load_item(item(media["halves"]), PredictOptions(side="R")).frames
    box = vmodel.load_item(item(media["halves"]), PredictOptions(box=(10, 20, 100, 50))).frames
    whole = vmodel.load_item(item(media["halves"]), PredictOptions()).frames
    # IEMOCAP's fixed windows (docs/data.md) on a 720x480 frame: 350x240 boxes; the speaker's half only.
    assert left.shape[1:] == right.shape[1:] == (240, 350, 3) and box.shape[1:] == (50, 100, 3)
    assert whole.shape[1:] == (480, 720, 3)
    assert left[..., 0].mean() > 150 > left[..., 2].mean()  # red half
    assert right[..., 2].mean() > 150 > right[..., 0].mean()  # blue half


def test_missing_modality_uses_a_fitting_model_or_says_what_is_missing(models, media):
    only_full = Predictor.load(models["full"])
    with pytest.raises(MissingModalityError) as e:
        only_full.predict_file(media["wav"], transcript="hello")
    msg = str(e.value)
    assert "has S+T" in msg and "a video track" in msg and "ST" in msg and "baseline_ST" in msg
    with pytest.raises(MissingModalityError, match="--transcript or --asr"):
        only_full.predict_file(media["av"])  # no text
    with pytest.raises(MissingModalityError, match="an audio track"):
        only_full.predict_file(media["video_only"], transcript="hi")
    both = Predictor.load([models["full"], models["ST"]])
    r_audio = both.predict_file(media["wav"], transcript="hello")
    r_video = both.predict_file(media["av"], transcript="hello")
    assert r_audio.modalities == ["speech", "text"] and r_audio.model == str(models["ST"])
    assert r_video.modalities == ["video", "speech", "text"] and r_video.model == str(models["full"])


def test_bad_audio_and_windows_get_clear_errors(models, media):
    st = Predictor.load(models["ST"])
    with pytest.raises(InputError, match="no samples|0 s|holds neither"):
        st.predict_file(media["empty_wav"], transcript="x")
    with pytest.raises(InputError, match="lasts|ends at"):
        st.predict_file(media["wav"], PredictOptions(window=Window(10.0, 12.0)), transcript="x")
    full = Predictor.load(models["full"])
    with pytest.raises(InputError, match="holds no frame|lasts"):
        full.predict_file(media["av"], PredictOptions(window=Window(2.99, 4.0)), transcript="x")
    with pytest.raises(InputError, match="at most 60s"):
        Window(0.0, 7200.0)
    with pytest.raises(InputError, match="after its start"):
        Window(3.0, 2.0)


def _sparse_wav(path: Path, seconds: int) -> None:
    """A WAV header for ``seconds`` of 16-bit mono 16 kHz silence; the data is a sparse hole."""
    n = seconds * SR * 2
    hdr = b"RIFF" + struct.pack("<I", 36 + n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, SR * 2, 2, 16)
    hdr += b"data" + struct.pack("<I", n)
    with open(path, "wb") as f:
        f.write(hdr)
        f.truncate(len(hdr) + n)


def test_two_hour_file_reads_only_the_window(models, tmp_path):
    long_wav = tmp_path / "two hours.wav"
    _sparse_wav(long_wav, 2 * 3600)
    st = Predictor.load(models["ST"])
    tracemalloc.start()
    r = st.predict_file(long_wav, PredictOptions(window=Window(3600.0)), transcript="still there")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.audio_seconds == pytest.approx(6.0) and r.window == (3600.0, 3606.0)
    # Decoding the whole file would take > 400 MB of float32; the window alone is ~0.4 MB.
    assert peak < 64 * 2**20, peak


class _Boom:
    """Unpickling this would create a file: proof that a checkpoint is never unpickled."""

    marker: str = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_bad_checkpoints_are_refused_without_unpickling(models, tmp_path):
    import shutil

    with pytest.raises(ModelDirError, match="not found"):
        Predictor.load(tmp_path / "nope")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    with pytest.raises(ModelDirError, match="pipeline.json"):
        Predictor.load(incomplete)

    pickled = tmp_path / "pickled"
    shutil.copytree(models["full"], pickled)
    boom = _Boom()
    boom.marker = str(tmp_path / "UNPICKLED")
    (pickled / "model.safetensors").write_bytes(pickle.dumps({"w": boom}))
    with pytest.raises(ModelDirError, match="model.safetensors: SHA-256"):  # the recorded hash stops it first
        Predictor.load(pickled)
    pipe = json.loads((pickled / "pipeline.json").read_text())
    del pipe["weights_sha256"]  # as in a directory written before the hashes: the loader itself refuses it
    (pickled / "pipeline.json").write_text(json.dumps(pipe))
    with pytest.raises(ModelDirError, match="cannot load"):
        Predictor.load(pickled)
    assert not (tmp_path / "UNPICKLED").exists()

    other_cfg = tmp_path / "other config"
    shutil.copytree(models["full"], other_cfg)
    cfg = json.loads((other_cfg / "config.json").read_text())
    cfg["d_model"], cfg["fe_ffn"] = 48, 96
    (other_cfg / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="config"):
        Predictor.load(other_cfg)

    other_enc = tmp_path / "other encoder"
    shutil.copytree(models["full"], other_enc)
    pipe = json.loads((other_enc / "pipeline.json").read_text())
    pipe["encoders"]["text"]["identity"]["weights_sha256"] = "0" * 64
    pipe["encoders"]["video"]["identity"]["settings"]["l2norm"] = True
    (other_enc / "pipeline.json").write_text(json.dumps(pipe))
    with pytest.raises(ModelDirError, match="not the one the model was trained with.*weights_sha256"):
        Predictor.load(other_enc)


def test_cli_table_json_lists_and_exit_codes(models, media, tmp_path, capsys):
    from giamic.cli import main

    lst = tmp_path / "inputs list.txt"
    lst.write_text(f"# clips\n{media['av']}\thello there\n{media['notmedia']}\tx\n{media['wav']}\tyes\n", encoding="utf-8")
    rc = main(["predict", "--model", str(models["full"]), "--model", str(models["ST"]), str(lst), "--json", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and len(out) == 3
    assert out[0]["text"] == "hello there" and out[0]["modalities"] == ["video", "speech", "text"]
    assert "error" in out[1] and out[2]["modalities"] == ["speech", "text"]
    assert set(out[0]["probabilities"]) == {"neu", "ang", "hap", "sad"}

    rc = main(["predict", "-m", str(models["full"]), str(media["av"]), "--transcript", "good", "--side", "L", "--no-progress"])
    table = capsys.readouterr().out.splitlines()
    assert rc == 0 and table[0].split()[:2] == ["input", "label"] and str(media["av"]) in table[1]

    tfile = tmp_path / "t.txt"
    tfile.write_text("good\n", encoding="utf-8")
    rc = main(["predict", "-m", str(models["full"]), str(media["av"]), "--transcript-file", str(tfile), "--json", "--no-progress"])
    assert rc == 0 and json.loads(capsys.readouterr().out)[0]["text"] == "good"

    assert main(["predict", "-m", str(tmp_path / "nope"), str(media["av"])]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert main(["predict", "-m", str(models["full"]), str(media["av"]), str(media["av2"]), "--transcript", "x"]) == 2
    assert "one input" in capsys.readouterr().err
    assert main(["predict", "-m", str(models["full"]), str(media["av"]), "--crop-box", "1,2,0,4"]) == 2
    assert "--crop-box" in capsys.readouterr().err
    assert main(["predict", "-m", str(models["full"]), str(media["av"]), "--asr", "large-v9"]) == 2
    assert "large-v9" in capsys.readouterr().err


def test_directory_input_expands_to_media_files(media, tmp_path):
    from giamic.inference.inputs import expand_inputs

    items = expand_inputs([media["av"].parent])
    assert [i.path for i in items] == [media["av"]]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no media file"):
        expand_inputs([empty])


def test_same_weights_from_another_place_are_accepted(models, tmp_path):
    """--encoder-path to a local copy: the recorded source differs, the weights hash does not."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(models["full"], moved)
    pipe = json.loads((moved / "pipeline.json").read_text())
    pipe["encoders"]["text"]["identity"]["source"] = {"name_or_path": "/data/models/elsewhere"}
    (moved / "pipeline.json").write_text(json.dumps(pipe))
    assert Predictor.load(moved).models[0].modalities == ["video", "speech", "text"]
    # Settings are rebuilt from the record; what cannot be rebuilt must still match, e.g. features
    # made by an encoder code version whose output differs from this one's.
    version = pipe["encoders"]["text"]["identity"]["format_version"]
    pipe["encoders"]["text"]["identity"]["format_version"] = version + 1
    (moved / "pipeline.json").write_text(json.dumps(pipe))
    with pytest.raises(ModelDirError, match="format_version"):
        Predictor.load(moved)
    pipe["encoders"]["text"]["identity"]["format_version"] = version
    pipe["encoders"]["text"]["identity"]["settings"]["no_such_setting"] = 3
    (moved / "pipeline.json").write_text(json.dumps(pipe))
    with pytest.raises(ModelDirError, match="cannot build the text encoder"):
        Predictor.load(moved)
