"""Shared setup of the recording tests: two small models trained on the demo corpus (V+S+T and
V+S, tiny untrained encoders, the paper's online speech encoder) and a generated recording.

Both are built once per test session under pytest's base temporary directory, whichever test
module asks first."""
from __future__ import annotations

from pathlib import Path


def trained_models(base: Path) -> dict[str, Path]:
    """``{"full": model dir (V+S+T), "VS": model dir (V+S)}``, trained once per session."""
    from giamic.data.democorpus import make_corpus
    from giamic.data.iemocap import prepare_iemocap
    from giamic.features import build_encoder
    from giamic.features.extract import ExtractOptions, extract
    from giamic.train.config import load_config
    from giamic.train.run import run_cv

    root = base / "recording-models"
    out = {"full": root / "full" / "seed0" / "fold1" / "model", "VS": root / "VS" / "seed0" / "fold1" / "model"}
    if all((p / "pipeline.json").is_file() for p in out.values()):
        return out
    corpus = root / "corpus"
    info = make_corpus(corpus, seed=5, n_per_dialog=4, sessions=2, dialogs_per_session=2, fps=10, size=(360, 240))
    data = root / "data"
    prepare_iemocap(corpus, data, expected=info.expected_counts(), log=lambda s: None)
    opts = ExtractOptions(progress=False, video_max_frames=16)
    extract(data, build_encoder("tiny-clip"), opts)
    extract(data, build_encoder("tiny-roberta"), opts)
    common = [f"data.data_dir={data}", "encoders.video=tiny-clip-untrained", "encoders.text=tiny-roberta-untrained",
              "encoders.speech=tiny-wavlm-untrained", "encoders.speech_mode=finetune",
              "train.seeds=0", "train.folds=fold1", "train.max_epochs=2", "train.progress=false"]
    run_cv(load_config("tiny", common), root / "full", log=lambda s: None)
    run_cv(load_config("tiny", common + ["model.variant=VS"]), root / "VS", log=lambda s: None)
    return out


def recording(base: Path, name: str = "interview.mp4", seconds: float = 75.0, **kw):
    """A generated recording (cached per session): ``(path, RecordingInfo)``."""
    from giamic.data.demorecording import make_recording

    path = base / "recordings" / name
    return path, make_recording(path, seconds=seconds, **kw)
