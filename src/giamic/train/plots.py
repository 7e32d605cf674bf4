"""PNG figures of a cross-validation run: the pooled confusion matrix and the training curves.

Figures are ``matplotlib.figure.Figure`` objects drawn by the Agg renderer: no display, no pyplot
state shared between calls (and pyplot's import is not paid). Every function writes one PNG
atomically and returns its path (:func:`save_figure`). The paper's Figure 2 (t-SNE) is drawn by
``giamic.experiments.tsne``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from giamic.utils.io import write_bytes_atomic


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with its own Agg canvas."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically, close it and return the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per cell) annotated with counts."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = new_figure((1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax = fig.subplots()
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
    return save_figure(fig, path)


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
    fig = new_figure((11, 7.5))
    axes = fig.subplots(2, 2)
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
    return save_figure(fig, path)
