"""Metrics, splits, configuration, checkpoints, reports and the model directory."""
from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from giamic.errors import ConfigError
from giamic.modeldir import EncoderRecord, ModelDirError, PipelineSpec, Preprocessing, load_model_dir, save_model_dir
from giamic.train import checkpoint as ckpt
from giamic.train.config import load_config, read_config_file
from giamic.train.metrics import score, summarize
from giamic.train.report import build_report, read_predictions, report_markdown, write_predictions
from giamic.train.splits import LeakageError, make_fold_split


# -- metrics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(20, 200)), 4
    y = rng.integers(0, c - (seed % 2), n)  # odd seeds: class 3 absent from the references
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, c, n))
    s = score(y, p, c)
    assert s.wa == pytest.approx(accuracy_score(y, p))
    assert s.ua == pytest.approx(balanced_accuracy_score(y, p))
    assert s.macro_f1 == pytest.approx(f1_score(y, p, average="macro", labels=sorted(set(y) | set(p))))
    assert np.array_equal(np.asarray(s.confusion), confusion_matrix(y, p, labels=range(c)))


def test_summary_mean_over_folds_seeds_and_pooled():
    a = score([0, 0, 1, 1], [0, 0, 1, 0], 2)  # WA .75, UA .75
    b = score([0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], 2)  # WA 1, UA 1
    c = score([0, 1], [1, 0], 2)  # WA 0
    out = summarize({0: [a, b], 1: [c, b]}, 2)
    assert out["folds"]["wa"]["mean"] == pytest.approx((0.75 + 1 + 0 + 1) / 4)
    assert out["seeds"]["wa"]["mean"] == pytest.approx((0.875 + 0.5) / 2)
    assert out["seeds"]["wa"]["std"] == pytest.approx(np.std([0.875, 0.5], ddof=1))
    pooled_y = [0, 0, 1, 1] + [0, 1, 1, 1, 1, 1] * 2 + [0, 1]
    pooled_p = [0, 0, 1, 0] + [0, 1, 1, 1, 1, 1] * 2 + [1, 0]
    assert out["pooled"]["wa"] == pytest.approx(accuracy_score(pooled_y, pooled_p))
    assert out["pooled"]["ua"] == pytest.approx(balanced_accuracy_score(pooled_y, pooled_p))


# -- validation split --------------------------------------------------------------------------------
def _labels(n=200, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"u{i:03d}" for i in range(n)]
    return ids, {u: int(rng.integers(0, 4)) for u in ids}


def test_validation_split_is_stratified_fixed_and_seed_dependent():
    ids, labels = _labels()
    train_ids, test_ids = ids[:160], ids[160:]
    a = make_fold_split("fold2", 2, train_ids, test_ids, labels, seed=1)
    again = make_fold_split("fold2", 2, list(reversed(train_ids)), test_ids, labels, seed=1)
    other = make_fold_split("fold2", 2, train_ids, test_ids, labels, seed=2)
    assert set(a.val) == set(again.val) and set(a.val) != set(other.val)
    assert set(a.train) | set(a.val) == set(train_ids) and not set(a.train) & set(a.val)
    for c in range(4):  # 10 % of every class
        n_c = sum(labels[u] == c for u in train_ids)
        assert sum(labels[u] == c for u in a.val) == round(0.1 * n_c)
    assert not set(a.val) & set(test_ids)


def test_dialog_group_split_holds_out_whole_dialogs():
    ids, labels = _labels()
    groups = {u: f"d{i // 10}" for i, u in enumerate(ids)}
    s = make_fold_split("fold1", 1, ids[:160], ids[160:], labels, seed=0, mode="dialog_group", groups=groups)
    val_dialogs = {groups[u] for u in s.val}
    assert not val_dialogs & {groups[u] for u in s.train}
    assert len(s.val) >= 16


