"""A model directory written by an earlier giamic (``tests/data/modeldir_v1``, format version 1)
still loads and gives the probabilities recorded when it was written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "data" / "modeldir_v1"


def test_old_model_directory_predicts_the_recorded_probabilities():
    from giamic.inference import Predictor

    expected = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
    arrays = np.load(FIXTURE / "inputs.npz")
    p = Predictor.load(FIXTURE / "model")
    assert p.classes == expected["classes"] == ["neu", "ang", "hap", "sad"]
    assert p.models[0].modalities == ["video", "speech", "text"] and p.models[0].modes["speech"] == "finetune"
    assert p.models[0].lengths == {"video": 8, "speech": 99, "text": 32}
    seen = []
    for n, rec in enumerate(expected["inputs"]):
        r = p.predict_raw(frames=arrays["frames"][n], wave=arrays["waves"][n].astype(np.float32) / 32768.0,
                          text=rec["text"])
        got = [r.probabilities[c] for c in expected["classes"]]
        want = [rec["probabilities"][c] for c in expected["classes"]]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        assert r.label == rec["label"]
        seen.append(got)
    # The two inputs give different probabilities: the comparison is not between constants.
    assert np.abs(np.subtract(*seen)).max() > 5e-3


def test_old_model_directory_loads_with_its_recorded_facts():
    from giamic.modeldir import load_model_dir

    md = load_model_dir(FIXTURE / "model")
    assert md.classes == ["neu", "ang", "hap", "sad"]
    assert md.pipeline["preprocessing"]["video"]["crop_mode"] == "fixed_window"
    assert md.pipeline["training"]["fold"] == "fold1" and md.pipeline["training"]["best_epoch"] == 1
    assert md.speech_encoder_state is not None and md.model.config.d_model == 16
    assert md.pipeline["encoders"]["video"]["feature_key"] == "tiny-clip-untrained-4e2b6384ed0b"
    with pytest.raises(Exception):
        load_model_dir(FIXTURE)  # the fixture folder itself is not a model directory
