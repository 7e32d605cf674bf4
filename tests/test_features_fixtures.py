"""Tiny prepared datasets for the feature tests (architecture §1 layout, media generated here).

Imported by the other ``test_features_*`` modules; the one test below checks the fixture itself.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from giamic.data import Fold, Utterance, load_dataset, write_dataset

FPS = 10
SIZE = (96, 64)  # width, height: the fixed crop windows scale to this (data stage, spec §4.5)


def write_video(path: Path, seconds: float, seed: int) -> None:
    """An mpeg4 AVI with moving coloured shapes (so frames differ), ``FPS`` frames a second."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        base = rng.integers(0, 255, size=3)
        for i in range(int(seconds * FPS)):
            img = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
            img[:] = (base + 7 * i) % 255
            x = (5 * i) % (SIZE[0] - 16)
            img[20:40, x : x + 16] = rng.integers(0, 255, size=3)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def write_wave(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    w = 0.3 * np.sin(2 * np.pi * (120 + 40 * seed) * t) + 0.05 * rng.standard_normal(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), w.astype(np.float32), 16000)


def make_dataset(root: Path, with_problems: bool = True) -> Path:
    """Seven utterances in two dialog videos; with ``with_problems`` one has no media/text at all,
    one has a window past the video's end and one a wave shorter than a WavLM frame."""
    data = root / "data"
    media = root / "media"
    write_video(media / "dlgA.avi", 4.0, seed=1)
    write_video(media / "dlgB.avi", 3.0, seed=2)
    lens = {"u1": 7 * 16000, "u2": 96000, "u3": 300 if with_problems else 8000, "u4": 16000, "u5": 40000,
            "u7": 20000}
    for i, (u, n) in enumerate(lens.items()):
        write_wave(media / f"{u}.wav", n, seed=i)
    rows = [
        ("u1", "A", 0.0, 2.0, "L", "I am so happy today [LAUGHTER]", "i am so happy today"),
        ("u2", "A", 1.5, 3.5, "R", "What do you mean?", None),
        ("u3", "A", 3.0, 4.0, "L", "No.", "know"),
        ("u4", "B", 0.0, 1.0, "R", "Okay " * 40, None),  # longer than 64 tokens
        ("u5", "B", 0.5, 2.5, "L", "That is terrible news.", "that is terrible news"),
        ("u7", "B", 10.0 if with_problems else 2.0, 11.0 if with_problems else 3.0, "R", "Fine then.", None),
    ]
    utts = []
    for u, dlg, start, end, side, text, asr in rows:
        utts.append(Utterance(utt_id=u, label="neu", group=f"Ses0{1 if dlg == 'A' else 2}", speaker=u,
                              start=start, end=end, wav=media / f"{u}.wav", avi=media / f"dlg{dlg}.avi",
                              side=side, transcript=text, transcript_asr=asr))
    if with_problems:
        utts.append(Utterance(utt_id="u6", label="neu", group="Ses02", speaker="u6", start=None, end=None))
    folds = [Fold(name="fold1", test_group="Ses01", train=[u.utt_id for u in utts if u.group == "Ses02"],
                  test=[u.utt_id for u in utts if u.group == "Ses01"])]
    write_dataset(data, name="tiny", classes=["neu"], utterances=utts, folds=folds, fold_scheme="test",
                  source="tests")
    return data


def test_fixture_dataset_round_trips(tmp_path):
    ds = load_dataset(make_dataset(tmp_path))
    assert [u.utt_id for u in ds.utterances] == ["u1", "u2", "u3", "u4", "u5", "u7", "u6"]
    u6 = ds.by_id["u6"]
    assert u6.avi is None and u6.wav is None and not u6.transcript
    assert ds.by_id["u1"].crop.side == "L"
