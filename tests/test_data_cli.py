"""``giamic prepare`` and ``giamic make-corpus`` through their argparse entry points."""
from __future__ import annotations

import json

from giamic.cli import main
from giamic.data import load_dataset


def run(argv):
    return main(argv)  # the command's errors are reported (one line, exit code) by the CLI's handler


def test_make_corpus_then_prepare(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    assert run(["make-corpus", str(corpus), "--seed", "5", "--n-per-dialog", "1", "--dialogs-per-session", "2"]) == 0
    out = capsys.readouterr().out
    expected = json.loads((corpus / "expected_counts.json").read_text())
    assert f"wrote the demo corpus to {corpus}: {expected['total']} utterances" in out
    assert expected["total"] == 10 and sum(expected["by_session"].values()) == 10
    assert f"prepare it with: giamic prepare {corpus} --out DATA_DIR\n" in out
    # No flag needed: the corpus's own expected_counts.json is the table checked.
    assert run(["prepare", str(corpus), "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "counts match the demo corpus (seed 5): 10 utterances" in out
    assert len(load_dataset(tmp_path / "d")) == 10
    # An explicit table still wins.
    (tmp_path / "other.json").write_text(json.dumps(dict(expected, total=11, name="eleven")))
    assert run(["prepare", str(corpus), "--out", str(tmp_path / "d"), "--expected-counts",
                str(tmp_path / "other.json")]) == 1
    assert "utterance counts differ from eleven:\n  total: found 10, expected 11" in capsys.readouterr().err
    # Without the file (a real release has none) the full-release count check applies, exit code 1.
    (corpus / "expected_counts.json").rename(tmp_path / "own.json")
    assert run(["prepare", str(corpus), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "total: found 10, expected 5531" in err and "session Ses03: found 2, expected 1151" in err
    assert run(["prepare", str(corpus), "--out", str(tmp_path / "d"),
                "--expected-counts", str(tmp_path / "own.json")]) == 0
    out = capsys.readouterr().out
    assert "counts match the demo corpus (seed 5): 10 utterances" in out
    assert run(["prepare", str(corpus), "--out", str(tmp_path / "p"), "--partial", "--no-check-media"]) == 0


def test_prepare_argument_errors(tmp_path, capsys):
    assert run(["prepare", "--out", str(tmp_path / "d")]) == 2
    assert "IEMOCAP_ROOT or --manifest FILE is required" in capsys.readouterr().err
    (tmp_path / "m.csv").write_text("id,label,group\n")
    assert run(["prepare", str(tmp_path), "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "d")]) == 2
    assert run(["prepare", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "d")]) == 1
    assert "m.csv: no utterance left to write" in capsys.readouterr().err
