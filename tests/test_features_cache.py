"""Feature cache: hit/miss, invalidation, kill-and-resume, corruption, shards, absent modalities,
imports (the cache layout: docs/architecture.md, section 2; fp16 storage: docs/decisions.md)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from giamic.cli import main as cli_main
from giamic.features import (
    AbsentFeatureError,
    ExtractOptions,
    FeatureStore,
    FeatureStoreError,
    build_encoder,
    extract,
    feature_key,
    find_feature_key,
    import_features,
)
from test_features_fixtures import make_dataset

QUIET = ExtractOptions(chunk_size=2, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("feat"))


@pytest.fixture
def fresh(data, tmp_path) -> Path:
    """A private copy of the dataset (without any features), for tests that write stores."""
    dst = tmp_path / "d"
    shutil.copytree(data, dst, ignore=shutil.ignore_patterns("features"))
    return dst


def _store_files(root: Path) -> dict[str, bytes]:
    """The store's files and their bytes (the empty lock files of the processes that wrote it aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not (p.name.startswith(".giamic") and p.name.endswith(".lock"))}


def test_extract_stores_valid_rows_and_matches_direct_encoding(fresh):
    enc = build_encoder("tiny-wavlm-untrained", frozen=True)
    res = extract(fresh, enc, QUIET)
    assert res.complete and res.computed == 7 and res.reused == 0
    store = FeatureStore.open(fresh, res.key, verify=True)
    assert store.modality == "speech" and store.dim == enc.dim
    assert sorted(store) == ["u1", "u2", "u4", "u5", "u7"]
    # absent modalities are recorded with a reason, never stored as zeros
    assert store.absent == {"u3": "audio shorter than one encoder frame", "u6": "no audio file"}
    assert "u6" not in store
    with pytest.raises(AbsentFeatureError, match="no audio file"):
        store["u6"]
    x = store["u1"]
    assert x.dtype == np.float16 and x.shape == (299, enc.dim) and isinstance(x, np.memmap)
    assert store.length("u4") == 49  # 1 s of audio
    from giamic.data import load_audio, load_dataset

    direct, mask = enc.encode([load_audio(load_dataset(fresh).by_id["u4"].wav)])
    np.testing.assert_allclose(store["u4"].astype(np.float32), direct[0, : mask[0].sum()].numpy(),
                               atol=2e-3, rtol=2e-3)


def test_second_run_does_no_encoder_work_and_settings_change_gives_new_key(fresh, monkeypatch):
    enc = build_encoder("tiny-roberta-untrained")
    first = extract(fresh, enc, QUIET)
    files = _store_files(first.root)
    def no_forward(self, **inputs):
        raise AssertionError("the encoder ran on a cache hit")

    monkeypatch.setattr(type(enc), "forward", no_forward)
    second = extract(fresh, enc, QUIET)
    assert second.key == first.key and second.computed == 0 and second.reused == 7
    assert _store_files(first.root) == files
    monkeypatch.undo()
    # any output-changing setting gives another key, so stale features are never read
    assert feature_key(enc, ExtractOptions(text_source="asr")) != first.key
    assert feature_key(build_encoder("tiny-roberta-untrained", max_tokens=16), QUIET) != first.key
    asr = extract(fresh, enc, ExtractOptions(chunk_size=2, progress=False, text_source="asr"))
    store = FeatureStore.open(fresh, asr.key)
    assert set(store.absent) == {"u2", "u4", "u6", "u7"}  # no transcript_asr
    gt = FeatureStore.open(fresh, first.key)
    assert not np.array_equal(store["u1"], gt["u1"])  # "i am so happy today" vs the GT text
    # the training stage finds stores by encoder name and settings without building the encoder
    assert find_feature_key(fresh, "tiny-roberta", text_source="asr") == asr.key
    with pytest.raises(FeatureStoreError, match="several stores"):
        find_feature_key(fresh, "tiny-roberta-untrained")


