"""The paper's Figure 2: t-SNE of the per-modality invariant representations, γ = 0 against γ ≠ 0.

Each finished unit of a variant with MIG blocks saves ``invariant.safetensors``: for every test
utterance of its fold, ``out.invariant[M]`` (the masked mean of ``H_M^MIG``, architecture §3) per
modality M. The figure puts the γ = 0 model (``wo_mic``) and the γ = 0.1 model (``full``) of the
same seed and fold side by side; each panel is one t-SNE over the three modalities' vectors,
coloured by modality. With the constraint, the paper reports that the modalities overlap more.
``modality_overlap`` turns that into a number (mean share of a point's 10 nearest neighbours, in the
representation space itself, that come from another modality).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file

from giamic.train.recipe import INVARIANT_FILE
from giamic.train.plots import modality_overlap, plot_tsne


def read_invariant(unit_dir: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    path = Path(unit_dir) / INVARIANT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the unit is unfinished or its variant has no MIG blocks "
                                f"(t-SNE needs variants such as full and wo_mic)")
    with safe_open(str(path), framework="pt") as f:
        ids = json.loads((f.metadata() or {}).get("ids", "[]"))
    return ids, {m: t.float().numpy() for m, t in load_file(str(path)).items()}


def _unit(run_dir: Path, seed: int, fold: str | None) -> Path:
    base = run_dir / f"seed{seed}"
    if fold:
        return base / fold
    done = sorted(p for p in base.iterdir() if (p / INVARIANT_FILE).is_file()) if base.is_dir() else []
    if not done:
        raise FileNotFoundError(f"no finished unit with {INVARIANT_FILE} under {base}")
    return done[0]


def tsne_from_runs(run_gamma0: str | Path, run_gamma: str | Path, out_png: str | Path, seed: int = 0,
                   fold: str | None = None, gamma_label: str = "γ = 0.1") -> tuple[Path, dict[str, float]]:
    """Draw Figure 2 from two cross-validation run directories; return the PNG and the overlaps."""
    u0, u1 = _unit(Path(run_gamma0), seed, fold), _unit(Path(run_gamma), seed, fold)
    ids0, rep0 = read_invariant(u0)
    ids1, rep1 = read_invariant(u1)
    if ids0 != ids1:
        raise ValueError(f"{u0} and {u1} hold different test utterances; compare the same seed and fold")
    path = plot_tsne({"γ = 0 (no MIC)": rep0, f"{gamma_label} (with MIC)": rep1}, out_png, seed=seed,
                     title=f"t-SNE of the modality-invariant representations ({u1.name}, seed {seed}, "
                           f"{len(ids1)} test utterances)")
    return path, {"gamma0": modality_overlap(rep0), "gamma": modality_overlap(rep1)}
