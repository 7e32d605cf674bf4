"""``giamic reproduce IEMOCAP_ROOT --out DIR``: the whole paper on a real corpus.

Steps, each resumable and skipped when done:

1. ``prepare``: IEMOCAP → ``DIR/data`` (5,531 utterances, 5 leave-one-session-out folds);
2. ``transcribe`` (for the ASR row of Table 1): Whisper transcripts into ``transcript_asr``;
3. ``extract``: frozen CLIP frames and RoBERTa tokens (ground-truth text, and ASR text) cached once;
4. one ``cv`` run per table row into ``DIR/runs/<row>`` (5 folds × seeds, WavLM fine-tuned online);
5. Figure 2 (``DIR/tsne.png``) from the γ = 0 (``wo_mic``) and γ = 0.1 (``full``) runs;
6. ``DIR/paper_table.md`` / ``.json``: the paper's WA/UA beside ours (mean over folds; ± over seeds).

Every row is also one documented ``giamic cv`` command (``row_command``; docs/reproducing.md).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from giamic.train.config import load_config
from giamic.train.metrics import pct
from giamic.utils.io import write_json_atomic, write_text_atomic

# Table 2 in the paper's order, then Table 1's ASR row (the V+S+T(GT) row of Table 1 is "full").
TABLE2_ROWS = ("V", "S", "T", "baseline_VS", "baseline_ST", "baseline_VT", "VS", "ST", "VT", "full",
               "wo_msr", "wo_mir", "wo_mic")
TABLE1_ROWS = ("full", "asr_text")
ALL_ROWS = TABLE2_ROWS + ("asr_text",)


def row_overrides(row: str) -> list[str]:
    """``--set`` overrides that make the paper preset into one table row."""
    out = [f"model.variant={row}"]
    if row == "asr_text":
        out.append("data.text_source=asr")  # spec §6: ASR text for training and test
    return out


def row_command(row: str, data_dir: str = "DIR/data", out: str = "DIR/runs", seeds: str = "0 1 2") -> str:
    text = " --text asr" if row == "asr_text" else ""
    return f"giamic cv {data_dir} --variant {row}{text} --seeds {seeds} --out {out}/{row}"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_data(root: Path, out: Path, asr_model: str | None, device: str, encoder_paths: dict[str, str | None],
                 log: Callable[[str], None] = _say) -> Path:
    """Steps 1-3: the prepared dataset with its feature caches."""
    from giamic.data import load_dataset
    from giamic.data.iemocap import prepare_iemocap
    from giamic.features import ExtractOptions, build_encoder, extract

    data = out / "data"
    if not (data / "dataset.json").is_file():
        log(f"prepare: {root} -> {data}")
        log(prepare_iemocap(root, data).summary_text())
    if asr_model:
        ds = load_dataset(data)
        if any(u.transcript_asr is None for u in ds.utterances):
            from giamic.inference.asr import WhisperSettings
            from giamic.inference.transcribe import transcribe_dataset

            log(f"transcribe: Whisper {asr_model} -> transcript_asr (resumable)")
            transcribe_dataset(data, WhisperSettings(model=asr_model, device="cuda" if "cuda" in device else "cpu",
                                                     compute_type="float16" if "cuda" in device else "int8"))
    jobs = [("clip", ExtractOptions(progress=True)), ("roberta", ExtractOptions(progress=True))]
    if asr_model:
        jobs.append(("roberta", ExtractOptions(progress=True, text_source="asr")))
    for name, opts in jobs:
        enc = build_encoder(name, encoder_paths.get(name), device=device, frozen=True)
        res = extract(data, enc, opts)
        log(f"features {name} ({opts.text_source if enc.modality == 'text' else 'frames'}): {res.key}, "
            f"{res.computed} encoded, {res.reused} reused")
        del enc
    return data


def run_reproduce(root: str | Path, out: str | Path, rows: tuple[str, ...] = ALL_ROWS, seeds: tuple[int, ...] = (0, 1, 2),
                  asr_model: str | None = "large-v2", device: str = "auto", encoder_paths: dict | None = None,
                  extra: list[str] | None = None, log: Callable[[str], None] = _say) -> dict:
    import torch

    from giamic.train.run import run_cv
    from giamic.train.tsne import tsne_from_runs

    out = Path(out)
    encoder_paths = encoder_paths or {}
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if "asr_text" not in rows:
        asr_model = None
    data = prepare_data(Path(root), out, asr_model, dev, encoder_paths, log)
    paths = [f"encoders.{m}_path={encoder_paths[n]}" for m, n in (("video", "clip"), ("speech", "wavlm"), ("text", "roberta"))
             if encoder_paths.get(n)]
    results = {}
    for row in rows:
        cfg = load_config("paper", row_overrides(row) + [f"train.seeds={','.join(map(str, seeds))}", *paths, *(extra or [])],
                          data_dir=str(data))
        log(f"== row {row}: {row_command(row, str(data), str(out / 'runs'), ' '.join(map(str, seeds)))}")
        results[row] = run_cv(cfg, out / "runs" / row, log=log)
    figure = None
    if "full" in results and "wo_mic" in results:
        figure, overlap = tsne_from_runs(out / "runs" / "wo_mic", out / "runs" / "full", out / "tsne.png", seed=seeds[0])
        log(f"Figure 2 -> {figure} (modality overlap γ=0: {overlap['gamma0']:.2f}, γ=0.1: {overlap['gamma']:.2f})")
    table = paper_table(results)
    write_json_atomic(out / "paper_table.json", {"rows": table, "seeds": list(seeds), "figure": str(figure) if figure else None})
    write_text_atomic(out / "paper_table.md", paper_table_markdown(table, seeds))
    return {"rows": table, "figure": figure}


def paper_table(results: dict[str, dict]) -> list[dict]:
    """One line per row: the paper's WA/UA and ours (mean over folds of each seed, then mean ± std
    over seeds, spec §2 items 40 and 49)."""
    from giamic.models.variants import PAPER_TABLE1, PAPER_TABLE2

    lines = []
    for row, rep in results.items():
        paper = PAPER_TABLE2.get(row) or PAPER_TABLE1.get(row)
        s = rep.get("summary") or {}
        seeds = s.get("seeds", {})
        lines.append({"row": row, "table": 1 if row == "asr_text" else 2,
                      "modality": paper.modality if paper else "V+S+T", "method": paper.method if paper else row,
                      "paper_wa": paper.wa if paper else None, "paper_ua": paper.ua if paper else None,
                      "wa": 100 * seeds["wa"]["mean"] if seeds else None, "wa_std": 100 * seeds["wa"]["std"] if seeds else None,
                      "ua": 100 * seeds["ua"]["mean"] if seeds else None, "ua_std": 100 * seeds["ua"]["std"] if seeds else None,
                      "units": f"{rep.get('units_done')}/{rep.get('units_expected')}"})
    return lines


def paper_table_markdown(table: list[dict], seeds) -> str:
    def f(x, sd=None):
        if x is None:
            return "-"
        return f"{x:.1f}" + (f" ± {sd:.1f}" if sd is not None else "")

    lines = ["# GIA-MIC on IEMOCAP: the paper's numbers beside ours", "",
             f"Leave-one-session-out, mean over the 5 folds; ours ± std over seeds {list(seeds)}. WA/UA in %.", "",
             "| table | modality | method | paper WA | paper UA | our WA | our UA | units |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['table']} | {r['modality']} | {r['method']} | {f(r['paper_wa'])} | {f(r['paper_ua'])} "
                     f"| {f(r['wa'], r['wa_std'])} | {f(r['ua'], r['ua_std'])} | {r['units']} |")
    return "\n".join(lines) + "\n"


__all__ = ["ALL_ROWS", "TABLE1_ROWS", "TABLE2_ROWS", "paper_table", "pct", "row_command", "row_overrides", "run_reproduce"]
