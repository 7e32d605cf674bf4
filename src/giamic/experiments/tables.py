"""The experiments' tables: the demo table (``demo.md``/``.json``) and the paper table
(``paper_table.md``/``.json``: the paper's WA/UA beside ours).

Each row is one cross-validation report (``giamic.train.report``); these functions only read
its summary. WA/UA follow docs/decisions.md ("what the report averages"): mean over the folds of
each seed, then mean ± std over seeds for the paper table.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from giamic.train.metrics import pct

__all__ = ["chance_wa", "demo_markdown", "demo_rows", "paper_table", "paper_table_markdown"]


def demo_rows(reports: dict[str, dict], labels: dict[str, str], runs_dir: Path) -> list[dict]:
    """One line per row: mean ± std over folds of WA/UA, pooled WA/UA, and where its report is."""
    table = []
    for name, rep in reports.items():
        s = rep["summary"]
        table.append({"variant": name, "name": labels[name], "wa": s["folds"]["wa"]["mean"],
                      "wa_std": s["folds"]["wa"]["std"], "ua": s["folds"]["ua"]["mean"],
                      "ua_std": s["folds"]["ua"]["std"], "pooled_wa": s["pooled"]["wa"], "pooled_ua": s["pooled"]["ua"],
                      "report": str(runs_dir / name / "report.md")})
    return table


def chance_wa(data_dir: Path) -> float:
    """WA of always predicting the most frequent class (what "beats chance" is measured against)."""
    from giamic.data import load_dataset

    counts = Counter(u.label for u in load_dataset(data_dir).utterances)
    return max(counts.values()) / sum(counts.values())


def demo_markdown(result: dict) -> str:
    lines = ["# giamic demo: leave-one-session-out on the generated demo corpus", ""]
    if result.get("notice"):
        lines += [result["notice"], ""]
    lines += ["| model | WA % (mean ± std over 5 folds) | UA % | pooled WA % | pooled UA % |",
              "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {pct(r['wa'])} ± {pct(r['wa_std'])} | {pct(r['ua'])} ± {pct(r['ua_std'])} "
                     f"| {pct(r['pooled_wa'])} | {pct(r['pooled_ua'])} |")
    lines += ["", f"Chance (majority class) WA: {pct(result['chance_wa'])} %; UA of any constant guess: 25.0 %.",
              f"Run time: {result['seconds']:.0f} s.", "", "Reports: " + ", ".join(r["report"] for r in result["rows"]),
              "Figures: " + ", ".join(result["figures"])]
    return "\n".join(lines) + "\n"


def paper_table(results: dict[str, dict], order: dict[str, str | None] | None = None) -> list[dict]:
    """One line per row: the paper's WA/UA and ours (mean over folds of each seed, then mean ± std
    over seeds). ``order`` (row -> None, or the failure of a row that failed) gives the rows in
    table order; a failed row keeps its line, marked with ``failed``."""
    from giamic.models.variants import PAPER_TABLE1, PAPER_TABLE2

    lines = []
    for row in (order if order is not None else results):
        rep = results.get(row) or {}
        paper = PAPER_TABLE2.get(row) or PAPER_TABLE1.get(row)
        s = rep.get("summary") or {}
        seeds = s.get("seeds", {})
        lines.append({"row": row, "table": 1 if row in PAPER_TABLE1 and row not in PAPER_TABLE2 else 2,
                      "modality": paper.modality if paper else "V+S+T", "method": paper.method if paper else row,
                      "paper_wa": paper.wa if paper else None, "paper_ua": paper.ua if paper else None,
                      "wa": 100 * seeds["wa"]["mean"] if seeds else None, "wa_std": 100 * seeds["wa"]["std"] if seeds else None,
                      "ua": 100 * seeds["ua"]["mean"] if seeds else None, "ua_std": 100 * seeds["ua"]["std"] if seeds else None,
                      "units": f"{rep.get('units_done')}/{rep.get('units_expected')}" if rep else "-",
                      "failed": (order or {}).get(row)})
    return lines


def _seed_note(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    return f"± std over seeds {seeds}" if len(seeds) > 1 else f"with seed {seeds[0]} (one seed: no spread)"


def paper_table_markdown(table: list[dict], seeds: Sequence[int], failures: dict[str, str] | None = None) -> str:
    def f(x, sd=None):
        if x is None:
            return "-"
        return f"{x:.1f}" + (f" ± {sd:.1f}" if sd is not None else "")

    lines = ["# GIA-MIC on IEMOCAP: the paper's numbers beside ours", "",
             f"Leave-one-session-out, mean over the 5 folds; ours {_seed_note(seeds)}. WA/UA in %.", "",
             "| table | modality | method | paper WA | paper UA | our WA | our UA | units |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in table:
        spread = len(seeds) > 1  # one seed has no spread over seeds: no "± 0.0"
        units = f"**FAILED** ({r['row']})" if r.get("failed") else r["units"]
        lines.append(f"| {r['table']} | {r['modality']} | {r['method']} | {f(r['paper_wa'])} | {f(r['paper_ua'])} "
                     f"| {f(r['wa'], r['wa_std'] if spread else None)} | {f(r['ua'], r['ua_std'] if spread else None)} "
                     f"| {units} |")
    if failures:
        lines += ["", f"**{len(failures)} step(s) failed** (the log has each traceback):", ""]
        lines += [f"- `{name}`: {msg}" for name, msg in failures.items()]
    return "\n".join(lines) + "\n"
