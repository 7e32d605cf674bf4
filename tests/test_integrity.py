"""What giamic writes can be shared and trusted: file modes follow the umask, a run owns its folder
(one lock, stale temporary files removed), identical runs write identical weights, a model directory
checks its weights' SHA-256, and NaN never becomes a label."""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import pipeline_for, synthetic_dataset, synthetic_inputs, tiny_config

from giamic.cli import main
from giamic.errors import InferenceError, ModelDirError, OutputError, TrainError
from giamic.modeldir import PIPELINE_FILE, load_model_dir, read_pipeline, save_model_dir, sha256_of
from giamic.train.distributed import DistInfo
from giamic.train.recipe import TrainingRecipe, UnitSpec, train_unit
from giamic.utils import io as gio

FIXTURE = Path(__file__).parent / "data" / "modeldir_v1"


def _spec(ds, fold_index=0, seed=0):
    f = ds.folds[fold_index]
    return UnitSpec(seed=seed, fold_name=f.name, fold_number=fold_index + 1, test_group=f.test_group,
                    train_ids=list(f.train), test_ids=list(f.test))


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_per_group=8)


# -- the umask ---------------------------------------------------------------------------------------
@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_every_output_follows_the_umask(tmp_path, umask, mask):
    """A generated corpus, its prepared dataset, a feature cache and a one-fold run: every file is
    ``0666 & ~umask`` (0644 under 022: readable by others; 0600 under 077) and every folder
    ``0777 & ~umask``, as ``open``/``mkdir`` would make them."""
    from giamic.data.democorpus import make_corpus

    umask(mask)
    root = tmp_path / "w"
    make_corpus(root / "corpus", seed=1, n_per_dialog=2, dialogs_per_session=2, fps=5.0, size=(96, 64))
    assert main(["-q", "prepare", str(root / "corpus"), "--out", str(root / "data"),
                 "--expected-counts", str(root / "corpus" / "expected_counts.json")]) == 0
    assert main(["-q", "extract", str(root / "data"), "--encoders", "tiny-clip-untrained,tiny-wavlm-untrained,minilm",
                 "--frozen-speech", "--no-progress"]) == 0
    assert main(["-q", "cv", str(root / "data"), "--config", "demo", "--variant", "full", "--folds", "fold1",
                 "--set", "train.max_epochs=1", "--out", str(root / "run")]) == 0
    files = [p for p in root.rglob("*") if p.is_file()]
    dirs = [p for p in root.rglob("*") if p.is_dir()]
    for must in ("data/utterances.csv", "data/features", "run/report.json", "run/report.md",
                 "run/seed0/fold1/model/model.safetensors", "run/seed0/fold1/model/pipeline.json"):
        assert (root / must).exists(), must
    assert any(p.suffix == ".npy" for p in files) and len(files) > 40
    want_file, want_dir = 0o666 & ~mask, 0o777 & ~mask
    bad = [(str(p.relative_to(root)), oct(stat.S_IMODE(p.stat().st_mode))) for p in files
           if stat.S_IMODE(p.stat().st_mode) != want_file]
    assert not bad, f"files not {oct(want_file)}: {bad[:5]}"
    bad = [str(p.relative_to(root)) for p in dirs if stat.S_IMODE(p.stat().st_mode) != want_dir]
    assert not bad, f"folders not {oct(want_dir)}: {bad[:5]}"
    readable_by_others = bool(stat.S_IMODE((root / "run/seed0/fold1/model/model.safetensors").stat().st_mode) & 0o004)
    assert readable_by_others == (mask == 0o022)


def test_atomic_writer_replaces_with_the_umask_mode(tmp_path, umask):
    umask(0o027)
    p = tmp_path / "a.json"
    gio.write_json_atomic(p, {"a": 1})
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    umask(0o002)
    gio.write_json_atomic(p, {"a": 2})  # the new file's mode, not the old one's
    assert stat.S_IMODE(p.stat().st_mode) == 0o664 and json.loads(p.read_text()) == {"a": 2}


