"""The one runner of every experiment: corpus → prepare → (transcribe) → extract → one
cross-validation per row → Figure 2 → the table.

Every step is resumable and skipped when already done: the corpus and the prepared dataset are
kept, feature caches are reused, finished folds are not retrained. So rerunning an experiment
after a kill continues where it stopped, and a table row can be added later.

``giamic demo`` and ``giamic reproduce`` (``giamic.experiments.commands``) run the shipped
experiments ``demo.yaml`` and ``paper.yaml``; tests call :func:`prepare_data` and
:func:`run_experiment` as they do.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from giamic.errors import ConfigError, FeatureError
from giamic.experiments.spec import Experiment, Row
from giamic.log import show_progress
from giamic.modalities import Modality
from giamic.utils.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)
VIDEO, SPEECH, TEXT = Modality.VIDEO.value, Modality.SPEECH.value, Modality.TEXT.value


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset and its feature caches: ``keys`` maps an extraction's label (``video``,
    ``speech``, ``text``, ``text:asr``) to its feature-cache key."""

    data_dir: Path
    keys: dict[str, str] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    """What one run of an experiment produced."""

    out: Path
    data_dir: Path
    reports: dict[str, dict]  # row name -> cross-validation report
    figure: Path | None = None
    overlap: dict[str, float] | None = None
    seconds: float = 0.0
    table: Any = None  # the demo result or the paper table, as written
    failures: dict[str, str] = field(default_factory=dict)  # row (or "tsne") -> what went wrong (keep_going)


def _needs_asr(exp: Experiment) -> bool:
    return any(r.text_source == "asr" for r in exp.rows)


def prepare_data(exp: Experiment, out: str | Path, *, root: str | Path | None = None, device: str = "cpu",
                 extra: Sequence[str] = (), per_fold: int | None = None) -> PreparedData:
    """Corpus → prepared dataset (``out/data``) → transcripts → feature caches; each step skipped
    when done. ``root`` is the IEMOCAP tree for ``source: iemocap``. The caches are made with the
    encoders and caps of the recipe (with the ``extra`` settings), as its rows will read them.

    ``per_fold`` (the smoke run) keeps that many utterances of each test group, class-balanced, in
    ``out/data-smoke`` (:func:`subset_dataset`), which is then transcribed and encoded instead;
    without an ASR model its ASR transcripts are the ground truth, as a stand-in."""
    from giamic.data.iemocap import load_expected_counts, prepare_iemocap

    out = Path(out)
    data = out / "data"
    if exp.data.source == "generated":
        from giamic.data.democorpus import make_corpus

        corpus = out / "corpus"
        if not (corpus / "expected_counts.json").is_file():  # written last by make_corpus
            t = time.perf_counter()
            info = make_corpus(corpus, **exp.data.corpus)
            log.info(f"demo corpus: {info.total} utterances generated in {time.perf_counter() - t:.1f}s -> {corpus}")
        if not (data / "dataset.json").is_file():  # written last by prepare
            res = prepare_iemocap(corpus, data, expected=load_expected_counts(corpus / "expected_counts.json"))
            log.debug(res.summary_text())
            log.info(f"prepared -> {data}")
    else:
        if root is None:
            raise ConfigError(f"experiment {exp.name!r} reads an IEMOCAP tree: give its root folder")
        if not (data / "dataset.json").is_file():
            log.info(f"prepare: {root} -> {data}")
            log.info(prepare_iemocap(Path(root), data).summary_text())
    needs_asr = _needs_asr(exp)
    if per_fold is not None:
        data = subset_dataset(data, out / "data-smoke", per_fold)
        if needs_asr and not exp.data.asr_model:
            _asr_stand_in(data)
    if needs_asr and exp.data.asr_model:
        _transcribe(data, exp.data.asr_model, device)
    return PreparedData(data, _extract(exp, recipe_config(exp, data, extra), data, device, needs_asr))


