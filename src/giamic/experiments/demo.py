"""``giamic demo``: the whole pipeline on built-in data, on a CPU, in minutes.

The experiment is ``demo.yaml`` beside this module: the demo corpus (``giamic.data.democorpus``:
generated video, speech and text in IEMOCAP's layout), prepared, features extracted with CPU-sized
encoders (the untrained tiny CLIP and WavLM presets, frozen and cached, and the small pretrained
MiniLM sentence encoder for text), then leave-one-session-out for the full model and the Baseline
(and, without ``quick``, the unimodal rows V, S, T and the γ = 0 model for the t-SNE figure) with
the ``demo`` training preset.

The numbers say that the pipeline works end to end on data with a known signal. They are not the
paper's: the corpus is generated and the video/speech encoders are untrained. The paper's numbers
need IEMOCAP, the pretrained encoders and a GPU (``giamic reproduce``, docs/reproducing.md).
Every step is resumable: rerunning the command reuses the corpus, the caches and finished folds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from giamic.experiments.runner import run_experiment
from giamic.experiments.spec import Experiment, load_experiment
from giamic.experiments.tables import demo_markdown

__all__ = ["demo_experiment", "demo_markdown", "run_demo"]


def demo_experiment(seed: int = 0) -> Experiment:
    """The shipped demo experiment with the corpus generated under ``seed``."""
    return load_experiment("demo", {"data": {"corpus": {"seed": int(seed)}}})


def run_demo(out: str | Path = "giamic-demo", quick: bool = False, seed: int = 0,
             extra: Sequence[str] = ()) -> dict:
    """Run the demo into ``out``; return the table (also written to ``out/demo.json`` and ``demo.md``)."""
    return run_experiment(demo_experiment(seed), out, quick=quick, device="cpu", extra=extra).table
