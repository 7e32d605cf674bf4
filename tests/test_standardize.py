"""Feature standardisation (``data.standardize``): fitted on each unit's training split only,
stored in the model directory, applied identically by prediction, on by default for imported
features; and the reason it exists: unscaled imported features sink the model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from giamic.data import Utterance, folds_leave_one_group_out
from giamic.data.dataset import write_dataset
from giamic.features.importer import import_features
from giamic.modeldir import Standardization, load_model_dir
from giamic.train.config import load_config
from giamic.train.cv import run_cv

CLASSES = ["neu", "ang", "hap", "sad"]


def imported_corpus(root: Path, n_per_group: int = 40, groups: int = 3, seed: int = 0, dim: int = 16,
                    plant_group: str | None = None) -> Path:
    """A prepared dataset (no media) with imported per-clip video and speech features, as a user's
    own facial action units and MFCC statistics would be: half the dimensions carry the class in
    values below one, the other half are noise with offsets and spreads in the hundreds. A linear
    model on standardised features separates the classes well. ``plant_group``: that group's
    features are 1e4 everywhere (a test fold nobody may use for the statistics)."""
    rng = np.random.default_rng(seed)
    utts, feats = [], {"video": {}, "speech": {}}
    centres = {m: rng.normal(scale=0.3, size=(len(CLASSES), dim // 2)) for m in feats}
    for g in range(groups):
        for i in range(n_per_group):
            uid, c = f"G{g}_d{i % 4}_u{i:03d}", (i + g) % len(CLASSES)
            utts.append(Utterance(utt_id=uid, label=CLASSES[c], group=f"G{g}", dialog=f"G{g}_d{i % 4}"))
            for m in feats:
                small = centres[m][c] + rng.normal(scale=0.2, size=dim // 2)
                big = 500.0 + rng.normal(scale=300.0, size=dim // 2)
                x = np.concatenate([small, big])[None, :].astype(np.float32)
                feats[m][uid] = np.full_like(x, 1e4) if f"G{g}" == plant_group else x
    data = root / "data"
    write_dataset(data, name="imported", classes=CLASSES, utterances=utts, folds=folds_leave_one_group_out(utts),
                  fold_scheme="leave_one_group_out", source="test")
    for m, fs in feats.items():
        src = root / f"src-{m}"
        src.mkdir()
        for uid, x in fs.items():
            np.save(src / f"{uid}.npy", x)
        import_features(data, f"my-{m}", m, src)
    return data


def config(data: Path, *sets: str):
    return load_config("tiny", ["model.variant=VS", "encoders.video=my-video", "encoders.speech=my-speech",
                                "encoders.speech_mode=cached", "model.fe_dropout=0", "model.attn_dropout=0",
                                "train.batch_size=16", "train.max_epochs=12", "train.patience=12", "train.lr=3e-3",
                                "train.seeds=0", *sets], data_dir=str(data))


def test_fit_and_apply_by_hand():
    a = np.array([[1.0, 10.0], [3.0, 10.0]], np.float32)
    st = Standardization.fit({"video": [a, np.zeros((0, 2), np.float32)]})
    assert np.allclose(st.mean["video"], [2.0, 10.0]) and np.allclose(st.std["video"], [1.0, 1.0])  # constant: 1
    assert np.allclose(st.apply("video", a), [[-1.0, 0.0], [1.0, 0.0]])
    x = torch.tensor([[[1.0, 10.0], [7.0, 7.0]]])
    out = st.apply_padded("video", x, torch.tensor([[True, False]]))
    assert torch.allclose(out, torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]]))  # padding stays zero
    back = Standardization.from_tensors(st.to_tensors())
    assert np.array_equal(back.mean["video"], st.mean["video"]) and st.apply("text", a).dtype == np.float32


def test_statistics_come_from_the_training_split_only(tmp_path):
    """Group G0 is fold1's test part and holds 1e4 everywhere; the statistics of fold1 are those of
    its training split (validation excluded) exactly, and the model directory stores them."""
    data = imported_corpus(tmp_path, n_per_group=16, plant_group="G0")
    cfg = config(data, "train.folds=fold1", "train.max_epochs=1")
    run_cv(cfg, tmp_path / "run")
    unit = tmp_path / "run" / "seed0" / "fold1"
    md = load_model_dir(unit / "model")
    assert md.spec.standardization_file == "standardization.safetensors" and cfg.data.standardize == "imported"
    st = md.standardization
    assert set(st.modalities) == {"video", "speech"}
    assert float(np.abs(st.mean["video"]).max()) < 2000  # the planted 1e4 never reached the mean
    from giamic.data import load_dataset
    from giamic.features import FeatureStore
    from giamic.train.splits import make_fold_split

    ds = load_dataset(data)
    fold = ds.fold("fold1")
    split = make_fold_split(fold.name, 1, list(fold.train), list(fold.test),
                            {u: ds.by_id[u].label_id(ds.classes) for u in fold.train}, seed=0,
                            mode=cfg.data.val_mode, fraction=cfg.data.val_fraction,
                            groups={u.utt_id: u.dialog for u in ds.utterances})
    store = FeatureStore.open(data, "my-video")
    train = np.concatenate([store[u].astype(np.float64) for u in split.train])
    assert np.allclose(st.mean["video"], train.mean(0), rtol=1e-5, atol=1e-3)
    assert np.allclose(st.std["video"], train.std(0), rtol=1e-4)
    with_val = np.concatenate([store[u].astype(np.float64) for u in list(split.train) + list(split.val)])
    assert not np.allclose(st.mean["video"], with_val.mean(0), rtol=1e-6, atol=1e-6)  # validation left out
    assert json.loads((tmp_path / "run" / "report.json").read_text())["config"]["data"]["standardize"] == "imported"


SMALL = """
name: std
data: {source: generated, corpus: {seed: 4, n_per_dialog: 4, sessions: 2, dialogs_per_session: 2, fps: 5,
                                   size: [240, 160]}}