def subset_dataset(data: Path, out: Path, per_fold: int) -> Path:
    """A prepared dataset at ``out`` with at most ``per_fold`` utterances of each fold's test group,
    taken in turn from each class (in the csv order), and the same folds restricted to them; the
    media stay where they are. Rewritten only when missing or made with another ``per_fold``."""
    import json

    from giamic.data import load_dataset
    from giamic.data.dataset import Fold, write_dataset

    meta = out / "dataset.json"
    if meta.is_file():
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("smoke_per_fold") == per_fold:
                return out
        except ValueError:  # an unreadable dataset.json: the subset is written again below
            pass
    ds = load_dataset(data)
    keep: set[str] = set()
    for fold in ds.folds:
        by_class: dict[str, list[str]] = {c: [] for c in ds.classes}
        for u in fold.test:
            by_class[ds.by_id[u].label].append(u)
        queues = [q for q in by_class.values() if q]
        taken = 0
        while taken < per_fold and queues:
            for q in list(queues):
                if taken >= per_fold:
                    break
                keep.add(q.pop(0))
                taken += 1
                if not q:
                    queues.remove(q)
    utts = [u for u in ds.utterances if u.utt_id in keep]
    folds = [Fold(f.name, f.test_group, [u for u in f.train if u in keep], [u for u in f.test if u in keep])
             for f in ds.folds]
    write_dataset(out, name=f"{ds.name}-smoke", classes=ds.classes, utterances=utts, folds=folds,
                  fold_scheme=ds.fold_scheme, source=ds.source,
                  extra={"smoke_of": str(ds.root), "smoke_per_fold": per_fold})
    log.info(f"smoke subset: {len(utts)} of {len(ds)} utterances ({per_fold} per fold, class-balanced) -> {out}")
    return out


def _asr_stand_in(data: Path) -> None:
    """ASR transcripts for a run without a Whisper model: the ground truth, recorded as such."""
    from giamic.data import load_dataset
    from giamic.data.dataset import set_asr_transcripts

    ds = load_dataset(data)
    if all(u.transcript_asr is not None for u in ds.utterances):
        return
    log.warning("no ASR model on this run: the ASR rows read the ground-truth transcripts as a stand-in")
    set_asr_transcripts(data, {u.utt_id: u.transcript or "" for u in ds.utterances},
                        source="ground truth (stand-in: no ASR model)")


def _transcribe(data: Path, asr_model: str, device: str) -> None:
    from giamic.data import load_dataset

    if all(u.transcript_asr is not None for u in load_dataset(data).utterances):
        return
    from giamic.inference.asr import WhisperSettings
    from giamic.inference.transcribe import transcribe_dataset

    cuda = "cuda" in device
    log.info(f"transcribe: Whisper {asr_model} -> transcript_asr (resumable)")
    transcribe_dataset(data, WhisperSettings(model=asr_model, device="cuda" if cuda else "cpu",
                                             compute_type="float16" if cuda else "int8"))


def recipe_config(exp: Experiment, data_dir: Path, extra: Sequence[str] = ()):
    """The recipe every row starts from: the preset with the recipe's and the ``extra`` settings."""
    from giamic.train.config import load_config

    return load_config(exp.recipe.preset, list(exp.recipe.overrides) + list(extra), data_dir=str(data_dir))