def test_changed_input_invalidates_only_its_chunk(fresh):
    enc = build_encoder("tiny-roberta-untrained")
    first = extract(fresh, enc, QUIET)
    csv = fresh / "utterances.csv"
    csv.write_text(csv.read_text(encoding="utf-8").replace("What do you mean?", "What did you mean?"), encoding="utf-8")
    again = extract(fresh, enc, QUIET)
    assert again.key == first.key and again.computed == 2 and again.reused == 5  # u2's chunk of two
    store = FeatureStore.open(fresh, again.key)
    assert store.length("u2") == len("What did you mean?") + 2
    assert len(list((again.root / "chunks").glob("*.npy"))) == again.chunks_total  # old chunk removed


def test_corrupt_and_truncated_chunks_are_detected_and_recomputed(fresh):
    enc = build_encoder("tiny-clip-untrained")
    res = extract(fresh, enc, QUIET)
    good = _store_files(res.root)
    npys = sorted((res.root / "chunks").glob("*.npy"))
    raw = bytearray(npys[0].read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the data
    npys[0].write_bytes(bytes(raw))
    # a flipped bit keeps the size: only the checksum (verify=True, and every resume) sees it
    FeatureStore.open(fresh, res.key)
    with pytest.raises(FeatureStoreError, match="SHA-256"):
        FeatureStore.open(fresh, res.key, verify=True)
    npys[1].write_bytes(npys[1].read_bytes()[:-10])  # truncate: caught by the size check on every open
    with pytest.raises(FeatureStoreError, match="truncated"):
        FeatureStore.open(fresh, res.key)
    again = extract(fresh, enc, QUIET)
    assert again.chunks_computed == 2 and again.reused == 7 - again.computed
    assert any("SHA-256" in r for r in again.recomputed) and any("truncated" in r for r in again.recomputed)
    assert _store_files(res.root) == good


def test_video_store_frames_and_absent_reasons(data):
    res = extract(data, build_encoder("tiny-clip-untrained"), QUIET)
    store = FeatureStore.open(data, res.key)
    # 10 fps: u1 is [0, 2) s -> 20 frames; u3 [3, 4) -> 10; the 6-s cap does not bite here
    assert {u: store.length(u) for u in store} == {"u1": 20, "u2": 20, "u3": 10, "u4": 10, "u5": 20}
    assert store.absent == {"u6": "no video file", "u7": "no frame in the window"}
    short = extract(data, build_encoder("tiny-clip-untrained"),
                    ExtractOptions(chunk_size=2, progress=False, video_max_sec=1.0))
    assert short.key != res.key
    assert FeatureStore.open(data, short.key).length("u1") == 10


def test_shards_give_the_same_files_as_one_process(fresh, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(fresh, one)
    enc = build_encoder("tiny-clip-untrained")
    ref = extract(one, enc, QUIET)
    parts = [extract(fresh, enc, ExtractOptions(chunk_size=2, progress=False, num_shards=3, shard_id=i))
             for i in (2, 0, 1)]
    assert [p.complete for p in parts] == [False, False, True]  # the last shard writes the index
    assert sum(p.computed for p in parts) == 7
    assert _store_files(parts[0].root) == _store_files(ref.root)


def test_torchrun_environment_selects_the_shard(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    o = ExtractOptions.from_env(progress=False)
    assert (o.num_shards, o.shard_id) == (4, 3)
    assert ExtractOptions.from_env(num_shards=1, shard_id=0).num_shards == 1


def test_killed_run_resumes_to_byte_identical_features(fresh, tmp_path):
    clean = tmp_path / "clean"
    shutil.copytree(fresh, clean)
    args = ["-m", "giamic", "extract", None, "--encoders", "tiny-wavlm-untrained", "--frozen-speech",
            "--chunk-size", "2", "--no-progress"]
    # One intra-op thread like this process (conftest): CPU float sums depend on the thread count.
    env = dict(os.environ, GIAMIC_TEST_KILL_AFTER_CHUNKS="1", OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, *[str(fresh) if a is None else a for a in args]], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr  # SIGKILL between a chunk's array and its manifest
    key_dir = next((fresh / "features").iterdir())
    assert not (key_dir / "index.json").exists()
    assert len(list((key_dir / "chunks").glob("*.json"))) == 1
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore.open(fresh, key_dir.name)
    assert cli_main(["extract", str(fresh), *args[4:]]) == 0  # resume
    assert cli_main(["extract", str(clean), *args[4:]]) == 0  # uninterrupted
    assert _store_files(key_dir) == _store_files(clean / "features" / key_dir.name)


def test_cli_extract_refuses_trainable_speech_and_reports(fresh, capsys):
    assert cli_main(["extract", str(fresh), "--encoders", "tiny-wavlm"]) == 2
    assert "--frozen-speech" in capsys.readouterr().err
    assert cli_main(["extract", str(fresh), "--encoders", "nope"]) == 2
    assert cli_main(["extract", str(fresh), "--encoders", "tiny-roberta", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "complete" in out.out and "absent u6: no text in column transcript" in out.err


def test_import_features_from_npy_dir_and_safetensors(fresh, tmp_path, capsys):
    src = tmp_path / "mine"
    src.mkdir()
    rng = np.random.default_rng(0)
    arrays = {u: rng.standard_normal((t, 5)).astype(np.float32) for u, t in [("u1", 3), ("u2", 1), ("u5", 7)]}
    for u, a in arrays.items():
        np.save(src / f"{u}.npy", a)
    np.save(src / "stranger.npy", np.zeros((2, 5), np.float32))
    assert cli_main(["import-features", str(fresh), "--modality", "video", "--name", "my-video",
                     "--from", str(src)]) == 0
    err = capsys.readouterr().err
    assert "stranger" in err and "u3" in err
    store = FeatureStore.open(fresh, "my-video", verify=True)
    assert store.modality == "video" and sorted(store) == ["u1", "u2", "u5"]
    np.testing.assert_allclose(store["u5"], arrays["u5"].astype(np.float16))
    assert store.absent["u4"] == "not in the imported features"

    from safetensors.torch import save_file

    st = tmp_path / "f.safetensors"
    save_file({"u1": torch.ones(2, 3, dtype=torch.bfloat16), "u4": torch.zeros(4, 3)}, str(st))
    res = import_features(fresh, "my-text", "text", st)
    assert res.imported == 2 and FeatureStore.open(fresh, "my-text")["u4"].shape == (4, 3)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(4, np.float32), r"u1\.npy: shape \[4\], expected \[T, D\]"),
    (np.zeros((2, 3), np.int64), r"u1\.npy: dtype int64"),
    (np.array([[np.nan, 1.0]], np.float32), r"u1\.npy: holds NaN"),
])
def test_import_rejects_bad_arrays_naming_the_file(fresh, tmp_path, bad, message):
    src = tmp_path / "bad"
    src.mkdir()
    np.save(src / "u1.npy", bad)
    with pytest.raises(FeatureStoreError, match=message):
        import_features(fresh, "x", "video", src)


def test_import_rejects_pickled_npy(fresh, tmp_path):
    src = tmp_path / "pk"
    src.mkdir()
    np.save(src / "u1.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureStoreError, match=r"u1\.npy: cannot read"):
        import_features(fresh, "x", "video", src)


def test_index_lists_every_utterance_once(data):
    res = extract(data, build_encoder("tiny-roberta-untrained"), QUIET)
    index = json.loads((res.root / "index.json").read_text())
    ids = set(index["entries"]) | set(index["absent"])
    assert ids == {"u1", "u2", "u3", "u4", "u5", "u6", "u7"} and not set(index["entries"]) & set(index["absent"])


def test_loader_workers_give_the_same_files(fresh, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(fresh, other)
    enc = build_encoder("tiny-roberta-untrained")
    a = extract(fresh, enc, QUIET)
    b = extract(other, enc, ExtractOptions(chunk_size=2, progress=False, workers=2))
    assert a.key == b.key and _store_files(a.root) == _store_files(b.root)