recipe: {preset: tiny, overrides: [encoders.text=tiny-roberta-untrained, train.seeds=0, train.folds=fold1,
                                   train.max_epochs=2, data.audio_max_sec=1.0, data.max_tokens=16]}
extract: [{modality: speech}, {modality: text}]
rows: [{name: ST, overrides: [data.standardize=on]}]
"""


def test_prediction_reproduces_the_evaluation_path(tmp_path):
    """Encoder features standardised on request (``data.standardize=on``): ``predict`` on the
    utterances' own media, through the statistics stored in the model directory, gives the
    probabilities the evaluation wrote."""
    from giamic.experiments.runner import run_experiment
    from giamic.experiments.spec import load_experiment
    from giamic.inference import PredictOptions, Predictor
    from giamic.train.report import read_predictions

    f = tmp_path / "std.yaml"
    f.write_text(SMALL, encoding="utf-8")
    result = run_experiment(load_experiment(f), tmp_path / "out")
    unit = tmp_path / "out" / "runs" / "ST" / "seed0" / "fold1"
    md = load_model_dir(unit / "model")
    assert set(md.standardization.modalities) == {"speech", "text"}
    import yaml

    assert yaml.safe_load((unit.parent.parent / "config.yaml").read_text())["data"]["standardize"] == "on"
    p = read_predictions(unit / "predictions.csv", CLASSES)
    pred = Predictor.load(unit / "model")
    from giamic.data import load_dataset

    ds = load_dataset(result.data_dir)
    assert len(p["utt_id"]) >= 4
    for i, utt_id in enumerate(p["utt_id"]):
        u = ds.by_id[utt_id]
        r = pred.predict_file(u.wav, PredictOptions(), transcript=u.transcript)
        got = np.array([r.probabilities[c] for c in CLASSES])
        np.testing.assert_allclose(got, p["probs"][i], atol=2e-6, err_msg=utt_id)
    # Without the stored statistics the same model gives other probabilities: they are applied.
    pred.models[0].standardization = None
    u = ds.by_id[p["utt_id"][0]]
    raw = pred.predict_file(u.wav, PredictOptions(), transcript=u.transcript)
    assert np.abs(np.array([raw.probabilities[c] for c in CLASSES]) - p["probs"][0]).max() > 1e-3


def test_standardisation_beats_raw_unscaled_features(tmp_path):
    """The finding behind the setting: on imported features with scales in the hundreds next to
    ones below one, the same model trained on standardised features beats itself on raw ones (and
    comes near a logistic regression on standardised features)."""
    data = imported_corpus(tmp_path, n_per_group=40)
    on = run_cv(config(data), tmp_path / "on")["summary"]["folds"]["ua"]["mean"]
    off = run_cv(config(data, "data.standardize=off"), tmp_path / "off")["summary"]["folds"]["ua"]["mean"]
    print(f"UA standardised {on:.3f}, raw {off:.3f}")
    assert on > off + 0.15 and on > 0.6

