"""A trained model directory (architecture contract §4): what ``giamic train``/``cv`` write per
fold and ``giamic predict --model DIR`` loads.

Files:

* ``config.json`` + ``model.safetensors``: the fusion model (``GIAMIC.save_pretrained``);
* ``speech_encoder.safetensors``: the fine-tuned speech encoder's state dict, only when speech was
  fine-tuned online (``encoders.speech_mode = finetune``);
* ``pipeline.json`` (written last, so its presence means the directory is complete)::

      {"format_version": 1,
       "classes": ["neu", "ang", "hap", "sad"],          # class index = position
       "variant": "full", "modalities": ["video", "speech", "text"],
       "encoders": {<modality>: {"name": registry name for build_encoder,
                                 "name_or_path": override or null,
                                 "identity": enc.identity(),          # what changes the features
                                 "feature_key": cache folder name or null,
                                 "dim": input width, "mode": "cached" | "finetune" | "frozen"}},
       "preprocessing": {"audio": {"sr", "max_sec", "max_samples", "crop", "normalize"},
                         "video": {"max_frames", "crop_mode"},
                         "text": {"source": "gt" | "asr", "max_tokens"},
                         "lengths": {<modality>: padded length T the model was trained with}},
       "speech_encoder_file": "speech_encoder.safetensors" | null,
       "training": {"seed", "fold", "test_group", "best_epoch", "val_ua", "val_wa"},
       "giamic_version": "..."}

The inference stage must pad each modality to ``preprocessing.lengths`` (the fixed slots of spec §0:
the MIG convolution sees the slot layout, so the same lengths give the same logits).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from giamic import errors as _errors
from giamic.utils.io import save_safetensors_atomic, write_json_atomic

PIPELINE_FILE = "pipeline.json"
SPEECH_ENCODER_FILE = "speech_encoder.safetensors"
FORMAT_VERSION = 1


class ModelDirError(_errors.ModelDirError):
    """A model directory is incomplete or its files disagree with one another."""


@dataclass
class ModelDir:
    model: Any  # giamic.GIAMIC
    pipeline: dict
    speech_encoder_state: dict[str, torch.Tensor] | None
    path: Path

    @property
    def classes(self) -> list[str]:
        return list(self.pipeline["classes"])


def save_model_dir(directory: str | Path, model, pipeline: dict,
                   speech_encoder: torch.nn.Module | dict | None = None) -> Path:
    """Write a complete model directory; ``pipeline.json`` last (the completion marker)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / PIPELINE_FILE
    if marker.exists():  # rewriting: the directory is incomplete until the new marker lands
        marker.unlink()
    model.save_pretrained(directory)
    pipeline = dict(pipeline)
    pipeline["format_version"] = FORMAT_VERSION
    if speech_encoder is not None:
        state = speech_encoder if isinstance(speech_encoder, dict) else speech_encoder.state_dict()
        save_safetensors_atomic(state, directory / SPEECH_ENCODER_FILE, metadata={"format": "pt"})
        pipeline["speech_encoder_file"] = SPEECH_ENCODER_FILE
    else:
        stale = directory / SPEECH_ENCODER_FILE
        if stale.exists():
            stale.unlink()
        pipeline["speech_encoder_file"] = None
    _check(pipeline, model.config.to_dict(), directory, speech_file_present=speech_encoder is not None)
    write_json_atomic(marker, pipeline)
    return directory


def read_pipeline(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / PIPELINE_FILE
    if not path.is_file():
        raise ModelDirError(f"{directory} is not a complete model directory: {PIPELINE_FILE} is missing "
                            f"(expected config.json, model.safetensors, {PIPELINE_FILE})")
    pipeline = json.loads(path.read_text(encoding="utf-8"))
    version = pipeline.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path}: format_version {version!r} is not supported (this giamic reads {FORMAT_VERSION})")
    return pipeline


def load_model_dir(directory: str | Path, map_location: str | torch.device = "cpu") -> ModelDir:
    """Load the fusion model, the pipeline description and (if present) the fine-tuned speech
    encoder's state dict; raise :class:`ModelDirError` naming the file on any mismatch."""
    from giamic import GIAMIC

    directory = Path(directory)
    pipeline = read_pipeline(directory)
    try:
        model = GIAMIC.from_pretrained(directory, map_location=map_location)
    except (FileNotFoundError, ValueError) as e:
        raise ModelDirError(str(e)) from e
    speech_file = pipeline.get("speech_encoder_file")
    state = None
    if speech_file:
        p = directory / speech_file
        if not p.is_file():
            raise ModelDirError(f"{directory / PIPELINE_FILE} names {speech_file}, which is missing")
        from safetensors.torch import load_file

        state = load_file(str(p), device=str(map_location))
    _check(pipeline, model.config.to_dict(), directory, speech_file_present=state is not None)
    model.eval()
    return ModelDir(model=model, pipeline=pipeline, speech_encoder_state=state, path=directory)


def _check(pipeline: dict, cfg: dict, directory: Path, speech_file_present: bool) -> None:
    where = directory / PIPELINE_FILE
    classes = pipeline.get("classes") or []
    if len(classes) != cfg["num_classes"]:
        raise ModelDirError(f"{where}: {len(classes)} classes {classes} but config.json has num_classes="
                            f"{cfg['num_classes']}")
    mods = list(pipeline.get("modalities") or [])
    if mods != list(cfg["modalities"]):
        raise ModelDirError(f"{where}: modalities {mods} differ from config.json's {list(cfg['modalities'])}")
    encoders = pipeline.get("encoders") or {}
    for m in mods:
        e = encoders.get(m)
        if not e or not e.get("name"):
            raise ModelDirError(f"{where}: no encoder recorded for modality {m!r}")
        if int(e.get("dim", -1)) != int(cfg["input_dims"][m]):
            raise ModelDirError(f"{where}: encoder {e['name']!r} gives {e.get('dim')}-d {m} features but the model "
                                f"expects input_dims[{m!r}]={cfg['input_dims'][m]}")
        if int(pipeline.get("preprocessing", {}).get("lengths", {}).get(m, 0)) <= 0:
            raise ModelDirError(f"{where}: preprocessing.lengths has no padded length for {m!r}")
    finetuned = encoders.get("speech", {}).get("mode") == "finetune" and "speech" in mods
    if finetuned != speech_file_present:
        raise ModelDirError(f"{where}: speech mode {'finetune' if finetuned else 'cached/frozen'} but "
                            f"{SPEECH_ENCODER_FILE} is {'present' if speech_file_present else 'missing'}")
