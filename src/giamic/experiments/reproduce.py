"""``giamic reproduce IEMOCAP_ROOT --out DIR``: the whole paper on a real corpus.

The experiment is ``paper.yaml`` beside this module. Steps, each resumable and skipped when done:

1. ``prepare``: IEMOCAP → ``DIR/data`` (5,531 utterances, 5 leave-one-session-out folds);
2. ``transcribe`` (for the ASR row of Table 1): Whisper transcripts into ``transcript_asr``;
3. ``extract``: frozen CLIP frames and RoBERTa tokens (ground-truth text, and ASR text) cached once;
4. one ``cv`` run per table row into ``DIR/runs/<row>`` (5 folds × seeds, WavLM fine-tuned online);
5. Figure 2 (``DIR/tsne.png``) from the γ = 0 (``wo_mic``) and γ = 0.1 (``full``) runs;
6. ``DIR/paper_table.md`` / ``.json``: the paper's WA/UA beside ours (mean over folds; ± over seeds).

Every row is also one documented ``giamic cv`` command (:func:`row_command`; docs/reproducing.md).

``smoke=True`` is the rehearsal before a long run (``giamic reproduce ROOT --out DIR --smoke``):
the same steps and outputs for every row, on ``per_fold`` class-balanced utterances of each session
(``DIR/data-smoke``), one seed and two epochs (``paper.yaml``'s ``smoke`` section); without a GPU
with CPU-sized encoders. A row that fails is marked in the table and the run goes on to the next.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from giamic.experiments.runner import run_experiment
from giamic.experiments.spec import Experiment, load_experiment
from giamic.experiments.tables import paper_table, paper_table_markdown

log = logging.getLogger(__name__)

__all__ = ["ALL_ROWS", "paper_experiment", "paper_table", "paper_table_markdown", "row_command", "run_reproduce"]

ALL_ROWS: tuple[str, ...] = tuple(r.name for r in load_experiment("paper").rows)
"""Table 2 in the paper's order, then Table 1's ASR row (its V+S+T(GT) row is ``full``)."""


def paper_experiment(rows: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                     asr_model: str | None = "large-v2", preset: str | None = None) -> Experiment:
    """The shipped paper experiment, restricted to ``rows``, with ``seeds``, the Whisper model and
    the training preset (``paper`` by default; ``cpu`` for the CPU-sized encoders and recipe)."""
    exp = load_experiment("paper", {"data": {"asr_model": asr_model}})
    if preset:
        from giamic.presets import read_preset

        read_preset(preset)  # an unknown name fails here, before any work
        # paper.yaml's speech cache is filled only for a recipe that caches speech (the cpu preset)
        exp = exp.replace(recipe=dataclasses.replace(exp.recipe, preset=preset))
    if seeds is not None:
        exp = exp.replace(seeds=tuple(int(s) for s in seeds))
    return exp.select(list(rows) if rows is not None else None)


def row_command(row: str, data_dir: str = "DIR/data", out: str = "DIR/runs", seeds: str = "0 1 2",
                preset: str = "paper") -> str:
    """The ``giamic cv`` command that runs one row by hand."""
    text = "" if load_experiment("paper").row(row).text_source == "gt" else " --text asr"
    pre = "" if preset == "paper" else f" --preset {preset}"
    return f"giamic cv {data_dir}{pre} --variant {row}{text} --seeds {seeds} --out {out}/{row}"


def run_reproduce(root: str | Path, out: str | Path, rows: Sequence[str] = ALL_ROWS, seeds: Sequence[int] = (0, 1, 2),
                  asr_model: str | None = "large-v2", device: str = "auto",
                  encoder_paths: dict[str, str | None] | None = None, extra: Sequence[str] = (),
                  preset: str | None = None, smoke: bool = False) -> dict:
    """Run the paper's rows on the IEMOCAP tree ``root`` into ``out``; ``encoder_paths`` maps a
    modality (video, speech, text) to a local copy of its encoder. ``smoke``: the rehearsal (module
    docstring; ``seeds`` are then the smoke section's). Returns the table, the figure, the failed
    rows and the seconds."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = [f"encoders.{m}_path={p}" for m, p in (encoder_paths or {}).items() if p]
    exp = paper_experiment(rows, seeds, asr_model, preset=preset)
    per_fold = None
    if smoke:
        gpu = "cuda" in device
        exp = exp.smoke_run(gpu=gpu)
        if not gpu and asr_model and asr_model != "large-v2":  # a Whisper model named for this CPU run
            exp = exp.replace(data=dataclasses.replace(exp.data, asr_model=asr_model))
        per_fold = exp.smoke.per_fold if exp.smoke else None
        log.info(f"smoke run: {len(exp.rows)} rows, seeds {list(exp.seeds or ())}, {per_fold} utterances per fold, "
                 f"recipe {exp.recipe.preset} {' '.join(exp.recipe.overrides)}")
    result = run_experiment(exp, out, root=root, device=device, extra=[*paths, *extra], per_fold=per_fold,
                            keep_going=smoke)
    return {"rows": result.table, "figure": result.figure, "failures": result.failures, "seconds": result.seconds}
