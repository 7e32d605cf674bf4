"""PNG figures: confusion matrix, training curves, and the paper's Figure 2 (t-SNE).

matplotlib runs on the Agg backend (no display needed). Every function writes one PNG atomically
and returns its path.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from giamic.utils.io import write_bytes_atomic  # noqa: E402

MODALITY_COLORS = {"video": "tab:blue", "speech": "tab:orange", "text": "tab:green"}


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per cell) annotated with counts."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title or "confusion matrix (pooled over folds)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="recall")
    return _save(fig, path)


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        try:
            out[k] = np.asarray([float(r[k]) for r in rows])
        except ValueError:
            continue
    return out


def plot_curves(logs: Mapping[str, str | Path], path: str | Path, title: str = "") -> Path:
    """Training curves of several units (label -> log.csv): losses, validation UA/WA, gates, MIG ratio."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (ax_loss, ax_val), (ax_gate, ax_mig) = axes
    for label, p in logs.items():
        log = read_log(p)
        if not log:
            continue
        ep = log["epoch"]
        (line,) = ax_loss.plot(ep, log["train_ce"], label=f"{label} CE")
        if "train_mir" in log and np.any(log["train_mir"] != 0):
            ax_loss.plot(ep, log["train_mir"], ls=":", color=line.get_color())
        ax_val.plot(ep, 100 * log["val_ua"], color=line.get_color(), label=f"{label}")
        ax_val.plot(ep, 100 * log["val_wa"], ls="--", color=line.get_color())
        gates = [k for k in log if k.startswith("gate_")]
        if gates:
            ax_gate.plot(ep, np.mean([log[k] for k in gates], axis=0), color=line.get_color(), label=label)
        ratios = [k for k in log if k.startswith("mig_ratio_")]
        if ratios:
            ax_mig.plot(ep, np.mean([log[k] for k in ratios], axis=0), color=line.get_color(), label=label)
    ax_loss.set_title("training loss (solid: CE, dotted: L_MIR)")
    ax_val.set_title("validation UA (solid) and WA (dashed), %")
    ax_gate.set_title("mean GIA gate value (all directions)")
    ax_mig.set_title("MIG residual ratio ||Z_M|| / ||H_VST|| (mean over M)")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if len(logs) <= 10:
        ax_val.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


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
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
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
    return _save(fig, path)


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