def test_test_part_is_sealed_until_opened_and_overlap_is_refused():
    ids, labels = _labels()
    s = make_fold_split("fold1", 1, ids[:160], ids[160:], labels, seed=0)
    s.assert_sealed()
    assert s.open_test() == ids[160:]
    with pytest.raises(LeakageError):
        s.assert_sealed()
    with pytest.raises(LeakageError):
        make_fold_split("fold1", 1, ids[:170], ids[160:], labels, seed=0)


# -- configuration -----------------------------------------------------------------------------------
def test_defaults_are_the_papers_recipe():
    cfg = load_config("paper")
    t = cfg.train
    assert (t.optimizer, t.lr, t.batch_size, t.max_epochs, t.patience, t.grad_clip, t.seeds) == \
        ("adam", 1e-5, 32, 40, 8, 1.0, [0, 1, 2])
    assert cfg.encoders.speech_mode == "finetune" and cfg.model.variant == "full"
    assert cfg.data.max_frames == 180 and cfg.data.max_tokens == 64 and cfg.data.audio_max_sec == 6.0


def test_overrides_are_typed_and_checked(tmp_path):
    cfg = load_config("tiny", ["train.lr=3e-4", "train.seeds=4,5", "train.keep_checkpoints=yes",
                               "model.gamma=0", "model.d_model=16", "encoders.video_path=none"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.seeds == [4, 5] and cfg.train.keep_checkpoints is True
    assert cfg.model.overrides["gamma"] == 0 and cfg.model.overrides["d_model"] == 16
    assert cfg.encoders.video_path is None
    # presets inherit: tiny extends demo extends paper
    assert read_config_file("tiny")["encoders"]["speech_mode"] == "cached"
    f = tmp_path / "run.yaml"
    f.write_text("train: {lr: 0.01, max_epochs: 2}\nmodel: {variant: wo_mic}\n")
    cfg = load_config(str(f), ["train.max_epochs=5"])
    assert (cfg.train.lr, cfg.train.max_epochs, cfg.model.variant, cfg.train.batch_size) == (0.01, 5, "wo_mic", 32)
    for bad in (["train.nope=1"], ["train.lr=fast"], ["train.precision=fp8"], ["nosection.lr=1"], ["train.lr"],
                ["train.batch_size=32", "train.micro_batch_size=5"]):
        with pytest.raises(ConfigError):
            load_config("paper", bad)


def test_model_overrides_reach_the_model_and_the_fingerprint():
    from giamic.train.recipe import build_model

    dims = {"video": 5, "speech": 6, "text": 7}
    m = build_model(load_config("tiny", ["model.gamma=0.25", "model.variant=VS"]), dims, 3)
    assert m.config.gamma == 0.25 and m.config.modalities == ("video", "speech") and m.config.num_classes == 3
    assert m.config.input_dims == {"video": 5, "speech": 6}
    with pytest.raises(ConfigError):  # refused when the config is loaded, before any model is built
        load_config("tiny", ["model.no_such_field=1"])
    a, b = load_config("tiny"), load_config("tiny", ["train.lr=0.5"])
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == load_config("tiny", ["train.seeds=7", "train.progress=true"]).fingerprint()


def test_unknown_model_key_is_refused_naming_the_key_and_the_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["model.heads=2"])
    msg = str(e.value)
    assert "model.heads" in msg and "n_heads" in msg and "fe_heads" in msg and "gamma" in msg
    f = tmp_path / "run.yaml"
    f.write_text("model: {size: tiny, attn_dropuot: 0.0}\n")  # a typo in a YAML file
    with pytest.raises(ConfigError, match=r"model\.attn_dropuot; model keys: variant, size, "):
        load_config(str(f))
    with pytest.raises(ConfigError, match="model.num_classes cannot be set: the number of classes is the dataset's"):
        load_config("tiny", ["model.num_classes=3"])


@pytest.mark.parametrize("setting, expected", [
    ("model.gate_pool=mean", "model.gate_pool must be one of global, local; got 'mean'"),
    ("model.variant=wo_foo", "model.variant must be one of full, wo_msr, wo_mir, wo_mic, baseline, V, S, T, "),
    ("model.size=huge", "model.size must be one of paper, tiny; got 'huge'"),
    ("model.fe_dropout=much", "model.fe_dropout: cannot read 'much' as float"),
    ("model.use_msr=maybe", "model.use_msr: cannot read 'maybe' as bool"),
    ("model.d_model=6.5", "model.d_model: cannot read '6.5' as int"),
    ("model.fe_dropout=1.5", "model.fe_dropout must be in [0, 1), got 1.5"),
    ("model.gamma=-1", "model.gamma must be >= 0, got -1.0"),
    ("model.modalities=video,audio", "model.modalities takes items of video, speech, text, V, S, T; got 'audio'"),
    ("model.d_model=30", "model.d_model=30 is not divisible by fe_heads=12"),
    ("model.use_msr=false", "model.use_msr and use_mir are both False"),
    ("model.modalities=V,video", "model settings: duplicate modalities in ['V', 'video']"),
])
def test_bad_model_value_is_refused_when_the_config_is_loaded(setting, expected):
    preset = "paper" if "d_model=30" in setting else "tiny"
    extra = ["model.use_mir=false"] if "use_msr" in setting else []
    with pytest.raises(ConfigError) as e:
        load_config(preset, [setting, *extra])
    assert str(e.value).startswith(expected), str(e.value)


def test_typed_model_settings_round_trip_and_unset_ones_come_from_the_variant(tmp_path):
    from giamic.train.config import RunConfig, format_config

    cfg = load_config("tiny", ["model.gamma=0", "model.d=64", "model.modalities=V,S", "model.use_msr=false",
                               "model.mic_tau=2"])
    m = cfg.model
    assert (m.gamma, m.d_model, m.modalities, m.use_msr, m.mic_tau) == (0.0, 64, ["V", "S"], False, 2.0)
    assert isinstance(m.gamma, float) and isinstance(m.d_model, int) and isinstance(m.mic_tau, float)
    assert m.fe_dropout is None and m.overrides == {"modalities": ["V", "S"], "d_model": 64, "use_msr": False,
                                                    "attn_dropout": 0.0, "gamma": 0.0, "mic_tau": 2.0}
    # dict, YAML file and back: the same config and the same fingerprint
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    f = tmp_path / "config.yaml"
    f.write_text(format_config(cfg))
    again = load_config(str(f))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    g = m.giamic_config(num_classes=3)
    assert (g.gamma, g.d_model, g.modalities, g.use_msr, g.mic_tau, g.num_classes) == \
        (0.0, 64, ("video", "speech"), False, 2.0, 3)
    assert g.fe_heads == 2 and g.attn_dropout == 0.0  # the tiny size and the preset's setting
    # unset: the variant's value (gamma 0.1 for full, 0 for wo_mic), on the paper size d = 768
    assert load_config("paper").model.giamic_config().gamma == pytest.approx(0.1)
    assert load_config("paper", ["model.variant=wo_mic"]).model.giamic_config().gamma == 0.0
    assert load_config("paper").model.giamic_config().d_model == 768
    assert load_config("paper", ["model.gamma=null"]).model.gamma is None
    # an explicit setting wins over the variant's
    assert load_config("paper", ["model.variant=wo_mic", "model.gamma=0.3"]).model.giamic_config().gamma == 0.3


def test_paper_preset_is_the_defaults_and_fingerprints_match_older_versions(tmp_path):
    from giamic.train.config import RunConfig

    assert load_config("paper") == RunConfig() == load_config(None)
    # Hashes older versions computed (model: {variant, size, overrides}): resume still accepts them.
    assert load_config("paper").fingerprint() == "ce3da09c9140e2ba"
    assert load_config("demo").fingerprint() == "e3ce4ce1cf84f8fa"
    assert load_config("demo", ["model.variant=wo_mic"]).fingerprint() == "9f1c6a63552100c1"
    # A config.yaml written by an older version (model overrides in a mapping) reads the same.
    f = tmp_path / "old.yaml"
    f.write_text("model: {variant: full, size: tiny, overrides: {attn_dropout: 0.0, gamma: 0.25}}\n")
    old = load_config(str(f))
    assert old.model.attn_dropout == 0.0 and old.model.gamma == 0.25
    assert old.model == load_config("tiny", ["model.overrides.gamma=0.25"]).model


def test_every_config_field_is_documented_and_the_model_section_mirrors_giamic_config():
    import dataclasses

    from giamic import GIAMICConfig
    from giamic.train.config import DataConfig, EncoderConfig, ModelConfig, RunConfig, TrainConfig

    for cls in (DataConfig, EncoderConfig, ModelConfig, TrainConfig, RunConfig):
        doc = cls.__doc__.split("Args:", 1)[1]
        missing = [f.name for f in dataclasses.fields(cls) if f"\n        {f.name} (`" not in doc]
        assert not missing, (cls.__name__, missing)
    ours = {f.name: f for f in dataclasses.fields(ModelConfig)}
    theirs = {f.name for f in dataclasses.fields(GIAMICConfig)} - {"num_classes", "input_dims"}
    assert set(ours) - {"size"} == theirs
    assert all(ours[k].default is None for k in theirs - {"variant"})


# -- checkpoint --------------------------------------------------------------------------------------
def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    ckpt.save_checkpoint(tmp_path, {"model": m}, opt, {"epoch": 3, "history": [{"x": 1.5}]})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    m2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-2)
    state = ckpt.load_checkpoint(tmp_path, {"model": m2}, opt2)
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    assert state["epoch"] == 3 and state["history"] == [{"x": 1.5}]
    assert torch.equal(m.weight, m2.weight)
    # the next optimizer step is identical
    x = torch.randn(5, 4)
    for mod, o in ((m, opt), (m2, opt2)):
        o.zero_grad()
        mod(x).square().sum().backward()
        o.step()
    assert torch.equal(m.weight, m2.weight)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


