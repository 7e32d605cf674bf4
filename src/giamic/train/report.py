"""Per-fold prediction files and the cross-validation report (docs/reproducing.md, "What a run writes").

A cross-validation run directory looks like::

    OUT/
      config.yaml                       the resolved RunConfig
      report.json, report.md            this module
      confusion.png, curves.png         giamic.train.plots
      seed<S>/<fold>/
        predictions.csv                 utt_id,label,pred,prob_<class>... (test session, selected checkpoint)
        result.json                     the unit's scores and selection facts; written last = unit done
        log.csv                         one row per epoch (giamic.train.recipe)
        model/                          the trained model directory (giamic.modeldir)
        checkpoint/                     the last per-epoch training checkpoint (resume)

``report.json`` is rebuilt from the ``predictions.csv`` files alone (:func:`scores_from_predictions`),
so its numbers can always be recomputed from what is on disk.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from giamic.train.metrics import Scores, pct, score, summarize
from giamic.utils.io import atomic_open, write_json_atomic, write_text_atomic

PREDICTIONS_FILE = "predictions.csv"
RESULT_FILE = "result.json"
REPORT_FORMAT_VERSION = 1


def write_predictions(path: str | Path, utt_ids: Sequence[str], labels: Sequence[int], probs: np.ndarray,
                      classes: Sequence[str]) -> None:
    """One row per utterance: id, reference and predicted class names, class probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(axis=1)
    with atomic_open(path, "w", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["utt_id", "label", "pred"] + [f"prob_{c}" for c in classes])
        for u, y, p, row in zip(utt_ids, labels, preds, probs):
            w.writerow([u, classes[int(y)], classes[int(p)]] + [f"{x:.6f}" for x in row])


