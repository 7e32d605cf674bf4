"""Cross-validation: every (seed, fold) unit of one variant, then the report and plots.

``run_cv(cfg, out_dir)`` is what ``giamic cv`` and ``giamic train`` run, and what the experiments
(``giamic.experiments``: the demo, the paper's tables) run once per table row. Finished units are
skipped and unfinished ones resumed (each unit's own checkpoint, ``giamic.train.recipe``), so
rerunning the same command after a kill continues.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from giamic.errors import ConfigError, FeatureError
from giamic.modalities import Modality
from giamic.modeldir import (AudioPreprocessing, EncoderRecord, PipelineSpec, Preprocessing, TextPreprocessing,
                             VideoPreprocessing)
from giamic.train.batches import CachedModality, ModelInputs, OnlineSpeech
from giamic.train.config import RunConfig, format_config
from giamic.train.distributed import DistInfo, init_distributed
from giamic.train.recipe import UnitSpec, model_modalities, train_unit
from giamic.train.report import build_report, unit_dirs, write_report
from giamic.utils.io import output_lock, write_text_atomic

log = logging.getLogger(__name__)
SPEECH, VIDEO, TEXT = Modality.SPEECH.value, Modality.VIDEO.value, Modality.TEXT.value


def _store_for(data_dir: str, name: str, key: str | None, modality: str, cfg: RunConfig):
    from giamic.features import FeatureStore, find_feature_key

    if not key:
        settings = {"text_source": cfg.data.text_source} if modality == TEXT else {}
        if modality == VIDEO:  # the store extracted at this frame rate (absent = the native rate)
            settings = {"video_fps": None if cfg.data.video_fps is None else float(cfg.data.video_fps)}
        key = find_feature_key(data_dir, name, **settings)
    store = FeatureStore.open(data_dir, key)
    if store.modality not in (None, modality):
        raise FeatureError(f"feature store {key} holds {store.modality} features, not {modality}", store.root)
    return store


class InputFactory:
    """Opens the feature caches once and hands each unit its :class:`ModelInputs`; a fine-tuned
    speech encoder is rebuilt from its pretrained weights for every unit (no unit may start from
    another unit's fine-tuned weights)."""

    def __init__(self, cfg: RunConfig, dataset, device, record_access: bool = False):
        self.cfg, self.dataset, self.device, self.record_access = cfg, dataset, device, record_access
        self.modalities = model_modalities(cfg)
        e, d = cfg.encoders, cfg.data
        self.cached: dict[str, CachedModality] = {}
        self.encoders_info: dict[str, EncoderRecord] = {}
        caps = {VIDEO: d.max_frames, TEXT: d.max_tokens, SPEECH: None}
        for m in self.modalities:
            name, path, key = getattr(e, m), getattr(e, f"{m}_path"), getattr(e, f"{m}_key")
            if m == SPEECH and e.speech_mode == "finetune":
                continue
            store = _store_for(d.data_dir, name, key, m, cfg)
            setattr(e, f"{m}_key", store.key)  # the resolved key enters config.yaml and the unit fingerprint
            ids = [u.utt_id for u in dataset.utterances]
            longest = max((store.length(u) for u in ids if u in store), default=1)
            # Fixed slot length (giamic.collate): the cap, or the longest cached utterance if shorter.
            length = max(1, min(caps[m], longest) if caps[m] else longest)
            missing = [u for u in ids if u not in store and u not in store.absent]
            if missing:
                raise FeatureError(f"feature store {store.key} lacks {len(missing)} utterance(s) of the dataset, "
                                   f"e.g. {missing[:3]}; rerun `giamic extract`", store.root)
            info = EncoderRecord(name=name, name_or_path=path, identity=store.identity, feature_key=store.key,
                                 dim=store.dim, mode="cached", extraction=store.meta.get("extraction", {}))
            self.cached[m] = CachedModality(m, _AbsentAsEmpty(store), length, store.dim, info)
            self.encoders_info[m] = info
        # Standardisation (data.standardize): imported stores (unknown scales) with "auto", every
        # cached modality with "on". "auto" is recorded as what it became ("imported" or "off"), so
        # config.yaml and the unit fingerprint say whether features were standardised.
        imported = [m for m, c in self.cached.items() if c.store.store.meta.get("imported")]
        if d.standardize == "auto":
            d.standardize = "imported" if imported else "off"
        self.standardize = {"on": list(self.cached), "off": [], "imported": imported}[d.standardize]
        if SPEECH in self.modalities and e.speech_mode == "finetune":
            enc = self._speech_encoder()
            self.encoders_info[SPEECH] = EncoderRecord(name=e.speech, name_or_path=e.speech_path,
                                                       identity=enc.identity(), feature_key=None, dim=enc.dim,
                                                       mode="finetune", run_config=enc.run_config())
            self._first_encoder = enc

    def _speech_encoder(self):
        from giamic.features import build_encoder

        e, d = self.cfg.encoders, self.cfg.data
        return build_encoder(e.speech, e.speech_path, device=self.device, frozen=False,
                             max_samples=int(round(d.audio_max_sec * d.audio_sr)), sample_rate=d.audio_sr,
                             normalize=d.audio_normalize, gradient_checkpointing=e.grad_checkpointing)

    def for_unit(self) -> ModelInputs:
        sources: dict[str, Any] = {}
        for m in self.modalities:
            if m in self.cached:
                sources[m] = self.cached[m]
            else:
                enc = getattr(self, "_first_encoder", None) or self._speech_encoder()
                self._first_encoder = None
                sources[m] = OnlineSpeech(enc, self.dataset, self.cfg.data.audio_crop, self.encoders_info[m])
        return ModelInputs(self.dataset, self.dataset.classes, sources, record_access=self.record_access,
                           standardize=self.standardize)

    def _side_crop_rule(self) -> str:
        """The rule the dataset applies with a speaker side (``fixed_window`` for IEMOCAP, ``half`` by
        default for manifests), recorded so that ``predict --side`` crops as training did;
        ``prepared`` when the dataset mixes rules."""
        modes = {u.crop_mode for u in self.dataset.utterances if u.side in ("L", "R") and u.crop_box is None}
        return modes.pop() if len(modes) == 1 else "prepared"

    def pipeline(self, lengths: dict[str, int]) -> PipelineSpec:
        """The model directory's :class:`~giamic.modeldir.PipelineSpec`, minus the per-unit facts."""
        from giamic import __version__

        d = self.cfg.data
        video = self.encoders_info.get(VIDEO)
        video_ext = (video.extraction if video is not None else None) or {}
        max_samples = int(round(d.audio_max_sec * d.audio_sr))
        return PipelineSpec(
            classes=tuple(self.dataset.classes), variant=self.cfg.model.variant, modalities=tuple(self.modalities),
            encoders=dict(self.encoders_info),
            preprocessing=Preprocessing(
                audio=AudioPreprocessing(sr=d.audio_sr, max_sec=d.audio_max_sec, max_samples=max_samples, crop="first",
                                         normalize=d.audio_normalize),
                video=VideoPreprocessing(max_frames=d.max_frames, max_sec=video_ext.get("video_max_sec"),
                                         crop_mode=video_ext.get("crop_mode") or self._side_crop_rule(),
                                         fps=video_ext.get("video_fps")),
                text=TextPreprocessing(source=d.text_source, max_tokens=d.max_tokens),
                lengths=dict(lengths)),
            giamic_version=__version__)


class _AbsentAsEmpty:
    """A store view where an utterance without this modality (no video, empty transcript) reads as
    zero rows: its mask is all False and the model's empty-modality guard applies (docs/decisions.md)."""

    def __init__(self, store):
        self.store = store

    def __getitem__(self, utt_id: str):
        import numpy as np

        if utt_id in self.store.absent:
            return np.zeros((0, self.store.dim), dtype=np.float16)
        return self.store[utt_id]


def fold_plan(cfg: RunConfig, dataset) -> list[tuple[int, Any]]:
    """(1-based fold number, Fold) for the folds to run (``train.folds``, default all)."""
    folds = list(enumerate(dataset.folds, start=1))
    if cfg.train.folds:
        wanted = set(cfg.train.folds)
        known = {f.name for _, f in folds} | {f.test_group for _, f in folds}
        unknown = wanted - known
        if unknown:
            raise ConfigError(f"unknown fold(s) {sorted(unknown)}; folds: {[f.name for _, f in folds]}")
        folds = [(i, f) for i, f in folds if f.name in wanted or f.test_group in wanted]
    return folds


def run_cv(cfg: RunConfig, out_dir: str | Path, info: DistInfo | None = None, title: str | None = None,
           note: str | None = None) -> dict:
    """Train every (seed, fold) unit of ``cfg`` into ``out_dir``; write ``report.json``/``.md`` and
    plots; return the report."""
    from giamic.data import load_dataset

    info = info or init_distributed(cfg.train.device)
    if cfg.train.cpu_threads and info.device.type == "cpu":
        import torch

        torch.set_num_threads(cfg.train.cpu_threads)
    out_dir = Path(out_dir)
    ds = load_dataset(cfg.data.data_dir)
    folds = fold_plan(cfg, ds)
    # One process per run folder (rank 0 of a distributed run holds it); a killed run's temporary files go first.
    with output_lock(out_dir, what="run folder") if info.is_main else contextlib.nullcontext():
        return _run_folds(cfg, out_dir, info, ds, folds, title, note)


def _run_folds(cfg: RunConfig, out_dir: Path, info: DistInfo, ds, folds, title: str | None, note: str | None) -> dict:
    factory = InputFactory(cfg, ds, info.device)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "config.yaml", format_config(cfg))
    groups = {u.utt_id: (u.dialog or u.group) for u in ds.utterances}
    for seed in cfg.train.seeds:
        for number, fold in folds:
            unit = out_dir / f"seed{seed}" / fold.name
            spec = UnitSpec(seed=seed, fold_name=fold.name, fold_number=number, test_group=fold.test_group,
                            train_ids=list(fold.train), test_ids=list(fold.test))
            t0 = time.perf_counter()
            done_before = (unit / "result.json").is_file()
            if done_before:  # train_unit only checks the fingerprint and returns the stored result
                r = train_unit(cfg, None, spec, unit, info, None)  # type: ignore[arg-type]
            else:
                inputs = factory.for_unit()  # a fresh fine-tuned speech encoder per unit
                r = train_unit(cfg, inputs, spec, unit, info, factory.pipeline(inputs.lengths), dataset_groups=groups)
            if info.is_main:
                how = "done earlier" if done_before else f"{time.perf_counter() - t0:.1f}s"
                log.info(f"[{cfg.model.variant}] seed {seed} {fold.name} (test {fold.test_group}, n={r['n']}): "
                         f"WA {100 * r['wa']:.1f}  UA {100 * r['ua']:.1f}  best epoch {r['best_epoch']}/{r['epochs_run']}  "
                         f"({how})")
    report = build_report(out_dir, ds.classes, cfg.train.seeds, [f.name for _, f in folds], cfg.to_dict(),
                          dataset={"name": ds.name, "data_dir": str(ds.root), "n_utterances": len(ds),
                                   "fold_scheme": ds.fold_scheme, **({"note": note} if note else {})},
                          title=title)
    if info.is_main:
        write_report(out_dir, report)
        write_plots(out_dir, report, cfg)
    return report


def write_plots(out_dir: Path, report: dict, cfg: RunConfig) -> list[Path]:
    from giamic.train.plots import plot_confusion, plot_curves

    out = []
    if report.get("summary"):
        out.append(plot_confusion(report["summary"]["pooled"]["confusion"], report["classes"], out_dir / "confusion.png",
                                  title=f"{cfg.model.variant}: pooled over folds and seeds"))
    logs = {f"s{f['seed']} {f['fold']}": out_dir / f"seed{f['seed']}" / f["fold"] / "log.csv" for f in report["folds"]}
    logs = {k: v for k, v in logs.items() if v.is_file()}
    if logs:
        out.append(plot_curves(logs, out_dir / "curves.png", title=f"{cfg.model.variant}: training curves"))
    return out


def finished_units(out_dir: str | Path, seeds, fold_names) -> int:
    return sum((d / "result.json").is_file() for _, _, d in unit_dirs(out_dir, seeds, fold_names))