# -- predictions, report ------------------------------------------------------------------------------
def test_report_numbers_are_recomputed_from_prediction_files(tmp_path):
    classes = ["neu", "ang", "hap", "sad"]
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        for fold in ("fold1", "fold2"):
            d = tmp_path / f"seed{seed}" / fold
            y = rng.integers(0, 4, 30)
            probs = rng.dirichlet(np.ones(4), 30)
            write_predictions(d / "predictions.csv", [f"{fold}_{i}" for i in range(30)], y, probs, classes)
            (d / "result.json").write_text(json.dumps({"test_group": fold, "best_epoch": 1, "epochs_run": 2}))
    # a stale number in result.json must not leak into the report: only predictions count
    (tmp_path / "seed0" / "fold1" / "result.json").write_text(json.dumps({"test_group": "fold1", "wa": 0.99}))
    rep = build_report(tmp_path, classes, [0, 1], ["fold1", "fold2"], {"model": {"variant": "full"}})
    assert rep["complete"] and rep["units_done"] == 4
    for f in rep["folds"]:
        p = read_predictions(tmp_path / f["predictions"], classes)
        assert f["wa"] == pytest.approx(accuracy_score(p["label"], p["probs"].argmax(1)))
        assert f["ua"] == pytest.approx(balanced_accuracy_score(p["label"], p["probs"].argmax(1)))
    md = report_markdown(rep)
    assert f"{100 * rep['summary']['folds']['ua']['mean']:.1f}" in md and "| **hap** |" in md


