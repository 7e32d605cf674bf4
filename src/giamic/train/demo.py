"""``giamic demo``: the whole pipeline on built-in data, on a CPU, in minutes.

It builds the demo corpus (``giamic.data.democorpus``: generated video, speech and text in
IEMOCAP's layout), prepares it, extracts features with CPU-sized encoders (the untrained tiny CLIP
and WavLM presets, frozen and cached, and the small pretrained MiniLM sentence encoder for text),
then runs leave-one-session-out for the full model and the Baseline (and, without ``--quick``, the
unimodal rows V, S, T and the γ = 0 model for the t-SNE figure) with the ``demo`` preset.

The numbers say that the pipeline works end to end on data with a known signal. They are not the
paper's: the corpus is generated and the video/speech encoders are untrained. The paper's numbers
need IEMOCAP, the pretrained encoders and a GPU (``giamic reproduce``, docs/reproducing.md).
Every step is resumable: rerunning the command reuses the corpus, the caches and finished folds.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from giamic.train.config import load_config
from giamic.train.metrics import pct
from giamic.utils.io import write_json_atomic, write_text_atomic

QUICK_ROWS = ("full", "baseline")
FULL_ROWS = ("full", "baseline", "V", "S", "T", "wo_mic")
ROW_NAMES = {"full": "GIA-MIC (V+S+T)", "baseline": "Baseline (V+S+T)", "V": "video only (tiny CLIP)",
             "S": "speech only (tiny WavLM)", "T": "text only (MiniLM)", "wo_mic": "GIA-MIC, γ = 0 (w/o MIC)"}
# CPU-sized extraction: 8 frames per utterance, the first 2 s of audio, 32 text tokens.
VIDEO_FRAMES, VIDEO_SEC, AUDIO_SAMPLES, TEXT_TOKENS = 8, 2.0, 32000, 32

NOTICE = ("The demo corpus is GENERATED (synthetic faces, voices and sentences with a planted emotion signal) "
          "and the video and speech encoders are UNTRAINED tiny networks; these numbers show that the pipeline "
          "works end to end, not how GIA-MIC performs. The paper's numbers need IEMOCAP, the pretrained "
          "encoders and a GPU: `giamic reproduce` (docs/reproducing.md).")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_demo_data(out: Path, seed: int = 0, log: Callable[[str], None] = _say) -> tuple[Path, dict[str, str]]:
    """Corpus → prepared dataset → feature caches (each step skipped when already done).
    Returns the data directory and the store key per modality."""
    from giamic.data.democorpus import make_corpus
    from giamic.data.iemocap import load_expected_counts, prepare_iemocap
    from giamic.features import ExtractOptions, build_encoder, extract

    corpus, data = out / "corpus", out / "data"
    if not (corpus / "expected_counts.json").is_file():  # written last by make_corpus
        t = time.perf_counter()
        info = make_corpus(corpus, seed=seed)
        log(f"demo corpus: {info.total} utterances generated in {time.perf_counter() - t:.1f}s -> {corpus}")
    if not (data / "dataset.json").is_file():  # written last by prepare
        prepare_iemocap(corpus, data, expected=load_expected_counts(corpus / "expected_counts.json"))
        log(f"prepared -> {data}")
    keys = {}
    specs = [("video", "tiny-clip-untrained", {}, dict(video_max_frames=VIDEO_FRAMES, video_max_sec=VIDEO_SEC, workers=1)),
             ("speech", "tiny-wavlm-untrained", dict(frozen=True, max_samples=AUDIO_SAMPLES), {}),
             ("text", "minilm", dict(max_tokens=TEXT_TOKENS), {})]
    for modality, name, kw, opts in specs:
        t = time.perf_counter()
        enc = build_encoder(name, **kw)
        res = extract(data, enc, ExtractOptions(progress=False, **opts))
        keys[modality] = res.key
        if not res.complete:
            raise RuntimeError(f"feature extraction of {name} did not complete ({res.root})")
        if res.computed:
            log(f"features {modality}: {res.key}, {res.computed} utterances in {time.perf_counter() - t:.1f}s")
    return data, keys


def demo_config(data: Path, keys: dict[str, str], variant: str, extra: list[str] | None = None):
    return load_config("demo", [f"model.variant={variant}", f"encoders.video_key={keys['video']}",
                                f"encoders.speech_key={keys['speech']}", f"encoders.text_key={keys['text']}",
                                *(extra or [])], data_dir=str(data))


def run_demo(out: str | Path = "giamic-demo", quick: bool = False, seed: int = 0, extra: list[str] | None = None,
             log: Callable[[str], None] = _say) -> dict:
    """Run the demo into ``out``; return the table (also written to ``out/demo.json`` and ``demo.md``)."""
    from giamic.train.run import run_cv

    t0 = time.perf_counter()
    out = Path(out)
    log(NOTICE)
    data, keys = build_demo_data(out, seed=seed, log=log)
    log(f"corpus, preparation and features ready after {time.perf_counter() - t0:.1f}s")
    rows = QUICK_ROWS if quick else FULL_ROWS
    table = []
    for variant in rows:
        cfg = demo_config(data, keys, variant, extra)
        rep = run_cv(cfg, out / "runs" / variant, title=f"Demo: {ROW_NAMES[variant]}", log=log, note=NOTICE)
        s = rep["summary"]
        table.append({"variant": variant, "name": ROW_NAMES[variant], "wa": s["folds"]["wa"]["mean"],
                      "wa_std": s["folds"]["wa"]["std"], "ua": s["folds"]["ua"]["mean"],
                      "ua_std": s["folds"]["ua"]["std"], "pooled_wa": s["pooled"]["wa"], "pooled_ua": s["pooled"]["ua"],
                      "report": str(out / "runs" / variant / "report.md")})
    figures = [str(out / "runs" / "full" / "confusion.png"), str(out / "runs" / "full" / "curves.png")]
    if "wo_mic" in rows:
        from giamic.train.tsne import tsne_from_runs

        fig, overlap = tsne_from_runs(out / "runs" / "wo_mic", out / "runs" / "full", out / "tsne.png",
                                      seed=seed, fold=None)
        figures.append(str(fig))
        log(f"t-SNE (Figure 2) -> {fig}; modality overlap (kNN share of other modalities): "
            f"γ = 0: {overlap['gamma0']:.2f}, γ = 0.1: {overlap['gamma']:.2f}")
    result = {"quick": quick, "seed": seed, "rows": table, "chance_wa": _chance(data), "figures": figures,
              "seconds": time.perf_counter() - t0, "notice": NOTICE, "data_dir": str(data)}
    write_json_atomic(out / "demo.json", result)
    write_text_atomic(out / "demo.md", demo_markdown(result))
    return result


def _chance(data: Path) -> float:
    """WA of always predicting the most frequent class (what "beats chance" is measured against)."""
    from collections import Counter

    from giamic.data import load_dataset

    counts = Counter(u.label for u in load_dataset(data).utterances)
    return max(counts.values()) / sum(counts.values())


def demo_markdown(result: dict) -> str:
    lines = ["# giamic demo: leave-one-session-out on the generated demo corpus", "", result["notice"], "",
             "| model | WA % (mean ± std over 5 folds) | UA % | pooled WA % | pooled UA % |",
             "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {pct(r['wa'])} ± {pct(r['wa_std'])} | {pct(r['ua'])} ± {pct(r['ua_std'])} "
                     f"| {pct(r['pooled_wa'])} | {pct(r['pooled_ua'])} |")
    lines += ["", f"Chance (majority class) WA: {pct(result['chance_wa'])} %; UA of any constant guess: 25.0 %.",
              f"Run time: {result['seconds']:.0f} s.", "", "Reports: " + ", ".join(r["report"] for r in result["rows"]),
              "Figures: " + ", ".join(result["figures"])]
    return "\n".join(lines) + "\n"
