"""Classification metrics and their aggregation over folds and seeds (docs/decisions.md, "what the
report averages").

* WA = overall accuracy = sum_c TP_c / N.
* UA = unweighted average recall = mean over classes of TP_c / N_c, over the classes **present** in
  the reference labels (a class absent from a test session cannot have a recall; counting it as 0
  would punish the model for the data). On IEMOCAP all four classes are present in every session,
  so this equals the paper's (1/4) sum_c TP_c / N_c.
* macro-F1 over the classes present in either the references or the predictions (scikit-learn's
  ``f1_score(average="macro")`` convention with ``labels`` = the union).

Everything here is plain NumPy so the report can be recomputed from the saved prediction CSVs
without torch; tests compare against scikit-learn.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], n_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of utterances with reference class i predicted as j."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape} vs {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= n_classes or p.min() < 0 or p.max() >= n_classes):
        raise ValueError(f"class index outside [0, {n_classes})")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def weighted_accuracy(cm: np.ndarray) -> float:
    n = cm.sum()
    return float(np.trace(cm) / n) if n else float("nan")


def unweighted_accuracy(cm: np.ndarray) -> float:
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    recall = np.diag(cm)[present] / support[present]
    return float(recall.mean())


def macro_f1(cm: np.ndarray) -> float:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    used = (support + predicted) > 0
    if not used.any():
        return float("nan")
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[used].mean())


@dataclass
class Scores:
    """Metrics of one set of predictions (one fold's test session, or a validation split)."""

    n: int
    wa: float
    ua: float
    macro_f1: float
    confusion: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def score(labels: Sequence[int], preds: Sequence[int], n_classes: int) -> Scores:
    cm = confusion_matrix(labels, preds, n_classes)
    return Scores(n=int(cm.sum()), wa=weighted_accuracy(cm), ua=unweighted_accuracy(cm),
                  macro_f1=macro_f1(cm), confusion=cm.tolist())


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = np.asarray([x for x in values], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "n": int(v.size)}


def summarize(per_seed_folds: dict[int, list[Scores]], n_classes: int) -> dict:
    """Combine per-fold scores (docs/decisions.md, "what the report averages").

    ``per_seed_folds`` maps a seed to its folds' test scores. Returns

    * ``folds``: mean and std over all (seed, fold) units of WA, UA, macro-F1 (the primary figure
      is the mean over folds; with several seeds every fold of every seed counts once);
    * ``seeds``: mean and std over seeds of each seed's 5-fold mean (the paper's ± over repetitions);
    * ``pooled``: WA/UA/macro-F1 of the summed confusion matrix over every prediction of every seed
      (secondary figure).
    """
    out: dict = {}
    all_units = [s for folds in per_seed_folds.values() for s in folds]
    for key in ("wa", "ua", "macro_f1"):
        out.setdefault("folds", {})[key] = mean_std(getattr(s, key) for s in all_units)
        seed_means = [float(np.mean([getattr(s, key) for s in folds]))
                      for folds in per_seed_folds.values() if folds]
        out.setdefault("seeds", {})[key] = mean_std(seed_means)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for s in all_units:
        cm += np.asarray(s.confusion, dtype=np.int64)
    out["pooled"] = {"n": int(cm.sum()), "wa": weighted_accuracy(cm), "ua": unweighted_accuracy(cm),
                     "macro_f1": macro_f1(cm), "confusion": cm.tolist()}
    return out


def pct(x: float, digits: int = 1) -> str:
    """A fraction as a percentage string; '-' for NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100.0 * x:.{digits}f}"