# -- model directory ------------------------------------------------------------------------------------
def _pipeline(model, classes, modes=None):
    return PipelineSpec(classes=tuple(classes), variant="full", modalities=model.config.modalities,
                        encoders={m: EncoderRecord(name=f"enc-{m}", dim=model.config.input_dims[m],
                                                   mode=(modes or {}).get(m, "cached"))
                                  for m in model.config.modalities},
                        preprocessing=Preprocessing(lengths={m: 4 for m in model.config.modalities}))


def test_model_directory_round_trip_and_mismatch_errors(tmp_path):
    from giamic import GIAMIC, GIAMICConfig

    model = GIAMIC(GIAMICConfig.tiny("full")).eval()
    classes = ["neu", "ang", "hap", "sad"]
    save_model_dir(tmp_path / "m", model, _pipeline(model, classes))
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.classes == classes and loaded.speech_encoder_state is None
    feats = {m: torch.randn(2, 4, d) for m, d in model.config.input_dims.items()}
    masks = {m: torch.ones(2, 4, dtype=torch.bool) for m in feats}
    torch.testing.assert_close(loaded.model(features=feats, masks=masks).logits,
                               model(features=feats, masks=masks).logits, rtol=0, atol=0)

    speech = torch.nn.Linear(3, 3)
    pipe = _pipeline(model, classes, modes={"speech": "finetune"})
    save_model_dir(tmp_path / "ft", model, pipe, speech_encoder=speech)
    assert torch.equal(load_model_dir(tmp_path / "ft").speech_encoder_state["weight"], speech.weight)
    (tmp_path / "ft" / "speech_encoder.safetensors").unlink()
    with pytest.raises(ModelDirError, match="speech_encoder.safetensors"):
        load_model_dir(tmp_path / "ft")
    with pytest.raises(ModelDirError, match="classes"):
        save_model_dir(tmp_path / "bad", model, _pipeline(model, classes[:3]))
    good = _pipeline(model, classes)
    bad = dataclasses.replace(good, encoders={**good.encoders, "video": dataclasses.replace(good.encoders["video"], dim=999)})
    with pytest.raises(ModelDirError, match="input_dims"):
        save_model_dir(tmp_path / "bad2", model, bad)
    with pytest.raises(ModelDirError, match="pipeline.json"):
        load_model_dir(tmp_path / "nowhere")


