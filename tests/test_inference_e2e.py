"""End to end: a model trained in the test on the demo corpus
(generated media in IEMOCAP's layout) by the training stage, then ``predict`` on the corpus's own
utterance media must give the evaluation path's probabilities for the same test utterances."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["neu", "ang", "hap", "sad"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from giamic.data import load_dataset
    from giamic.data.democorpus import make_corpus
    from giamic.data.iemocap import prepare_iemocap
    from giamic.features import build_encoder
    from giamic.features.extract import ExtractOptions, extract
    from giamic.train.config import load_config
    from giamic.train.cv import run_cv

    root = tmp_path_factory.mktemp("e2e")
    corpus = root / "IEMOCAP demo é"  # spaces and non-ASCII all the way through
    info = make_corpus(corpus, seed=3, n_per_dialog=4, sessions=2, dialogs_per_session=2, fps=10, size=(360, 240))
    data = root / "data"
    prepare_iemocap(corpus, data, expected=info.expected_counts(), log=lambda s: None)
    opts = ExtractOptions(progress=False, video_max_frames=16)
    extract(data, build_encoder("tiny-clip"), opts)
    extract(data, build_encoder("tiny-roberta"), opts)
    cfg = load_config("tiny", [
        f"data.data_dir={data}", "encoders.video=tiny-clip-untrained", "encoders.text=tiny-roberta-untrained",
        "encoders.speech=tiny-wavlm-untrained", "encoders.speech_mode=finetune",  # the paper's online WavLM
        "train.seeds=0", "train.folds=fold1", "train.max_epochs=2", "train.progress=false",
    ])
    run_cv(cfg, root / "run")
    # A second model: speech+text only, with WavLM frozen and read from the cache (the demo's mode).
    extract(data, build_encoder("tiny-wavlm", frozen=True, max_samples=32000), opts)
    cfg_st = load_config("tiny", [
        f"data.data_dir={data}", "encoders.text=tiny-roberta-untrained", "encoders.speech=tiny-wavlm-untrained",
        "encoders.speech_mode=cached", "model.variant=ST",
        "train.seeds=0", "train.folds=fold1", "train.max_epochs=2", "train.progress=false",
    ])
    run_cv(cfg_st, root / "run_st")
    unit = root / "run" / "seed0" / "fold1"
    unit_st = root / "run_st" / "seed0" / "fold1"
    ds = load_dataset(data)
    return {"unit": unit, "model": unit / "model", "unit_st": unit_st, "model_st": unit_st / "model", "ds": ds}


def _eval_probs(unit: Path) -> dict[str, np.ndarray]:
    from giamic.train.report import read_predictions

    p = read_predictions(unit / "predictions.csv", CLASSES)
    return {u: p["probs"][i] for i, u in enumerate(p["utt_id"])}


def test_predict_matches_the_evaluation_path_on_the_test_utterances(trained):
    from giamic.inference import PredictOptions, Predictor, Window

    expected = _eval_probs(trained["unit"])
    pipe = json.loads((trained["model"] / "pipeline.json").read_text())
    assert pipe["encoders"]["speech"]["mode"] == "finetune" and (trained["model"] / "speech_encoder.safetensors").is_file()
    p = Predictor.load(trained["model"])
    assert p.classes == CLASSES
    ds = trained["ds"]
    assert len(expected) >= 6
    for utt_id, probs in expected.items():
        u = ds.by_id[utt_id]
        r = p.predict_file(u.avi, PredictOptions(window=Window(u.start, u.end), side=u.side),
                           transcript=u.transcript, audio=u.wav)
        got = np.array([r.probabilities[c] for c in CLASSES])
        # Same code path: equal up to float rounding of batch-dependent kernels (observed < 1e-6;
        # skipping the cache's float16 rounding alone shifts them by ~5e-6).
        np.testing.assert_allclose(got, probs, atol=2e-6, err_msg=utt_id)
        assert r.label == CLASSES[int(np.argmax(probs))]


def test_cli_batch_on_a_list_file_matches_too(trained, tmp_path, capsys):
    """The CLI path: a list file line (video, transcript, utterance wav) with --start/--end/--side.

    Each demo utterance has its own window, so each goes through its own command here."""
    from giamic.cli import main

    expected = _eval_probs(trained["unit"])
    ds = trained["ds"]
    ids = sorted(expected)[:2]
    for utt_id in ids:
        u = ds.by_id[utt_id]
        lst = tmp_path / f"{utt_id}.lst"
        lst.write_text(f"{u.avi}\t{u.transcript}\t{u.wav}\n", encoding="utf-8")
        rc = main(["predict", "--model", str(trained["model"]), str(lst), "--start", str(u.start), "--end", str(u.end),
                   "--side", u.side, "--json", "--no-progress"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0, out
        got = np.array([out[0]["probabilities"][c] for c in CLASSES])
        np.testing.assert_allclose(got, expected[utt_id], atol=2e-6)


def test_wrong_side_changes_the_prediction_inputs(trained):
    """The crop reaches the model: the other actor's half gives other probabilities."""
    from giamic.inference import PredictOptions, Predictor, Window

    p = Predictor.load(trained["model"])
    u = trained["ds"].by_id[sorted(_eval_probs(trained["unit"]))[0]]
    other = "R" if u.side == "L" else "L"
    a = p.predict_file(u.avi, PredictOptions(window=Window(u.start, u.end), side=u.side), transcript=u.transcript, audio=u.wav)
    b = p.predict_file(u.avi, PredictOptions(window=Window(u.start, u.end), side=other), transcript=u.transcript, audio=u.wav)
    assert a.probabilities != pytest.approx(b.probabilities, abs=1e-6)


def test_cached_speech_model_on_audio_files_and_model_choice(trained):
    """An S+T model with cached (frozen) WavLM features, fed the utterance wavs alone; given next to
    the V+S+T model, each input goes to the model whose modalities it has."""
    from giamic.inference import PredictOptions, Predictor, Window

    expected = _eval_probs(trained["unit_st"])
    pipe = json.loads((trained["model_st"] / "pipeline.json").read_text())
    assert pipe["modalities"] == ["speech", "text"] and pipe["encoders"]["speech"]["mode"] == "cached"
    both = Predictor.load([trained["model"], trained["model_st"]])
    ds = trained["ds"]
    ids = sorted(expected)
    results = both.predict_files([ds.by_id[u].wav for u in ids], transcripts=[ds.by_id[u].transcript for u in ids])
    for utt_id, r in zip(ids, results):
        assert r.error is None and r.model == str(trained["model_st"])
        got = np.array([r.probabilities[c] for c in CLASSES])
        np.testing.assert_allclose(got, expected[utt_id], atol=2e-6, err_msg=utt_id)
    u = ds.by_id[ids[0]]
    video = both.predict_file(u.avi, PredictOptions(window=Window(u.start, u.end), side=u.side),
                              transcript=u.transcript, audio=u.wav)
    assert video.model == str(trained["model"])
