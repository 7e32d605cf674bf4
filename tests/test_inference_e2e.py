"""End to end: a model trained in the test on the demo corpus
(generated media in IEMOCAP's layout) by the training stage, then ``predict`` on the corpus's own
utterance media must give the evaluation path's probabilities for the same test utterances."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["neu", "ang", "hap", "sad"]


E2E_EXPERIMENT = """
name: e2e
data: {source: generated, corpus: {seed: 3, n_per_dialog: 4, sessions: 2, dialogs_per_session: 2, fps: 10,
                                   size: [360, 240]}}
recipe: {preset: tiny, overrides: [encoders.text=tiny-roberta-untrained, train.seeds=0, train.folds=fold1,
                                   train.max_epochs=2]}
extract: [{modality: video}, {modality: speech}, {modality: text}]
rows:
  - {name: full, overrides: [encoders.speech_mode=finetune]}   # the paper's online WavLM
  - {name: ST}                                                 # WavLM frozen and read from the cache
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two models trained by the experiments runner on one generated corpus: V+S+T with WavLM
    fine-tuned online, and S+T with frozen, cached WavLM (the demo's mode)."""
    from giamic.data import load_dataset
    from giamic.experiments.runner import run_experiment
    from giamic.experiments.spec import load_experiment

    root = tmp_path_factory.mktemp("e2e")
    f = root / "e2e.yaml"
    f.write_text(E2E_EXPERIMENT, encoding="utf-8")
    out = root / "IEMOCAP demo é"  # spaces and non-ASCII all the way through
    result = run_experiment(load_experiment(f), out)
    unit = out / "runs" / "full" / "seed0" / "fold1"
    unit_st = out / "runs" / "ST" / "seed0" / "fold1"
    ds = load_dataset(result.data_dir)
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
