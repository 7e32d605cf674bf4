"""A declarative experiment: which data, which feature caches, which recipe, which table rows.

An experiment is a YAML file (the built-in ones ship beside this module: ``demo.yaml``,
``paper.yaml``; any other file can be given by path). :func:`load_experiment` reads and checks it
into an :class:`Experiment`; ``giamic.experiments.runner.run_experiment`` executes it. Keys::

    name: demo                      # names the experiment in messages
    notice: "..."                   # optional: logged first and put into every report
    data:
      source: generated | iemocap   # the demo corpus made here, or an IEMOCAP tree given at run time
      corpus: {n_per_dialog: 10}    # generated: giamic.data.democorpus.make_corpus settings
      asr_model: large-v2           # Whisper model for rows with text_source asr (null: none)
    recipe: {preset: demo, overrides: ["train.lr=3e-3"]}   # giamic.train.config preset and --set items
    extract:                        # the feature caches to fill, with the recipe's encoders and caps
      - {modality: video, max_sec: 2.0, workers: 1}       # max_sec: the frame window (default 6 s)
      - {modality: speech}          # only when the recipe caches speech (encoders.speech_mode: cached)
      - {modality: text, text_source: asr}
    seeds: [0, 1, 2]                # training seeds (default: the preset's)
    rows:                           # one cross-validation run each, in table order
      - {name: full, label: "GIA-MIC (V+S+T)"}            # variant defaults to the name
      - {name: asr_text, text_source: asr}
    quick: [full, baseline]         # the rows of a --quick run
    tsne: {gamma0: wo_mic, gamma: full}   # Figure 2 from these two rows, when both ran
    report: {kind: demo | paper, title: "Demo: {label}"}
    smoke:                          # optional: the --smoke rehearsal (see :class:`Smoke`)
      seeds: [0]
      per_fold: 24                  # utterances kept per fold's test group (class-balanced)
      overrides: ["train.max_epochs=2"]
      cpu: {preset: demo, overrides: []}   # the recipe without a GPU (CPU-sized encoders)
      cpu_asr_model: null           # Whisper model on a CPU (null: the ASR rows read the ground truth)

Extraction follows the recipe, so every setting is written once: the encoder is
``encoders.<modality>`` (and ``encoders.<modality>_path``), the frame cap ``data.max_frames``, the
token cap ``data.max_tokens``, the speech window ``data.audio_max_sec``; each row then reads the
cache of its text source (``encoders.<modality>_key``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from giamic.errors import ConfigError
from giamic.modalities import MODALITIES, Modality

PACKAGE = "giamic.experiments"
SOURCES = ("generated", "iemocap")
TEXT_SOURCES = ("gt", "asr")
REPORT_KINDS = ("demo", "paper")


@dataclass(frozen=True)
class Extraction:
    """One feature cache to fill, with the recipe's encoder for ``modality`` and its caps.

    Args:
        modality: ``video``, ``speech`` (only filled when the recipe caches speech) or ``text``.
        text_source: text: ``gt`` or ``asr`` transcripts.
        max_sec: video: the frame window from the utterance start in seconds (default 6 s).
        workers: decoding processes.
    """

    modality: str
    text_source: str = "gt"
    max_sec: float | None = None
    workers: int = 0

    @property
    def label(self) -> str:
        """``video``, ``speech``, ``text`` or ``text:asr``: this cache's place among the keys."""
        return f"{self.modality}:{self.text_source}" if self.modality == Modality.TEXT and self.text_source != "gt" \
            else self.modality


@dataclass(frozen=True)
class Row:
    """One table row: one cross-validation run into ``runs/<name>``.

    Args:
        name: the row's key and run folder.
        variant: the Table 2 variant (default: ``name``).
        label: the row's name in the demo table (default: ``name``).
        text_source: ``gt`` or ``asr`` transcripts for training and test.
        overrides: extra ``section.key=value`` settings for this row only.
    """

    name: str
    variant: str = ""
    label: str = ""
    text_source: str = "gt"
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", self.variant or self.name)
        object.__setattr__(self, "label", self.label or self.name)
        object.__setattr__(self, "overrides", tuple(self.overrides))


@dataclass(frozen=True)
class DataSpec:
    """Where the corpus comes from (``generated`` here, or an ``iemocap`` root given at run time)."""

    source: str = "generated"
    corpus: dict = field(default_factory=dict)
    asr_model: str | None = None


@dataclass(frozen=True)
class Recipe:
    """The training recipe: a ``giamic.train.config`` preset and ``section.key=value`` overrides."""

    preset: str = "paper"
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tsne:
    """Figure 2 from the ``gamma0`` (γ = 0) and ``gamma`` rows, one fold (default: the first finished)."""

    gamma0: str
    gamma: str
    fold: str | None = None


@dataclass(frozen=True)
class ReportSpec:
    """The experiment's table: ``demo`` (demo.md/.json) or ``paper`` (paper_table.md/.json, the
    paper's numbers beside ours); ``title`` formats each row's report title (``{label}``, ``{name}``)."""

    kind: str = "demo"
    title: str | None = None


