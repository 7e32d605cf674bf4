"""The training unit: exact resume, no leakage, selection on validation only."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors.torch import load_file
from train_helpers import pipeline_for, synthetic_dataset, synthetic_inputs, tiny_config

from giamic.train import checkpoint as ckpt
from giamic.train.distributed import DistInfo
from giamic.errors import TrainError
from giamic.train.recipe import (Callback, InterruptAfter, Interrupted, TrainingRecipe, UnitConfigChanged, UnitSpec,
                                 train_unit)
from giamic.train.report import read_predictions
from giamic.train.splits import LeakageError


def _spec(ds, fold_index=0, seed=0):
    f = ds.folds[fold_index]
    return UnitSpec(seed=seed, fold_name=f.name, fold_number=fold_index + 1, test_group=f.test_group,
                    train_ids=list(f.train), test_ids=list(f.test))


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_per_group=16)


def test_resumed_run_equals_uninterrupted_run(tmp_path, data):
    ds, feats = data
    # A resume checkpoint after every epoch (the default cadence is by time: none in a run this short).
    cfg = tiny_config("train.max_epochs=3", "train.keep_checkpoints=true", "train.checkpoint_every=1")
    spec = _spec(ds)
    full = train_unit(cfg, synthetic_inputs(ds, feats), spec, tmp_path / "a", DistInfo(), pipeline_for(synthetic_inputs(ds, feats)))

    # Killed in the middle of epoch 2 (8 optimizer steps per epoch here) ...
    inputs = synthetic_inputs(ds, feats)
    killed = TrainingRecipe(cfg, inputs, spec, tmp_path / "b", DistInfo(), pipeline_for(inputs),
                            callbacks=[InterruptAfter(11)])
    with pytest.raises(Interrupted):
        killed.run()
    assert killed.state.global_step == 11
    assert ckpt.read_state(tmp_path / "b" / "checkpoint")["epoch"] == 1
    assert not (tmp_path / "b" / "result.json").exists()
    # ... and run again: it must continue at epoch 2, not start over.
    epochs = []
    resumed = train_unit(cfg, inputs, spec, tmp_path / "b", DistInfo(), pipeline_for(inputs),
                         on_epoch=lambda row: epochs.append(row["epoch"]))
    assert epochs == [2, 3]

    for key in ("wa", "ua", "macro_f1", "confusion", "best_epoch", "epochs_run", "best_val"):
        assert resumed[key] == full[key], key
    pa = read_predictions(tmp_path / "a" / "predictions.csv", ds.classes)
    pb = read_predictions(tmp_path / "b" / "predictions.csv", ds.classes)
    assert pa["utt_id"] == pb["utt_id"]
    np.testing.assert_array_equal(pa["probs"], pb["probs"])
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert all(bool((wa[k] == wb[k]).all()) for k in wa)
    # Per-epoch logs agree too (the resumed run keeps the first epoch's row from its checkpoint).
    la = (tmp_path / "a" / "log.csv").read_text().splitlines()
    lb = (tmp_path / "b" / "log.csv").read_text().splitlines()
    strip = lambda lines: [",".join(x for i, x in enumerate(l.split(",")) if i not in (9, 10, 11)) for l in lines]  # noqa: E731
    assert strip(la) == strip(lb)  # identical except the wall-clock columns


def test_finished_unit_is_skipped_and_config_change_refused(tmp_path, data):
    ds, feats = data
    inputs = synthetic_inputs(ds, feats)
    cfg = tiny_config("train.max_epochs=1")
    first = train_unit(cfg, inputs, _spec(ds), tmp_path, DistInfo(), pipeline_for(inputs))
    assert not (tmp_path / "checkpoint").exists()  # removed once the unit is done (keep_checkpoints=false)
    calls = []
    again = train_unit(cfg, inputs, _spec(ds), tmp_path, DistInfo(), pipeline_for(inputs), on_epoch=calls.append)
    assert again == first and calls == []
    with pytest.raises(UnitConfigChanged) as e:
        train_unit(tiny_config("train.max_epochs=1", "train.lr=0.5"), inputs, _spec(ds), tmp_path, DistInfo(),
                   pipeline_for(inputs))
    assert isinstance(e.value, TrainError) and e.value.path == tmp_path  # one line, naming the unit


def test_no_test_utterance_reaches_training_or_selection(tmp_path, data):
    ds, feats = data
    inputs = synthetic_inputs(ds, feats, record_access=True)
    spec = _spec(ds, fold_index=2)
    seen_at_epoch_end = []
    result = train_unit(tiny_config("train.max_epochs=2"), inputs, spec, tmp_path, DistInfo(), pipeline_for(inputs),
                        on_epoch=lambda row: seen_at_epoch_end.append(set(inputs.accessed["test"])))
    test = set(spec.test_ids)
    assert test and inputs.accessed["train"] and inputs.accessed["val"]
    assert not (inputs.accessed["train"] | inputs.accessed["val"]) & test
    assert not inputs.accessed["train"] & inputs.accessed["val"]
    # The test session is read only after the last epoch (selection) is over, and all of it.
    assert seen_at_epoch_end == [set(), set()]
    assert inputs.accessed["test"] == test
    assert result["n"] == len(test) and result["n_train"] + result["n_val"] == len(spec.train_ids)


def test_selected_epoch_is_the_best_validation_ua(tmp_path, data):
    ds, feats = data
    inputs = synthetic_inputs(ds, feats)
    result = train_unit(tiny_config("train.max_epochs=4", "train.patience=10", "train.lr=3e-3"), inputs, _spec(ds, 1),
                        tmp_path, DistInfo(), pipeline_for(inputs))
    rows = [r for r in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    val_ua = [float(r.split(",")[header.index("val_ua")]) for r in rows]
    val_loss = [float(r.split(",")[header.index("val_loss")]) for r in rows]
    best = max(range(len(val_ua)), key=lambda i: (val_ua[i], -val_loss[i])) + 1
    assert result["best_epoch"] == best
    saved = json.loads((tmp_path / "model" / "pipeline.json").read_text())
    assert saved["training"]["best_epoch"] == best


def test_early_stopping_stops_after_patience(tmp_path, data):
    ds, feats = data
    inputs = synthetic_inputs(ds, feats)
    # lr 0: nothing ever improves after epoch 1, so patience 2 stops at epoch 3.
    result = train_unit(tiny_config("train.max_epochs=10", "train.patience=2", "train.lr=1e-12"), inputs, _spec(ds),
                        tmp_path, DistInfo(), pipeline_for(inputs))
    assert result["early_stopped"] and result["epochs_run"] == 3 and result["best_epoch"] == 1


def test_recipe_methods_one_by_one_match_run(tmp_path, data):
    ds, feats = data
    cfg = tiny_config("train.max_epochs=1")
    spec = _spec(ds, 1)
    inputs = synthetic_inputs(ds, feats, record_access=True)
    recipe = TrainingRecipe(cfg, inputs, spec, tmp_path / "steps", DistInfo(), pipeline_for(inputs))
    with pytest.raises(TrainError, match="set up"):
        recipe.train_epoch()
    recipe.setup()
    with pytest.raises(TrainError, match="training is not finished"):  # the test part stays sealed
        recipe.test()
    assert not recipe.split.test_opened and not inputs.accessed["test"]

    stats = recipe.train_epoch()
    n_train = len(recipe.split.train)
    assert recipe.state.global_step == math.ceil(n_train / cfg.train.batch_size)
    assert stats.n_seen == n_train and math.isfinite(stats.mean("train_loss")) and stats.mean("train_loss") > 0
    val = recipe.validate()
    assert list(val) == ["val_loss", "val_ce", "val_wa", "val_ua", "val_macro_f1"]
    assert all(math.isfinite(v) for v in val.values()) and 0 <= val["val_ua"] <= 1 and 0 <= val["val_wa"] <= 1
    assert inputs.accessed["val"] == set(recipe.split.val) and not inputs.accessed["test"]

    row = recipe.end_epoch(stats, val)
    assert row["epoch"] == 1 and row["best"] == 1 and row["val_ua"] == val["val_ua"]
    assert (recipe.state.epoch, recipe.state.best_epoch, recipe.state.bad_epochs) == (1, 1, 0)
    assert recipe.training_done and (tmp_path / "steps" / "best.safetensors").is_file()
    recipe.save_checkpoint()
    assert ckpt.read_state(tmp_path / "steps" / "checkpoint")["epoch"] == 1
    result = recipe.test()
    assert inputs.accessed["test"] == set(spec.test_ids) and result["n"] == len(spec.test_ids)
    with pytest.raises(LeakageError):  # read once
        recipe.test()

    # The same steps through run(): the same result and predictions.
    whole = train_unit(cfg, synthetic_inputs(ds, feats), spec, tmp_path / "run", DistInfo(),
                       pipeline_for(synthetic_inputs(ds, feats)))
    assert whole == result
    assert (tmp_path / "run" / "predictions.csv").read_text() == (tmp_path / "steps" / "predictions.csv").read_text()


def test_callbacks_see_every_step_and_epoch_and_no_environment_variable_interrupts(tmp_path, data, monkeypatch):
    ds, feats = data
    cfg = tiny_config("train.max_epochs=2")

    class Record(Callback):
        def __init__(self):
            self.steps, self.rows = [], []

        def on_step(self, recipe, step):
            self.steps.append(step)

        def on_epoch_end(self, recipe, row):
            self.rows.append((row["epoch"], recipe.state.epoch))

    # The variable older versions read inside the loop is no hook any more.
    monkeypatch.setenv("GIAMIC_INTERRUPT_AFTER_STEPS", "1")
    rec = Record()
    inputs = synthetic_inputs(ds, feats)
    recipe = TrainingRecipe(cfg, inputs, _spec(ds), tmp_path / "a", DistInfo(), pipeline_for(inputs), callbacks=[rec])
    result = recipe.run()
    per_epoch = math.ceil(result["n_train"] / cfg.train.batch_size)
    assert rec.steps == list(range(1, 2 * per_epoch + 1)) and rec.rows == [(1, 1), (2, 2)]

    # InterruptAfter counts the steps of its own run: killed in epoch 1, no checkpoint yet.
    inputs = synthetic_inputs(ds, feats)
    killed = TrainingRecipe(cfg, inputs, _spec(ds), tmp_path / "b", DistInfo(), pipeline_for(inputs),
                            callbacks=[InterruptAfter(per_epoch - 1)])
    with pytest.raises(Interrupted, match=f"after {per_epoch - 1} optimizer steps"):
        killed.run()
    assert not (tmp_path / "b" / "checkpoint").exists() and not (tmp_path / "b" / "result.json").exists()
    rec = Record()
    resumed = TrainingRecipe(cfg, inputs, _spec(ds), tmp_path / "b", DistInfo(), pipeline_for(inputs),
                             callbacks=[rec]).run()
    assert rec.steps[0] == 1 and resumed == result  # nothing was saved: it started over, same numbers
