"""Declarative experiments (``giamic.experiments``): the YAML files, what each row's configuration
becomes, and one small experiment run end to end by the runner that ``giamic demo`` uses."""
from __future__ import annotations

import json
import logging

import pytest

from giamic.errors import ConfigError
from giamic.experiments.runner import PreparedData, row_config, row_overrides, run_experiment
from giamic.experiments.spec import experiment_names, load_experiment

KEYS = {"video": "clip-aaa", "speech": "wavlm-bbb", "text": "minilm-ccc", "text:asr": "roberta-asr"}


def test_shipped_experiments_load():
    assert {"demo", "paper"} <= set(experiment_names())
    demo = load_experiment("demo")
    assert [r.name for r in demo.rows] == ["full", "baseline", "V", "S", "T", "wo_mic"]
    assert [r.name for r in demo.select(quick=True).rows] == ["full", "baseline"]
    assert demo.row("wo_mic").label == "GIA-MIC, γ = 0 (w/o MIC)" and demo.tsne.gamma0 == "wo_mic"
    paper = load_experiment("paper")
    assert len(paper.rows) == 14 and paper.seeds == (0, 1, 2) and paper.row("asr_text").text_source == "asr"
    assert [r.name for r in paper.select(["wo_mic", "full"]).rows] == ["wo_mic", "full"]  # the order asked for


def test_rows_read_the_caches_made_with_the_recipe(tmp_path):
    """Extraction takes its encoders and caps from the recipe (the demo preset), so each row only
    adds its variant and the keys of the caches of its text source."""
    exp = load_experiment("demo")
    prepared = PreparedData(tmp_path, KEYS)
    assert row_overrides(exp, exp.row("S"), prepared) == [
        "model.variant=S", "encoders.video_key=clip-aaa", "encoders.speech_key=wavlm-bbb", "encoders.text_key=minilm-ccc"]
    cfg = row_config(exp, exp.row("S"), prepared, extra=["train.max_epochs=3"])
    assert (cfg.model.variant, cfg.data.max_frames, cfg.data.max_tokens, cfg.data.audio_max_sec) == ("S", 8, 32, 2.0)
    assert (cfg.encoders.speech_mode, cfg.encoders.text_key, cfg.train.max_epochs) == ("cached", "minilm-ccc", 3)
    assert cfg.train.lr == 3.0e-3 and cfg.data.data_dir == str(tmp_path)  # the demo preset, the prepared data


def test_paper_rows_pick_the_cache_of_their_text_source(tmp_path):
    exp = load_experiment("paper")
    prepared = PreparedData(tmp_path, KEYS)
    asr = row_config(exp, exp.row("asr_text"), prepared, extra=["encoders.speech_path=/models/wavlm"])
    gt = row_config(exp, exp.row("full"), prepared)
    assert (asr.data.text_source, asr.encoders.text_key, asr.encoders.text) == ("asr", "roberta-asr", "roberta")
    assert (gt.data.text_source, gt.encoders.text_key) == ("gt", "minilm-ccc")
    assert asr.train.seeds == [0, 1, 2] and asr.encoders.speech_path == "/models/wavlm" and asr.encoders.video_path is None
    assert asr.encoders.speech_mode == "finetune"  # WavLM is trained online by the paper's recipe
    from giamic.experiments.reproduce import row_command

    assert row_command("asr_text", "D", "R", "0") == "giamic cv D --variant asr_text --text asr --seeds 0 --out R/asr_text"


