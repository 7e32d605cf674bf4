"""The presets shared by every stage (giamic/presets): the CPU path of the step-by-step commands
(``--preset cpu`` for extract, cv, train and reproduce) and settings implied by a feature key."""
from __future__ import annotations

import argparse

import pytest

from giamic.errors import ConfigError
from giamic.presets import preset_names, read_preset
from giamic.train.config import load_config


def test_cpu_preset_is_the_demo_recipe_with_cpu_encoders():
    assert {"cpu", "demo", "paper", "tiny"} <= set(preset_names())
    assert load_config("cpu").to_dict() == load_config("demo").to_dict()
    enc = read_preset("cpu")["encoders"]
    assert (enc["video"], enc["speech"], enc["text"], enc["speech_mode"]) == (
        "tiny-clip-untrained", "tiny-wavlm-untrained", "minilm", "cached")
    with pytest.raises(ConfigError, match="presets: .*cpu"):
        read_preset("laptop")


def _extract_args(**kw) -> argparse.Namespace:
    base = dict(preset=None, encoders=None, max_tokens=None, max_frames=None, frozen_speech=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_extract_preset_takes_the_preset_encoders_and_caps_and_explicit_options_win():
    from giamic.features.commands import _apply_preset

    args = _extract_args(preset="cpu")
    speech = _apply_preset(args)
    assert args.encoders == "tiny-clip-untrained,tiny-wavlm-untrained,minilm" and args.frozen_speech
    assert (args.max_frames, args.max_tokens) == (8, 32)
    assert speech == {"sample_rate": 16000, "max_samples": 32000, "normalize": True}  # the demo's 2-s window

    args = _extract_args(preset="cpu", max_frames=4, encoders="minilm")
    _apply_preset(args)
    assert (args.encoders, args.max_frames, args.max_tokens) == ("minilm", 4, 32)

    args = _extract_args()  # no preset: the paper's frozen encoders and caps
    assert _apply_preset(args) == {}
    assert (args.encoders, args.max_frames, args.max_tokens, args.frozen_speech) == ("clip,roberta", 180, 64, False)
    args = _extract_args(preset="paper")  # the paper fine-tunes WavLM online: nothing cached for speech
    _apply_preset(args)
    assert args.encoders == "clip,roberta" and not args.frozen_speech


def test_a_speech_key_selects_cached_speech():
    cfg = load_config("paper", ["encoders.speech_key=my-speech"])
    assert cfg.encoders.speech_mode == "cached"
    assert load_config("paper").encoders.speech_mode == "finetune"
    # an explicit mode wins (an experiment row fine-tuning WavLM while the caches are named)
    explicit = load_config("paper", ["encoders.speech_key=my-speech", "encoders.speech_mode=finetune"])
    assert explicit.encoders.speech_mode == "finetune"


def test_cv_and_reproduce_accept_the_preset(capsys):
    from giamic.cli import main

    assert main(["cv", "data", "--preset", "cpu", "--out", "x", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "video: tiny-clip-untrained" in out and "speech_mode: cached" in out and "size: tiny" in out
    assert main(["reproduce", "IEMOCAP", "--out", "r", "--preset", "cpu", "--rows", "full", "--seeds", "0",
                 "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == "giamic cv r/data --preset cpu --variant full --seeds 0 --out r/runs/full"
    assert main(["reproduce", "IEMOCAP", "--out", "r", "--preset", "laptop", "--dry-run"]) == 2
    assert "no preset named 'laptop'" in capsys.readouterr().err


def test_reproduce_with_the_cpu_preset_caches_speech_like_the_demo(tmp_path):
    from giamic.experiments.reproduce import paper_experiment
    from giamic.experiments.runner import PreparedData, row_config

    paper = paper_experiment(["full"], [0], "tiny.en")
    cpu = paper_experiment(["full"], [0], "tiny.en", preset="cpu")
    assert paper.recipe.preset == "paper" and cpu.recipe.preset == "cpu"
    assert "speech" in [j.label for j in cpu.extract]  # filled only for a recipe that caches speech
    prepared = PreparedData(tmp_path, {"video": "v", "speech": "s", "text": "t", "text:asr": "ta"})
    p, c = row_config(paper, paper.row("full"), prepared), row_config(cpu, cpu.row("full"), prepared)
    assert (p.encoders.speech_mode, p.encoders.speech_key) == ("finetune", None)  # WavLM trained online
    assert (c.encoders.speech_mode, c.encoders.speech_key, c.encoders.speech) == ("cached", "s", "tiny-wavlm-untrained")