# -- deterministic weights files ---------------------------------------------------------------------
def test_safetensors_bytes_do_not_depend_on_hash_map_order():
    from safetensors import safe_open
    from safetensors.torch import load, save

    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float16), "a.z": torch.zeros(1)}
    meta = {k: str(i) for i, k in enumerate("hgfedcba")}
    # The library alone writes the metadata in a varying order (this is what the rewrite fixes).
    assert len({save(tensors, metadata=meta) for _ in range(20)}) > 1
    ours = {gio.safetensors_bytes(tensors, meta) for _ in range(20)}
    assert len(ours) == 1
    raw = ours.pop()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and list(json.loads(raw[8:8 + n])["__metadata__"]) == sorted(meta)
    back = load(raw)
    assert sorted(back) == sorted(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    p = Path(os.environ.get("TMPDIR", "/tmp")) / f"giamic-st-{os.getpid()}.safetensors"
    try:
        gio.save_safetensors_atomic(tensors, p, meta)
        with safe_open(str(p), "pt") as f:
            assert f.metadata() == meta
    finally:
        p.unlink(missing_ok=True)


def test_two_identical_trainings_write_byte_identical_weights_with_their_hashes(tmp_path, data):
    ds, feats = data
    cfg = tiny_config("train.max_epochs=1")
    for name in ("a", "b"):
        inputs = synthetic_inputs(ds, feats)
        train_unit(cfg, inputs, _spec(ds), tmp_path / name, DistInfo(), pipeline_for(inputs))
    for f in ("model/model.safetensors", "model/pipeline.json", "model/config.json", "invariant.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    spec = read_pipeline(tmp_path / "a" / "model")
    assert spec.weights_sha256 == {"model.safetensors": sha256_of(tmp_path / "a" / "model" / "model.safetensors")}
    assert json.loads((tmp_path / "a" / "model" / PIPELINE_FILE).read_text())["weights_sha256"] == spec.weights_sha256


# -- model integrity ---------------------------------------------------------------------------------
def _flip(path: Path, where: str = "data") -> None:
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    i = start + (len(raw) - start) // 2 if where == "data" else len(raw) - 1
    raw[i] ^= 0x01  # one bit: no loader notices, only the hash
    path.write_bytes(bytes(raw))


@pytest.fixture
def old_model(tmp_path):
    d = tmp_path / "model"
    shutil.copytree(FIXTURE / "model", d)
    return d


def test_old_model_directory_without_hashes_loads_with_a_note(caplog):
    raw = json.loads((FIXTURE / "model" / PIPELINE_FILE).read_text())
    assert "weights_sha256" not in raw
    with caplog.at_level(logging.INFO, logger="giamic"):
        md = load_model_dir(FIXTURE / "model")
    assert md.spec.weights_sha256 is None
    assert any("records no weight hashes" in r.getMessage() for r in caplog.records)
    assert md.spec.to_dict() == raw  # reading and writing it back adds nothing


def test_a_flipped_bit_in_any_weights_file_is_refused_naming_the_file(tmp_path, old_model):
    md = load_model_dir(old_model)
    new = tmp_path / "rewritten"
    save_model_dir(new, md.model, md.spec, speech_encoder=md.speech_encoder_state)
    spec = read_pipeline(new)
    assert sorted(spec.weights_sha256) == ["model.safetensors", "speech_encoder.safetensors"]
    load_model_dir(new)  # intact: loads
    for name in ("model.safetensors", "speech_encoder.safetensors"):
        bad = tmp_path / f"bad-{name}"
        shutil.copytree(new, bad)
        _flip(bad / name)
        with pytest.raises(ModelDirError) as e:
            load_model_dir(bad)
        msg = str(e.value)
        assert msg.startswith(f"{bad / name}: SHA-256") and "\n" not in msg, msg
        assert "recorded in pipeline.json" in msg


def test_a_missing_or_malformed_hash_record_is_an_error(tmp_path, old_model):
    md = load_model_dir(old_model)
    new = tmp_path / "m"
    save_model_dir(new, md.model, md.spec, speech_encoder=md.speech_encoder_state)
    (new / "speech_encoder.safetensors").unlink()
    with pytest.raises(ModelDirError, match="speech_encoder.safetensors: missing"):
        load_model_dir(new)
    d = json.loads((new / PIPELINE_FILE).read_text())
    d["weights_sha256"]["model.safetensors"] = "abc"
    (new / PIPELINE_FILE).write_text(json.dumps(d))
    with pytest.raises(ModelDirError, match="weights_sha256.model.safetensors must be a SHA-256"):
        read_pipeline(new)


def test_predict_cli_refuses_corrupted_weights(tmp_path, old_model, capsys):
    md = load_model_dir(old_model)
    new = tmp_path / "m"
    save_model_dir(new, md.model, md.spec, speech_encoder=md.speech_encoder_state)
    _flip(new / "model.safetensors")
    wav = tmp_path / "x.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(16000, np.float32), 16000)
    rc = main(["predict", "--model", str(new), str(wav), "--transcript", "hello"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert f"giamic predict: error: {new / 'model.safetensors'}: SHA-256" in err


def test_non_finite_probabilities_are_an_error_never_a_label(tmp_path, old_model):
    from giamic.inference import Predictor

    md = load_model_dir(old_model)
    with torch.no_grad():
        next(md.model.classifier.parameters()).fill_(float("nan"))
    nan_dir = tmp_path / "nan"
    save_model_dir(nan_dir, md.model, md.spec, speech_encoder=md.speech_encoder_state)  # valid hashes
    arrays = np.load(FIXTURE / "inputs.npz")
    p = Predictor.load(nan_dir)
    with pytest.raises(InferenceError, match="non-finite probabilities") as e:
        p.predict_raw(frames=arrays["frames"][0], wave=arrays["waves"][0].astype(np.float32) / 32768.0, text="hi")
    assert str(e.value).startswith(str(nan_dir))
    good = Predictor.load(old_model).predict_raw(frames=arrays["frames"][0],
                                                 wave=arrays["waves"][0].astype(np.float32) / 32768.0, text="hi")
    assert np.isfinite(list(good.probabilities.values())).all()


def test_evaluation_refuses_non_finite_logits(tmp_path, data):
    ds, feats = data
    inputs = synthetic_inputs(ds, feats)
    recipe = TrainingRecipe(tiny_config("train.max_epochs=1"), inputs, _spec(ds), tmp_path / "u", DistInfo(),
                            pipeline_for(inputs))
    recipe.setup()
    assert all(np.isfinite(v) for v in recipe.validate().values())
    with torch.no_grad():
        next(recipe.model.classifier.parameters()).fill_(float("inf"))
    with pytest.raises(TrainError, match="non-finite logits"):
        recipe.validate()


# -- one process per folder, stale temporary files ---------------------------------------------------
def test_stale_temps_are_removed_only_by_the_writers_pattern(tmp_path):
    d = tmp_path / "out"
    (d / "seed0" / "fold1" / "checkpoint").mkdir(parents=True)
    (d / "store").mkdir()
    stale = [d / ".report.json.abcd1234.tmp", d / "seed0" / "fold1" / "checkpoint" / ".model.safetensors.x_9yz0ab.tmp"]
    kept = [d / "notes.tmp", d / ".short.abc.tmp", d / "report.json", d / ".model.safetensors.abcd1234.tmp.bak",
            d / "store" / ".c-1.npy.abcd1234.tmp"]  # the store has its own lock: its holder cleans it
    for p in stale + kept:
        p.write_bytes(b"x")
    (d / "store" / gio.LOCK_FILE).touch()
    with gio.output_lock(d):
        pass
    assert [p.exists() for p in stale] == [False, False]
    assert all(p.exists() for p in kept)


def test_a_held_folder_is_refused_and_released_with_its_holder(tmp_path):
    d = tmp_path / "out"
    with gio.output_lock(d, what="run folder"):
        (d / ".x.json.abcd1234.tmp").write_bytes(b"live")  # a write in progress
        with pytest.raises(OutputError, match="run folder is in use by another giamic process") as e:
            with gio.output_lock(d, what="run folder"):
                pass
        assert str(e.value).startswith(f"{d}: ") and "\n" not in str(e.value)
        assert (d / ".x.json.abcd1234.tmp").exists()  # the refused process removed nothing
    with gio.output_lock(d):  # released: taken again, and the stale file goes
        assert not (d / ".x.json.abcd1234.tmp").exists()


def test_shards_share_a_store_and_each_shard_is_exclusive(tmp_path):
    d = tmp_path / "store"
    with gio.output_lock(d, part="shard-0-of-2"):
        with gio.output_lock(d, part="shard-1-of-2"):  # another shard: allowed
            pass
        with pytest.raises(OutputError, match=r"\(shard-0-of-2\) is in use"):
            with gio.output_lock(d, part="shard-0-of-2"):
                pass
        with pytest.raises(OutputError, match="is in use"):  # the whole store: refused while a shard works
            with gio.output_lock(d):
                pass
        (d / ".c-1.npy.abcd1234.tmp").write_bytes(b"live")
        with gio.output_lock(d, part="shard-1-of-2"):  # shard 0 may be writing it: left alone
            assert (d / ".c-1.npy.abcd1234.tmp").exists()
    with gio.output_lock(d, part="shard-1-of-2"):  # alone now: removed
        assert not (d / ".c-1.npy.abcd1234.tmp").exists()


def test_lock_holders_names_the_pid_of_another_process(tmp_path):
    import subprocess
    import sys
    import time

    d = tmp_path / "out"
    d.mkdir()
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(d / gio.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert gio.lock_holders(d / gio.LOCK_FILE) == [proc.pid]
        with pytest.raises(OutputError, match=rf"in use by another giamic process \(PID {proc.pid}\)"):
            with gio.output_lock(d):
                pass
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while gio.lock_holders(d / gio.LOCK_FILE) and time.monotonic() < deadline:
        time.sleep(0.05)
    with gio.output_lock(d):  # a killed holder leaves no stale lock
        pass