@pytest.mark.parametrize("text, message", [
    ("rows: [full]\nwho: me\n", "unknown key(s) who"),
    ("rows: [{name: full, varaint: V}]\n", "rows[0].varaint"),
    ("rows: [full, full]\n", "row 'full' appears twice"),
    ("rows: [full]\nquick: [baseline]\n", "quick names unknown row(s) ['baseline']"),
    ("rows: [full]\nextract: [{modality: smell}]\n", "extract[0].modality is 'smell'"),
    ("rows: [full]\nextract: [{modality: video, max_sec: long}]\n", "extract[0].max_sec must be float"),
    ("rows: [full]\nextract: [{modality: speech, max_sec: 2}]\n", "extract[0].max_sec is the video frame window"),
    ("rows: [full]\nextract: [{modality: video, encoder: clip}]\n", "unknown key(s) extract[0].encoder"),
    ("rows: [full]\nseeds: []\n", "seeds must be a non-empty list"),
    ("rows: []\n", "rows is empty"),
    ("rows: [full\n", "not valid YAML"),
])
def test_a_bad_experiment_file_is_one_error_naming_the_file(tmp_path, text, message):
    f = tmp_path / "exp.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_experiment(f)
    assert message in str(e.value) and str(e.value).startswith(str(f))


def test_unknown_experiment_and_row():
    with pytest.raises(ConfigError, match="built-in: .*demo"):
        load_experiment("nope")
    with pytest.raises(ConfigError, match="unknown row 'X'"):
        load_experiment("paper").select(["full", "X"])


def test_a_small_experiment_runs_end_to_end(tmp_path, caplog):
    """corpus -> prepare -> extract -> cv per row -> Figure 2 -> table, then rerun: everything reused."""
    f = tmp_path / "small.yaml"
    f.write_text("""
name: small
notice: A small generated corpus.
data: {source: generated, corpus: {seed: 5, sessions: 2, dialogs_per_session: 2, n_per_dialog: 4, fps: 5.0,
                                   size: [240, 160]}}
recipe: {preset: tiny, overrides: [train.max_epochs=2, train.folds=fold1, data.max_frames=3, data.max_tokens=16,
                                   data.audio_max_sec=1.0, encoders.text=tiny-roberta-untrained]}
extract: [{modality: video, max_sec: 1.0}, {modality: speech}, {modality: text}]
rows: [{name: full, label: Full model}, {name: wo_mic, label: No MIC}]
tsne: {gamma0: wo_mic, gamma: full}
report: {kind: demo, title: "Small: {label}"}
""", encoding="utf-8")
    out = tmp_path / "out"
    result = run_experiment(load_experiment(f), out)
    demo = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in demo["rows"]] == ["Full model", "No MIC"] and demo["seed"] == 5
    assert demo == json.loads(json.dumps(result.table))
    assert (out / "tsne.png").read_bytes()[:4] == b"\x89PNG" and demo["figures"][-1] == str(out / "tsne.png")
    full = result.reports["full"]
    assert full["title"] == "Small: Full model" and full["units_done"] == full["units_expected"] == 1
    assert full["dataset"]["note"] == "A small generated corpus."
    cfg = full["config"]
    assert (cfg["data"]["max_frames"], cfg["data"]["max_tokens"], cfg["data"]["audio_max_sec"]) == (3, 16, 1.0)
    assert cfg["encoders"]["speech_mode"] == "cached" and cfg["train"]["folds"] == ["fold1"]
    pipe = json.loads((out / "runs" / "full" / "seed0" / "fold1" / "model" / "pipeline.json").read_text())
    # The caches were made with the recipe's caps: 3 frames of the first second, 1 s of audio, 16 tokens.
    assert pipe["preprocessing"]["lengths"] == {"video": 3, "speech": 49, "text": 16}
    assert pipe["preprocessing"]["video"]["max_sec"] == 1.0
    assert pipe["encoders"]["speech"]["identity"]["settings"]["max_samples"] == 16000
    assert pipe["encoders"]["text"]["name"] == "tiny-roberta-untrained"
    assert "| Full model |" in (out / "demo.md").read_text(encoding="utf-8")
    caplog.clear()
    logger = logging.getLogger("giamic")  # the CLI's setup stops propagation: listen on giamic itself
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="giamic"):
            again = run_experiment(load_experiment(f), out)
    finally:
        logger.removeHandler(caplog.handler)
    assert again.reports["full"]["folds"] == full["folds"]
    lines = set(caplog.messages)  # a record may arrive twice (here and through the root logger)
    assert len([m for m in lines if "done earlier" in m]) == 2
    assert not [m for m in lines if "utterances generated" in m or "encoded" in m]  # nothing recomputed


