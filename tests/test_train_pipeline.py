"""The whole pipeline on a small generated corpus, through the command line: corpus → prepare →
extract (tiny untrained encoders, MiniLM) → ``giamic cv`` / ``giamic train`` → report, plots,
model directories."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from giamic.cli import main
from giamic.modeldir import load_model_dir
from giamic.train.report import read_predictions


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """A 160-utterance demo corpus, prepared, with cached features: the demo experiment's data
    steps (``giamic.experiments.runner.prepare_data``) on a smaller corpus with 4 frames a clip."""
    from giamic.experiments.runner import prepare_data
    from giamic.experiments.spec import load_experiment

    root = tmp_path_factory.mktemp("demo")
    exp = load_experiment("demo", {"data": {"corpus": {"seed": 3, "n_per_dialog": 8, "fps": 5.0, "size": [240, 160]}},
                                   "recipe": {"overrides": ["data.max_frames=4"]}})
    keys = prepare_data(exp, root).keys
    sets = [f"encoders.{m}_key={k}" for m, k in keys.items()]
    return root, sets


def _args(sets):
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def full_run(demo_data):
    """``giamic cv`` of the full model over the five folds (shared by the report and t-SNE tests)."""
    root, sets = demo_data
    out = root / "runs" / "full"
    rc = main(["cv", str(root / "data"), "--config", "demo", "--variant", "full", "--out", str(out), *_args(sets)])
    assert rc == 0
    return out


def test_cv_report_matches_predictions_and_beats_chance(demo_data, full_run, capsys):
    root, sets = demo_data
    out = full_run
    report = json.loads((out / "report.json").read_text())
    classes = report["classes"]
    assert report["complete"] and len(report["folds"]) == 5
    all_y, all_p = [], []
    for f in report["folds"]:
        pred = read_predictions(out / f["predictions"], classes)
        y, p = pred["label"], pred["probs"].argmax(1)
        assert list(p) == list(pred["pred"])  # the stored class is the argmax of the stored probabilities
        np.testing.assert_allclose(pred["probs"].sum(1), 1.0, atol=1e-5)
        assert f["wa"] == pytest.approx(accuracy_score(y, p)) and f["ua"] == pytest.approx(balanced_accuracy_score(y, p))
        assert f["n"] == len(y)
        all_y += list(y)
        all_p += list(p)
    s = report["summary"]
    assert s["pooled"]["wa"] == pytest.approx(accuracy_score(all_y, all_p))
    assert s["pooled"]["ua"] == pytest.approx(balanced_accuracy_score(all_y, all_p))
    assert s["folds"]["ua"]["mean"] == pytest.approx(np.mean([f["ua"] for f in report["folds"]]))
    # every utterance of the corpus is tested exactly once
    ids = [u for f in report["folds"] for u in read_predictions(out / f["predictions"], classes)["utt_id"]]
    assert len(ids) == len(set(ids)) == 160
    # clearly better than chance: majority-class WA and 25 % UA, by 15 points
    majority = max(np.bincount(all_y)) / len(all_y)
    assert s["pooled"]["wa"] > majority + 0.15 and s["pooled"]["ua"] > 0.25 + 0.15
    for name in ("report.md", "confusion.png", "curves.png", "config.yaml"):
        assert (out / name).stat().st_size > 0
    assert (out / "report.md").read_text().count("| 0 | fold") == 5
    md = load_model_dir(out / "seed0" / "fold1" / "model")
    assert md.classes == classes and md.pipeline["encoders"]["text"]["name"] == "minilm"
    # The side-crop rule training used (IEMOCAP layout: the fixed windows) is recorded for predict --side.
    assert md.pipeline["preprocessing"]["video"]["crop_mode"] == "fixed_window"
    # Rerunning the command finds every unit done and rewrites the same report.
    assert main(["cv", str(root / "data"), "--config", "demo", "--variant", "full", "--out", str(out), *_args(sets)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["folds"] == report["folds"]
    assert "done earlier" in capsys.readouterr().err


def test_train_one_fold_with_online_speech_fine_tuning(demo_data):
    root, sets = demo_data
    out = root / "runs" / "S-finetune"
    sets = [s for s in sets if not s.startswith("encoders.speech_key")]
    rc = main(["train", str(root / "data"), "--config", "demo", "--variant", "S", "--fold", "fold2", "--out", str(out),
               "--set", "encoders.speech_mode=finetune", "--set", "train.max_epochs=2", "--set", "train.batch_size=16",
               *_args(sets)])
    assert rc == 0
    md = load_model_dir(out / "seed0" / "fold2" / "model")
    assert md.pipeline["encoders"]["speech"]["mode"] == "finetune" and md.speech_encoder_state
    assert md.pipeline["preprocessing"]["lengths"]["speech"] == 99  # 2 s of audio -> 99 WavLM frames
    # the fine-tuned encoder moved away from its initial weights
    from giamic.features import build_encoder

    init = build_encoder("tiny-wavlm-untrained", frozen=False, max_samples=32000).state_dict()
    moved = [k for k, v in md.speech_encoder_state.items() if v.dtype.is_floating_point and not np.allclose(v, init[k])]
    assert moved and not any("feature_extractor" in k for k in moved)  # the conv stack stays frozen (docs/features.md)


def test_tsne_figure_from_two_runs(demo_data, full_run, tmp_path):
    root, sets = demo_data
    assert main(["cv", str(root / "data"), "--config", "demo", "--variant", "wo_mic", "--folds", "fold1",
                 "--out", str(root / "runs" / "wo_mic"), *_args(sets)]) == 0
    png = tmp_path / "tsne.png"
    assert main(["tsne", "--gamma0", str(root / "runs" / "wo_mic"), "--gamma", str(full_run), "--fold", "fold1",
                 "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