@dataclass(frozen=True)
class Smoke:
    """The ``--smoke`` rehearsal of an experiment: every row on a small class-balanced subset of the
    same corpus, with few seeds and epochs, to find a broken step in minutes before a long run.

    Args:
        seeds: the training seeds (default: one).
        per_fold: utterances kept per test group (so per fold's test part), spread over the classes.
        overrides: ``section.key=value`` settings for every row (fewer epochs, smaller batches).
        cpu: the recipe used when the run has no GPU (CPU-sized encoders); None keeps the experiment's.
        cpu_asr_model: the Whisper model of the ASR rows on a CPU; None: those rows read the
            ground-truth transcripts as a stand-in (logged), since a CPU run has no Whisper weights.
    """

    seeds: tuple[int, ...] = (0,)
    per_fold: int = 24
    overrides: tuple[str, ...] = ()
    cpu: Recipe | None = None
    cpu_asr_model: str | None = None


@dataclass(frozen=True)
class Experiment:
    """A whole experiment; see the module docstring for the YAML keys."""

    name: str
    data: DataSpec
    extract: tuple[Extraction, ...]
    recipe: Recipe
    rows: tuple[Row, ...]
    report: ReportSpec = ReportSpec()
    seeds: tuple[int, ...] | None = None
    quick: tuple[str, ...] = ()
    tsne: Tsne | None = None
    notice: str | None = None
    smoke: Smoke | None = None
    source: str = ""  # the file it was read from

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise ConfigError(f"{self.name}: unknown row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def select(self, names: list[str] | tuple[str, ...] | None = None, quick: bool = False) -> "Experiment":
        """The experiment restricted to the rows ``names`` (in that order) or to the quick rows."""
        if names is None and not quick:
            return self
        wanted = list(names) if names is not None else list(self.quick)
        if quick and not self.quick:
            raise ConfigError(f"{self.name}: no quick rows defined")
        rows = tuple(self.row(n) for n in dict.fromkeys(wanted))
        return dataclasses.replace(self, rows=rows)

    def replace(self, **changes: Any) -> "Experiment":
        return dataclasses.replace(self, **changes)

    def smoke_run(self, gpu: bool) -> "Experiment":
        """The experiment as its ``--smoke`` rehearsal: the smoke seeds, the smoke settings after the
        recipe's, and without a GPU the smoke CPU recipe and ASR model."""
        if self.smoke is None:
            raise ConfigError(f"{self.name}: no smoke section, so no --smoke run", self.source or None)
        sm = self.smoke
        recipe = self.recipe if gpu or sm.cpu is None else sm.cpu
        recipe = Recipe(preset=recipe.preset, overrides=tuple(recipe.overrides) + tuple(sm.overrides))
        data = self.data if gpu else dataclasses.replace(self.data, asr_model=sm.cpu_asr_model)
        return dataclasses.replace(self, recipe=recipe, seeds=tuple(sm.seeds), data=data)


# -- reading -----------------------------------------------------------------------------------------
def experiment_names() -> list[str]:
    """The experiments shipped in the package."""
    return sorted(p.name[:-5] for p in resources.files(PACKAGE).iterdir() if p.name.endswith(".yaml"))


def load_experiment(name_or_path: str | Path, changes: Mapping | None = None) -> Experiment:
    """Read a shipped experiment by name (``demo``, ``paper``) or a YAML file by path; ``changes``
    (a nested mapping, e.g. ``{"data": {"corpus": {"seed": 3}}}``) is merged in before checking."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        text, where = p.read_text(encoding="utf-8"), str(p)
    else:
        res = resources.files(PACKAGE) / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"no experiment file or built-in experiment named {str(name_or_path)!r}; built-in: "
                              f"{', '.join(experiment_names())}")
        text, where = res.read_text(encoding="utf-8"), f"giamic/experiments/{name_or_path}.yaml"
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({e})", where) from e
    if changes:
        d = _merged(d, changes)
    return experiment_from_dict(d, where)


def _merged(base: Any, changes: Mapping) -> dict:
    out = dict(base) if isinstance(base, Mapping) else {}
    for k, v in changes.items():
        out[k] = _merged(out.get(k), v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


class _Keys:
    """Checked access to one mapping of the file; errors name the file and the key."""

    def __init__(self, d: Any, where: str, prefix: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(d, Mapping):
            raise ConfigError(f"{prefix or 'the experiment'} must be a mapping, got {d!r}", where)
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(f'{prefix}{k}' for k in unknown)}; allowed: "
                              f"{', '.join(allowed)}", where)
        self.d, self.where, self.prefix = d, where, prefix

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.d or self.d[key] is None:
            if default is ...:
                raise ConfigError(f"{self.prefix}{key} is missing", self.where)
            return default
        v = self.d[key]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(t.__name__ for t in kind)
            raise ConfigError(f"{self.prefix}{key} must be {want}, got {v!r}", self.where)
        return v

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = ...) -> str:
        v = self.get(key, str, default)
        if v not in allowed:
            raise ConfigError(f"{self.prefix}{key} is {v!r}; allowed: {', '.join(allowed)}", self.where)
        return v


def _strings(v: Any, what: str, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{what} must be a list of strings, got {v!r}", where)
    return tuple(v)


def experiment_from_dict(d: Mapping, where: str = "experiment") -> Experiment:
    """Check a parsed experiment file and build the :class:`Experiment`."""
    top = _Keys(d, where, "", ("name", "notice", "data", "extract", "recipe", "seeds", "rows", "quick", "tsne",
                               "report", "smoke"))
    dk = _Keys(top.get("data", dict, {}), where, "data.", ("source", "corpus", "asr_model"))
    data = DataSpec(source=dk.choice("source", SOURCES, "generated"), corpus=dict(dk.get("corpus", dict, {})),
                    asr_model=dk.get("asr_model", str, None))
    jobs = []
    for i, e in enumerate(top.get("extract", list, [])):
        ek = _Keys(e, where, f"extract[{i}].", tuple(f.name for f in dataclasses.fields(Extraction)))
        job = Extraction(modality=ek.choice("modality", MODALITIES),
                         text_source=ek.choice("text_source", TEXT_SOURCES, "gt"),
                         max_sec=ek.get("max_sec", float, None), workers=ek.get("workers", int, 0))
        if job.max_sec is not None and job.modality != Modality.VIDEO:
            raise ConfigError(f"extract[{i}].max_sec is the video frame window; the {job.modality} window "
                              f"follows the recipe", where)
        if job.label in {j.label for j in jobs}:
            raise ConfigError(f"extract[{i}]: a second {job.label} extraction", where)
        jobs.append(job)
    recipe = _recipe(top.get("recipe", dict, {}), where, "recipe.")
    rows = []
    for i, r in enumerate(top.get("rows", list)):
        if isinstance(r, str):
            r = {"name": r}
        rowk = _Keys(r, where, f"rows[{i}].", ("name", "variant", "label", "text_source", "overrides"))
        row = Row(name=rowk.get("name", str), variant=rowk.get("variant", str, ""), label=rowk.get("label", str, ""),
                  text_source=rowk.choice("text_source", TEXT_SOURCES, "gt"),
                  overrides=_strings(rowk.get("overrides", list, []), f"rows[{i}].overrides", where))
        if row.name in {x.name for x in rows}:
            raise ConfigError(f"rows[{i}]: row {row.name!r} appears twice", where)
        rows.append(row)
    if not rows:
        raise ConfigError("rows is empty", where)
    names = {r.name for r in rows}
    seeds = top.get("seeds", list, None)
    if seeds is not None and (not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}", where)
    quick = _strings(top.get("quick", list, []), "quick", where)
    tsne = None
    if top.get("tsne", dict, None) is not None:
        tk = _Keys(top.get("tsne", dict), where, "tsne.", ("gamma0", "gamma", "fold"))
        tsne = Tsne(gamma0=tk.get("gamma0", str), gamma=tk.get("gamma", str), fold=tk.get("fold", str, None))
    for what, wanted in (("quick", quick), ("tsne", (tsne.gamma0, tsne.gamma) if tsne else ())):
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ConfigError(f"{what} names unknown row(s) {unknown}; rows: {', '.join(r.name for r in rows)}", where)
    pk = _Keys(top.get("report", dict, {}), where, "report.", ("kind", "title"))
    report = ReportSpec(kind=pk.choice("kind", REPORT_KINDS, "demo"), title=pk.get("title", str, None))
    smoke = None
    if top.get("smoke", dict, None) is not None:
        sk = _Keys(top.get("smoke", dict), where, "smoke.", ("seeds", "per_fold", "overrides", "cpu", "cpu_asr_model"))
        s_seeds = sk.get("seeds", list, [0])
        if not s_seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in s_seeds):
            raise ConfigError(f"smoke.seeds must be a non-empty list of integers, got {s_seeds!r}", where)
        per_fold = sk.get("per_fold", int, 24)
        if per_fold < 1:
            raise ConfigError(f"smoke.per_fold must be >= 1, got {per_fold}", where)
        cpu = sk.get("cpu", dict, None)
        smoke = Smoke(seeds=tuple(s_seeds), per_fold=per_fold,
                      overrides=_strings(sk.get("overrides", list, []), "smoke.overrides", where),
                      cpu=None if cpu is None else _recipe(cpu, where, "smoke.cpu."),
                      cpu_asr_model=sk.get("cpu_asr_model", str, None))
    return Experiment(name=top.get("name", str, Path(where).stem), notice=top.get("notice", str, None), data=data,
                      extract=tuple(jobs), recipe=recipe, rows=tuple(rows), report=report,
                      seeds=tuple(seeds) if seeds is not None else None, quick=quick, tsne=tsne, smoke=smoke,
                      source=where)


def _recipe(d: Any, where: str, prefix: str) -> Recipe:
    rk = _Keys(d, where, prefix, ("preset", "overrides"))
    return Recipe(preset=rk.get("preset", str, "paper"),
                  overrides=_strings(rk.get("overrides", list, []), f"{prefix}overrides", where))