# -- reproduce ------------------------------------------------------------------------------------------
def test_paper_table_puts_the_papers_numbers_beside_ours(capsys):
    from giamic.cli import main
    from giamic.experiments.reproduce import ALL_ROWS, paper_table, paper_table_markdown

    def rep(wa_by_seed):
        seeds = {"wa": {"mean": float(np.mean(wa_by_seed)), "std": float(np.std(wa_by_seed, ddof=1))},
                 "ua": {"mean": 0.5, "std": 0.0}}
        return {"summary": {"seeds": seeds}, "units_done": 15, "units_expected": 15}

    table = paper_table({"full": rep([0.80, 0.81, 0.82]), "asr_text": rep([0.7, 0.7, 0.7])})
    full = next(r for r in table if r["row"] == "full")
    assert (full["paper_wa"], full["paper_ua"], full["table"]) == (80.7, 81.3, 2)
    assert full["wa"] == pytest.approx(81.0) and full["wa_std"] == pytest.approx(1.0)
    asr = next(r for r in table if r["row"] == "asr_text")
    assert (asr["paper_wa"], asr["table"], asr["modality"]) == (79.6, 1, "V+S+T(ASR)")
    assert "| 2 | V+S+T(GT) | GIA-MIC | 80.7 | 81.3 | 81.0 ± 1.0 | 50.0 ± 0.0 | 15/15 |" in paper_table_markdown(table, [0, 1, 2])
    # every row of Tables 1-2 has a documented command
    assert main(["reproduce", "IEMOCAP", "--out", "runs", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(ALL_ROWS) == 14 and all(line.startswith("giamic cv runs/data --variant ") for line in lines)
    assert any("--variant asr_text --text asr" in line for line in lines)