def _extract(exp: Experiment, cfg, data: Path, device: str, needs_asr: bool) -> dict[str, str]:
    """Fill each cache of ``exp.extract`` with the recipe's encoder and caps; return the keys."""
    from giamic.features import ExtractOptions, build_encoder, extract

    e, d = cfg.encoders, cfg.data
    keys: dict[str, str] = {}
    for job in exp.extract:
        if job.text_source == "asr" and not needs_asr:
            continue
        if job.modality == SPEECH and e.speech_mode != "cached":
            log.debug("speech is encoded online by this recipe (encoders.speech_mode=%s): no cache", e.speech_mode)
            continue
        kw: dict[str, Any] = {}
        opts: dict[str, Any] = {"workers": job.workers, "progress": show_progress()}
        if job.modality == VIDEO:
            opts["video_max_frames"] = d.max_frames
            opts["video_fps"] = d.video_fps
            if job.max_sec is not None:
                opts["video_max_sec"] = job.max_sec
        elif job.modality == SPEECH:
            kw.update(max_samples=int(round(d.audio_max_sec * d.audio_sr)), sample_rate=d.audio_sr,
                      normalize=d.audio_normalize)
        else:
            opts["text_source"] = job.text_source
            kw["max_tokens"] = d.max_tokens
        name, path = getattr(e, job.modality), getattr(e, f"{job.modality}_path")
        t = time.perf_counter()
        enc = build_encoder(name, path, device=device, frozen=True, **kw)
        res = extract(data, enc, ExtractOptions(**opts))
        del enc
        if not res.complete:
            raise FeatureError(f"feature extraction of {name} did not complete", res.root)
        keys[job.label] = res.key
        level = logging.INFO if res.computed else logging.DEBUG
        log.log(level, f"features {job.label}: {res.key}, {res.computed} utterances encoded, {res.reused} reused "
                       f"in {time.perf_counter() - t:.1f}s")
    return keys


def row_overrides(exp: Experiment, row: Row, prepared: PreparedData | None = None,
                  speech_cached: bool = True) -> list[str]:
    """The ``section.key=value`` settings that make the experiment's recipe into ``row``: its
    variant and text source, the feature caches of that text source, the recipe's overrides, then
    the row's own (which should not change what the caches were made with). ``speech_cached``:
    whether the recipe reads speech from a cache; when it fine-tunes WavLM a speech cache is not
    named (a speech key would select the cached mode)."""
    out = [f"model.variant={row.variant}"]
    if row.text_source != "gt":
        out.append(f"data.text_source={row.text_source}")
    for job in exp.extract:
        if job.modality == TEXT and job.text_source != row.text_source:
            continue
        if job.modality == SPEECH and not speech_cached:
            continue
        key = prepared.keys.get(job.label) if prepared is not None else None
        if key:
            out.append(f"encoders.{job.modality}_key={key}")
    return out + list(exp.recipe.overrides) + list(row.overrides)


def row_config(exp: Experiment, row: Row, prepared: PreparedData, extra: Sequence[str] = ()):
    """The resolved training configuration of one row (``extra``: settings for every row)."""
    from giamic.train.config import load_config

    recipe = recipe_config(exp, Path(prepared.data_dir), extra)
    sets = row_overrides(exp, row, prepared, speech_cached=recipe.encoders.speech_mode == "cached")
    if exp.seeds is not None:
        sets.append("train.seeds=" + ",".join(map(str, exp.seeds)))
    return load_config(exp.recipe.preset, sets + list(extra), data_dir=str(prepared.data_dir))