def read_predictions(path: str | Path, classes: Sequence[str]) -> dict[str, Any]:
    """Back from CSV: ``{"utt_id": [...], "label": int array, "pred": int array, "probs": [n, C]}``."""
    index = {c: i for i, c in enumerate(classes)}
    ids, ys, ps, probs = [], [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        r = csv.DictReader(f)
        for row in r:
            ids.append(row["utt_id"])
            ys.append(index[row["label"]])
            ps.append(index[row["pred"]])
            probs.append([float(row[f"prob_{c}"]) for c in classes])
    return {"utt_id": ids, "label": np.asarray(ys, dtype=np.int64), "pred": np.asarray(ps, dtype=np.int64),
            "probs": np.asarray(probs, dtype=np.float64).reshape(len(ids), len(classes))}


def scores_from_predictions(path: str | Path, classes: Sequence[str]) -> Scores:
    p = read_predictions(path, classes)
    return score(p["label"], p["pred"], len(classes))


def versions() -> dict[str, str]:
    """Versions of everything that can change a result."""
    from importlib.metadata import version

    import torch
    import transformers

    from giamic import __version__

    return {"giamic": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "scikit-learn": version("scikit-learn"),  # the distribution's metadata: importing sklearn takes seconds
            "cuda": torch.version.cuda or "none",
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def unit_dirs(run_dir: str | Path, seeds: Sequence[int], fold_names: Sequence[str]) -> list[tuple[int, str, Path]]:
    run_dir = Path(run_dir)
    return [(s, f, run_dir / f"seed{s}" / f) for s in seeds for f in fold_names]


def build_report(run_dir: str | Path, classes: Sequence[str], seeds: Sequence[int], fold_names: Sequence[str],
                 config: dict, dataset: dict | None = None, title: str | None = None) -> dict:
    """Collect every finished (seed, fold) unit of ``run_dir`` into the report dictionary.

    Scores come from the saved prediction files, never from memory, so the report is exactly what
    a recomputation from disk gives."""
    per_seed: dict[int, list[Scores]] = {}
    folds = []
    for seed, fold, d in unit_dirs(run_dir, seeds, fold_names):
        res_path = d / RESULT_FILE
        if not res_path.is_file():
            continue
        result = json.loads(res_path.read_text(encoding="utf-8"))
        s = scores_from_predictions(d / PREDICTIONS_FILE, classes)
        per_seed.setdefault(seed, []).append(s)
        folds.append({"seed": seed, "fold": fold, "test_group": result.get("test_group"),
                      **s.to_dict(),
                      "best_epoch": result.get("best_epoch"), "epochs_run": result.get("epochs_run"),
                      "val_ua": result.get("best_val", {}).get("ua"),
                      "predictions": str((d / PREDICTIONS_FILE).relative_to(run_dir)),
                      "model_dir": str((d / "model").relative_to(run_dir))})
    expected = len(seeds) * len(fold_names)
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "title": title or f"GIA-MIC cross-validation: {config.get('model', {}).get('variant', '?')}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": len(folds) == expected,
        "units_done": len(folds), "units_expected": expected,
        "classes": list(classes),
        "dataset": dataset or {},
        "folds": folds,
        "summary": summarize(per_seed, len(classes)) if folds else {},
        "config": config,
        "versions": versions(),
    }


def report_markdown(report: dict) -> str:
    """The report as readable Markdown tables."""
    classes = report["classes"]
    lines = [f"# {report['title']}", ""]
    ds = report.get("dataset") or {}
    if ds:
        lines += [f"Dataset: **{ds.get('name', '?')}** ({ds.get('n_utterances', '?')} utterances, "
                  f"classes {', '.join(classes)}), `{ds.get('data_dir', '')}`.", ""]
    if ds.get("note"):
        lines += [ds["note"], ""]
    cfg = report.get("config", {})
    m, t = cfg.get("model", {}), cfg.get("train", {})
    lines += [f"Variant `{m.get('variant')}` (size `{m.get('size')}`), lr {t.get('lr')}, batch "
              f"{t.get('batch_size')}, at most {t.get('max_epochs')} epochs (patience {t.get('patience')} on "
              f"{t.get('select_on')}). Units done: {report['units_done']}/{report['units_expected']}.", ""]
    lines += ["## Per fold (test session, selected checkpoint)", "",
              "| seed | fold | test | n | WA % | UA % | macro-F1 % | best epoch | val UA % |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for f in report["folds"]:
        lines.append(f"| {f['seed']} | {f['fold']} | {f['test_group']} | {f['n']} | {pct(f['wa'])} | {pct(f['ua'])} "
                     f"| {pct(f['macro_f1'])} | {f['best_epoch']} | {pct(f['val_ua']) if f['val_ua'] is not None else '-'} |")
    summ = report.get("summary") or {}
    if summ:
        fo, se, po = summ["folds"], summ["seeds"], summ["pooled"]
        lines += ["", "## Summary", "", "| | WA % | UA % | macro-F1 % |", "|---|---:|---:|---:|",
                  f"| mean ± std over folds (primary) | {pct(fo['wa']['mean'])} ± {pct(fo['wa']['std'])} "
                  f"| {pct(fo['ua']['mean'])} ± {pct(fo['ua']['std'])} | {pct(fo['macro_f1']['mean'])} ± {pct(fo['macro_f1']['std'])} |",
                  _seeds_line(se),
                  f"| pooled over all {po['n']} predictions | {pct(po['wa'])} | {pct(po['ua'])} | {pct(po['macro_f1'])} |",
                  "", "## Pooled confusion matrix (rows = reference, columns = prediction)", "",
                  "| | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        for c, row in zip(classes, po["confusion"]):
            lines.append(f"| **{c}** | " + " | ".join(str(x) for x in row) + " |")
    v = report.get("versions", {})
    lines += ["", "Versions: " + ", ".join(f"{k} {v[k]}" for k in ("giamic", "torch", "transformers", "python", "device") if k in v),
              "", "The full configuration is in `report.json` (`config`)."]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, report: dict) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    write_json_atomic(run_dir / "report.json", report)
    write_text_atomic(run_dir / "report.md", report_markdown(report))
    return run_dir / "report.json", run_dir / "report.md"


def _seeds_line(se: dict) -> str:
    """The over-seeds row of the summary; one seed has no spread over seeds, so none is printed."""
    if se["wa"]["n"] < 2:
        return (f"| mean of the fold means (1 seed: no spread over seeds) | {pct(se['wa']['mean'])} "
                f"| {pct(se['ua']['mean'])} | {pct(se['macro_f1']['mean'])} |")
    return (f"| mean ± std over seeds ({se['wa']['n']}) of the fold means | {pct(se['wa']['mean'])} ± {pct(se['wa']['std'])} "
            f"| {pct(se['ua']['mean'])} ± {pct(se['ua']['std'])} | {pct(se['macro_f1']['mean'])} ± {pct(se['macro_f1']['std'])} |")
