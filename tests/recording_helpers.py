"""Shared setup of the recording tests: two small models trained on the demo corpus (V+S+T and
V+S, tiny untrained encoders, the paper's online speech encoder) and a generated recording.

Both are built once per test session under pytest's base temporary directory, whichever test
module asks first."""
from __future__ import annotations

from pathlib import Path


MODELS_EXPERIMENT = """
name: recording-models
data: {source: generated, corpus: {seed: 5, n_per_dialog: 4, sessions: 2, dialogs_per_session: 2, fps: 10,
                                   size: [360, 240]}}
recipe: {preset: tiny, overrides: [encoders.text=tiny-roberta-untrained, encoders.speech_mode=finetune,
                                   train.seeds=0, train.folds=fold1, train.max_epochs=2]}
extract: [{modality: video}, {modality: text}]
rows:
  - {name: full}
  - {name: VS}
"""


def trained_models(base: Path) -> dict[str, Path]:
    """``{"full": model dir (V+S+T), "VS": model dir (V+S)}``, trained once per session by the
    experiments runner (the pipeline every command uses)."""
    from giamic.experiments.runner import run_experiment
    from giamic.experiments.spec import load_experiment

    root = base / "recording-models"
    out = {row: root / "runs" / row / "seed0" / "fold1" / "model" for row in ("full", "VS")}
    if all((p / "pipeline.json").is_file() for p in out.values()):
        return out
    root.mkdir(parents=True, exist_ok=True)
    spec = root / "experiment.yaml"
    spec.write_text(MODELS_EXPERIMENT, encoding="utf-8")
    run_experiment(load_experiment(spec), root)
    return out


def recording(base: Path, name: str = "interview.mp4", seconds: float = 75.0, **kw):
    """A generated recording (cached per session): ``(path, RecordingInfo)``."""
    from giamic.data.demorecording import make_recording

    path = base / "recordings" / name
    return path, make_recording(path, seconds=seconds, **kw)
