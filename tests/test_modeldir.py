"""The model-directory contract (``giamic.modeldir``): typed ``pipeline.json`` with a JSON round trip,
one error class naming the file and the key, and the shared padding (``giamic.collate``)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from giamic.collate import pad_features, pad_to_length
from giamic.errors import GiamicError, ModelDirError
from giamic.modeldir import (EncoderRecord, PipelineSpec, Preprocessing, TrainingFacts, VideoPreprocessing,
                             read_pipeline)

FIXTURE = Path(__file__).parent / "data" / "modeldir_v1" / "model"


def test_pipeline_json_written_by_giamic_0_1_round_trips_unchanged():
    d = json.loads((FIXTURE / "pipeline.json").read_text(encoding="utf-8"))
    spec = PipelineSpec.from_dict(d)
    assert spec.classes == ("neu", "ang", "hap", "sad") and spec.modalities == ("video", "speech", "text")
    assert spec.encoders["speech"].mode == "finetune" and spec.encoders["speech"].run_config["layerdrop"] == 0.1
    assert spec.encoders["video"].extraction == {"dtype": "float32", "video_max_sec": 2.0, "video_max_frames": 8,
                                                  "crop_mode": None}
    assert spec.preprocessing.lengths == {"video": 8, "speech": 99, "text": 32}
    assert spec.crop_rule == "fixed_window" and spec.text_source == "gt"
    assert spec.training == TrainingFacts(seed=0, fold="fold1", test_group="Ses01", best_epoch=1,
                                          val_ua=d["training"]["val_ua"], val_wa=d["training"]["val_wa"])
    assert spec.to_dict() == d  # every key and value of the old file, nothing added
    assert PipelineSpec.from_json(spec.to_json()) == spec
    assert read_pipeline(FIXTURE) == spec


def test_missing_sections_take_the_defaults_older_directories_relied_on():
    spec = PipelineSpec.from_dict({"format_version": 1, "classes": ["a", "b"], "modalities": ["video"],
                                   "encoders": {"video": {"name": "clip", "dim": 768}},
                                   "preprocessing": {"audio": {"max_sec": 4}, "video": {"crop_mode": None},
                                                     "lengths": {"video": 180}}})
    assert spec.encoders["video"].mode == "cached" and spec.variant == "?"
    # A frame window not recorded follows the audio window; an unrecorded crop rule is the dataset's.
    assert spec.preprocessing.video == VideoPreprocessing(max_frames=180, max_sec=4.0, crop_mode="prepared")
    assert spec.preprocessing.video.side_crop_mode == "fixed_window"
    assert VideoPreprocessing(crop_mode="full").side_crop_mode == "half"
    assert VideoPreprocessing(crop_mode="half").side_crop_mode == "half"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format_version=2), "format_version 2 is not supported"),
    (lambda d: d.pop("classes"), "classes is missing"),
    (lambda d: d["encoders"]["text"].update(dim="32"), "encoders.text.dim must be int"),
    (lambda d: d["encoders"]["video"].update(mode="online"), "encoders.video.mode is 'online'; allowed: cached"),
    (lambda d: d["preprocessing"]["text"].update(source="human"), "preprocessing.text.source is 'human'"),
    (lambda d: d["preprocessing"]["video"].update(crop_mode="quarter"), "crop_mode is 'quarter'"),
    (lambda d: d.update(modalities=["video", "smell"]), r"modalities \['smell'\] unknown"),
    (lambda d: d["training"].pop("fold"), "training.fold is missing"),
])
def test_bad_pipeline_json_is_one_error_naming_the_file_and_the_key(tmp_path, change, message):
    d = json.loads((FIXTURE / "pipeline.json").read_text(encoding="utf-8"))
    change(d)
    (tmp_path / "pipeline.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ModelDirError, match=message) as e:
        read_pipeline(tmp_path)
    assert isinstance(e.value, GiamicError) and e.value.path == tmp_path / "pipeline.json"
    assert str(e.value).startswith(f"{tmp_path / 'pipeline.json'}: ")


def test_not_json_and_not_a_directory(tmp_path):
    (tmp_path / "pipeline.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        read_pipeline(tmp_path)
    from giamic.modeldir import load_model_dir

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ModelDirError, match="not a directory"):
        load_model_dir(f)


def test_the_inference_error_names_are_the_same_class():
    from giamic.inference import ModelDirError as FromInference
    from giamic.inference.errors import ModelDirError as FromErrors

    assert FromInference is FromErrors is ModelDirError


def test_the_spec_is_frozen_and_with_training_returns_a_new_one():
    spec = PipelineSpec(classes=["a"], modalities=["text"], encoders={"text": EncoderRecord(name="t", dim=3)},
                        preprocessing=Preprocessing(lengths={"text": 5}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.variant = "full"  # type: ignore[misc]
    done = spec.with_training(TrainingFacts(seed=1, fold="fold2"))
    assert spec.training is None and done.training.fold == "fold2" and done.classes == ("a",)
    assert "training" not in spec.to_dict() and done.to_dict()["training"]["seed"] == 1


def test_padding_fills_fixed_slots_and_truncates():
    x, m = pad_features([np.ones((2, 3), np.float16), np.full((7, 3), 2, np.float16), np.zeros((0, 3))], 4, 3)
    assert x.shape == (3, 4, 3) and x.dtype == torch.float32 and m.dtype == torch.bool
    assert m.sum(1).tolist() == [2, 4, 0]
    assert x[0, :2].eq(1).all() and x[0, 2:].eq(0).all() and x[1].eq(2).all()
    with pytest.raises(ValueError, match=r"expected \[T, 3\]"):
        pad_features([np.ones((2, 4))], 4, 3)
    f, k = pad_to_length(torch.ones(2, 3, 5), torch.ones(2, 3, dtype=torch.bool), 4)
    assert f.shape == (2, 4, 5) and k.tolist() == [[True, True, True, False]] * 2 and f[:, 3].eq(0).all()
    f, k = pad_to_length(torch.ones(1, 6, 2), torch.ones(1, 6, dtype=torch.bool), 4)
    assert f.shape == (1, 4, 2) and k.shape == (1, 4)