def run_experiment(exp: Experiment, out: str | Path, *, root: str | Path | None = None, quick: bool = False,
                   device: str = "cpu", extra: Sequence[str] = (), per_fold: int | None = None,
                   keep_going: bool = False) -> ExperimentResult:
    """Run ``exp`` (its quick rows with ``quick``) into ``out``: ``out/data``, ``out/runs/<row>``,
    ``out/tsne.png`` and the table. ``extra`` are ``section.key=value`` settings for every row (and
    for the extraction, e.g. ``encoders.video_path=DIR``); ``device`` is the device of extraction
    and transcription (training's is ``train.device``). ``per_fold`` runs on a class-balanced subset
    (:func:`prepare_data`). With ``keep_going`` a row that fails is logged with its traceback, marked
    in the table and in ``result.failures``, and the next row runs."""
    from giamic.experiments.tsne import tsne_from_runs
    from giamic.train.cv import run_cv

    t0 = time.perf_counter()
    out = Path(out)
    if quick:
        exp = exp.select(quick=True)
    if exp.notice:
        log.info(exp.notice)
    prepared = prepare_data(exp, out, root=root, device=device, extra=extra, per_fold=per_fold)
    log.info(f"corpus, preparation and features ready after {time.perf_counter() - t0:.1f}s")
    runs = out / "runs"
    reports: dict[str, dict] = {}
    seeds: dict[str, list[int]] = {}
    failures: dict[str, str] = {}
    for row in exp.rows:
        t_row = time.perf_counter()
        try:
            cfg = row_config(exp, row, prepared, extra)
            seeds[row.name] = list(cfg.train.seeds)
            log.info(f"== row {row.name}: variant {row.variant}, text {row.text_source}, seeds "
                     f"{' '.join(map(str, cfg.train.seeds))} -> {runs / row.name}")
            title = exp.report.title.format(name=row.name, label=row.label) if exp.report.title else None
            reports[row.name] = run_cv(cfg, runs / row.name, title=title, note=exp.notice)
        except Exception as e:  # noqa: BLE001 - keep_going: every failure is reported, none is hidden
            if not keep_going:
                raise
            failures[row.name] = f"{type(e).__name__}: {e}"
            log.error(f"row {row.name} FAILED after {time.perf_counter() - t_row:.1f}s: {failures[row.name]}",
                      exc_info=True)
    result = ExperimentResult(out=out, data_dir=prepared.data_dir, reports=reports, failures=failures)
    if exp.tsne and exp.tsne.gamma0 in reports and exp.tsne.gamma in reports:
        seed = seeds[exp.tsne.gamma][0]
        try:
            result.figure, result.overlap = tsne_from_runs(runs / exp.tsne.gamma0, runs / exp.tsne.gamma,
                                                           out / "tsne.png", seed=seed, fold=exp.tsne.fold)
            log.info(f"t-SNE (Figure 2) -> {result.figure}; modality overlap (kNN share of other modalities): "
                     f"γ = 0: {result.overlap['gamma0']:.2f}, γ = 0.1: {result.overlap['gamma']:.2f}")
        except Exception as e:  # noqa: BLE001
            if not keep_going:
                raise
            failures["tsne"] = f"{type(e).__name__}: {e}"
            log.error(f"t-SNE FAILED: {failures['tsne']}", exc_info=True)
    result.seconds = time.perf_counter() - t0
    result.table = _write_table(exp, result, quick)
    return result


def _write_table(exp: Experiment, result: ExperimentResult, quick: bool) -> Any:
    from giamic.experiments import tables

    out = result.out
    if exp.report.kind == "paper":
        table = tables.paper_table(result.reports, {r.name: result.failures.get(r.name) for r in exp.rows})
        seeds = exp.seeds or ()
        write_json_atomic(out / "paper_table.json", {"rows": table, "seeds": list(seeds),
                                                     "figure": str(result.figure) if result.figure else None,
                                                     "failures": dict(result.failures), "seconds": result.seconds,
                                                     "data_dir": str(result.data_dir)})
        write_text_atomic(out / "paper_table.md", tables.paper_table_markdown(table, seeds, result.failures))
        return table
    first = next(iter(result.reports))
    figures = [str(out / "runs" / first / "confusion.png"), str(out / "runs" / first / "curves.png")]
    if result.figure is not None:
        figures.append(str(result.figure))
    demo = {"quick": quick, "seed": int(exp.data.corpus.get("seed", 0)),
            "rows": tables.demo_rows(result.reports, {r.name: r.label for r in exp.rows}, out / "runs"),
            "chance_wa": tables.chance_wa(result.data_dir), "figures": figures, "seconds": result.seconds,
            "notice": exp.notice, "data_dir": str(result.data_dir)}
    write_json_atomic(out / "demo.json", demo)
    write_text_atomic(out / "demo.md", tables.demo_markdown(demo))
    return demo