def test_smoke_section_of_the_paper_experiment():
    """``--smoke`` keeps every row, takes one seed, two epochs and, without a GPU, the CPU recipe
    and no Whisper model (the ASR rows then read the ground truth)."""
    paper = load_experiment("paper")
    cpu, gpu = paper.smoke_run(gpu=False), paper.smoke_run(gpu=True)
    assert [r.name for r in cpu.rows] == [r.name for r in paper.rows] and cpu.seeds == (0,)
    assert cpu.recipe.preset == "demo" and "train.max_epochs=2" in cpu.recipe.overrides and cpu.data.asr_model is None
    assert gpu.recipe.preset == "paper" and gpu.data.asr_model == "large-v2" and paper.smoke.per_fold == 24
    with pytest.raises(ConfigError, match="no smoke section"):
        load_experiment("demo").smoke_run(gpu=False)


def test_reproduce_smoke_fills_every_row_and_fails_loudly(tmp_path, monkeypatch, capsys):
    """``giamic reproduce ROOT --smoke`` on a small generated corpus in the IEMOCAP layout: every
    row of Tables 1-2, the table, reports and Figure 2. A row that fails is marked in the table,
    the others still run and the exit code is 1; the rerun trains only the failed row."""
    from giamic.cli import main
    from giamic.data.democorpus import make_corpus
    from giamic.experiments.reproduce import ALL_ROWS
    import giamic.train.cv as cv

    corpus = tmp_path / "corpus"
    make_corpus(corpus, seed=3, sessions=2, dialogs_per_session=2, n_per_dialog=4, fps=5.0, size=(240, 160))
    out = tmp_path / "smoke"
    argv = ["reproduce", str(corpus), "--out", str(out), "--smoke", "--device", "cpu",
            "--set", "train.folds=fold1", "--set", "data.max_frames=3", "--set", "data.max_tokens=16",
            "--set", "data.audio_max_sec=1.0", "--set", "encoders.text=tiny-roberta-untrained",
            "--set", "train.max_epochs=1"]
    real = cv.run_cv

    def broken_for_V(cfg, out_dir, **kw):
        if cfg.model.variant == "V":
            raise RuntimeError("planted failure")
        return real(cfg, out_dir, **kw)

    monkeypatch.setattr(cv, "run_cv", broken_for_V)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "1 step(s) failed: V" in err and "planted failure" in err
    table = json.loads((out / "paper_table.json").read_text(encoding="utf-8"))
    assert [r["row"] for r in table["rows"]] == list(ALL_ROWS) and table["seeds"] == [0]
    failed = [r["row"] for r in table["rows"] if r["failed"]]
    assert failed == ["V"] and table["failures"] == {"V": "RuntimeError: planted failure"}
    assert all(r["wa"] is not None and r["units"] == "1/1" for r in table["rows"] if r["row"] != "V")
    assert "**FAILED** (V)" in (out / "paper_table.md").read_text(encoding="utf-8")
    assert (out / "tsne.png").is_file() and (out / "runs" / "asr_text" / "report.md").is_file()
    data = json.loads((out / "data-smoke" / "dataset.json").read_text(encoding="utf-8"))
    assert data["smoke_per_fold"] == 24 and data["asr_source"].startswith("ground truth")

    monkeypatch.setattr(cv, "run_cv", real)
    assert main(argv) == 0
    assert "every row passed" in capsys.readouterr().out
    table = json.loads((out / "paper_table.json").read_text(encoding="utf-8"))
    assert not table["failures"] and all(r["wa"] is not None for r in table["rows"])
    from collections import Counter

    from giamic.data import load_dataset
    from giamic.experiments.runner import subset_dataset

    sub = load_dataset(subset_dataset(out / "data", tmp_path / "sub", 4))
    for fold in sub.folds:  # 4 test utterances a fold, one of each class, and the rest for training
        assert sorted(Counter(sub.by_id[u].label for u in fold.test).values()) == [1, 1, 1, 1]
        assert set(fold.train) == {u.utt_id for u in sub.utterances} - set(fold.test)
