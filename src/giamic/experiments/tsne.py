"""The paper's Figure 2: t-SNE of the per-modality invariant representations, γ = 0 against γ ≠ 0.

Each finished unit of a variant with MIG blocks saves ``invariant.safetensors``: for every test
utterance of its fold, ``out.invariant[M]`` (the masked mean of ``H_M^MIG``; the model's outputs
in docs/architecture.md) per modality M. The figure puts the γ = 0 model (``wo_mic``) and the
γ = 0.1 model (``full``) of the same seed and fold side by side; each panel is one t-SNE over the
three modalities' vectors, coloured by modality. With the constraint, the paper reports that the modalities overlap more.
``modality_overlap`` turns that into a number (mean share of a point's 10 nearest neighbours, in the
representation space itself, that come from another modality).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file

from giamic.errors import TrainError
from giamic.modalities import Modality
from giamic.train.recipe import INVARIANT_FILE
from giamic.train.plots import new_figure, save_figure

MODALITY_COLORS = {Modality.VIDEO.value: "tab:blue", Modality.SPEECH.value: "tab:orange",
                   Modality.TEXT.value: "tab:green"}


def read_invariant(unit_dir: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    path = Path(unit_dir) / INVARIANT_FILE
    if not path.is_file():
        raise TrainError("not found: the unit is unfinished or its variant has no MIG blocks "
                         "(t-SNE needs variants such as full and wo_mic)", path)
    with safe_open(str(path), framework="pt") as f:
        ids = json.loads((f.metadata() or {}).get("ids", "[]"))
    return ids, {m: t.float().numpy() for m, t in load_file(str(path)).items()}


def _unit(run_dir: Path, seed: int, fold: str | None) -> Path:
    base = run_dir / f"seed{seed}"
    if fold:
        return base / fold
    done = sorted(p for p in base.iterdir() if (p / INVARIANT_FILE).is_file()) if base.is_dir() else []
    if not done:
        raise TrainError(f"no finished unit with {INVARIANT_FILE} here", base)
    return done[0]


def tsne_from_runs(run_gamma0: str | Path, run_gamma: str | Path, out_png: str | Path, seed: int = 0,
                   fold: str | None = None, gamma_label: str = "γ = 0.1") -> tuple[Path, dict[str, float]]:
    """Draw Figure 2 from two cross-validation run directories; return the PNG and the overlaps."""
    u0, u1 = _unit(Path(run_gamma0), seed, fold), _unit(Path(run_gamma), seed, fold)
    ids0, rep0 = read_invariant(u0)
    ids1, rep1 = read_invariant(u1)
    if ids0 != ids1:
        raise TrainError(f"{u0} and {u1} hold different test utterances; compare the same seed and fold")
    path = plot_tsne({"γ = 0 (no MIC)": rep0, f"{gamma_label} (with MIC)": rep1}, out_png, seed=seed,
                     title=f"t-SNE of the modality-invariant representations ({u1.name}, seed {seed}, "
                           f"{len(ids1)} test utterances)")
    return path, {"gamma0": modality_overlap(rep0), "gamma": modality_overlap(rep1)}


def tsne_embed(reps: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """One 2-D t-SNE over the union of the per-modality representations (so distances between
    modalities are comparable), split back per modality."""
    from sklearn.manifold import TSNE

    names = list(reps)
    x = np.concatenate([np.asarray(reps[m], dtype=np.float64) for m in names], axis=0)
    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3.0)))
    y = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    out, start = {}, 0
    for m in names:
        n = len(reps[m])
        out[m] = y[start:start + n]
        start += n
    return out


def plot_tsne(panels: Mapping[str, Mapping[str, np.ndarray]], path: str | Path, seed: int = 0,
              title: str = "") -> Path:
    """The paper's Figure 2: one panel per model (e.g. "γ = 0", "γ = 0.1"), each a t-SNE of the
    per-modality invariant representations ``out.invariant`` coloured by modality."""
    fig = new_figure((5.2 * len(panels), 4.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, reps) in zip(axes[0], panels.items()):
        emb = tsne_embed(reps, seed=seed)
        for m, pts in emb.items():
            ax.scatter(pts[:, 0], pts[:, 1], s=7, alpha=0.6, label=m, color=MODALITY_COLORS.get(m))
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=2, fontsize=8)
    fig.suptitle(title or "t-SNE of the modality-invariant representations (Figure 2)")
    fig.tight_layout()
    return save_figure(fig, path)


def modality_overlap(reps: Mapping[str, np.ndarray], k: int = 10) -> float:
    """How mixed the modalities are: the mean share of each point's k nearest neighbours (in the
    representation space) that belong to another modality. 0 = fully separated clusters; with M
    equally sized modalities, perfect mixing gives about (M-1)/M. Printed beside Figure 2 so the
    picture's message is also a number."""
    from sklearn.neighbors import NearestNeighbors

    names = list(reps)
    x = np.concatenate([np.asarray(reps[m], dtype=np.float64) for m in names], axis=0)
    lab = np.concatenate([np.full(len(reps[m]), i) for i, m in enumerate(names)])
    k = min(k, len(x) - 1)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    return float((lab[idx] != lab[:, None]).mean())
