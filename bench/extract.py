"""Extraction and cache-read speed against the encoders' own forward time, measured in one run.

    .venv/bin/python bench/extract.py                          # tiny presets on CPU
    .venv/bin/python bench/extract.py --random-init --device cuda --encoders clip,roberta,wavlm

For each encoder it prints utterances per second for
  forward   the encoder's forward alone on preprocessed inputs (the compute floor of extraction),
  extract   `extract` end to end on a fresh store (decode, preprocess, forward, fp16 write),
  rerun     a second `extract` with the same settings (verification only, no encoder work),
  read      training-style reads from the store: open, then every utterance in random order
            converted to a torch tensor, averaged over several epochs,
and the ratios read/forward and extract/forward. The dataset is generated here (videos at 30 fps,
6-s utterances), so figures compare runs of this script only.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch

from giamic.data import Fold, Utterance, load_audio, load_dataset, write_dataset
from giamic.data.video import VideoWindow, decode_windows
from giamic.features import ExtractOptions, FeatureStore, build_encoder, extract


def make_data(root: Path, n_utts: int, per_video: int, seconds: float, fps: int, size=(360, 240)) -> Path:
    rng = np.random.default_rng(0)
    media = root / "media"
    media.mkdir(parents=True)
    utts = []
    for v in range(0, n_utts, per_video):
        k = min(per_video, n_utts - v)
        path = media / f"dlg{v:04d}.avi"
        with av.open(str(path), "w") as c:
            s = c.add_stream("mpeg4", rate=Fraction(fps))
            s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
            for i in range(int(k * seconds * fps)):
                img = rng.integers(0, 255, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
                img = np.kron(img, np.ones((8, 8, 1), np.uint8))  # blocky frames: cheap to encode, not constant
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
        for j in range(k):
            u = f"utt{v + j:05d}"
            sf.write(str(media / f"{u}.wav"), (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
            utts.append(Utterance(utt_id=u, label="neu", group="g", start=j * seconds, end=(j + 1) * seconds,
                                  wav=media / f"{u}.wav", avi=path, side="L",
                                  transcript="so this is what a typical sentence of the corpus looks like, more or less"))
    data = root / "data"
    write_dataset(data, name="bench", classes=["neu"], utterances=utts,
                  folds=[Fold("f", "g", [], [u.utt_id for u in utts])], fold_scheme="none", source="bench")
    return data


def forward_rate(enc, data: Path, n: int, batch: int, dtype: torch.dtype) -> float:
    """Utterances/s of the forward alone (inputs preprocessed and on the device beforehand)."""
    ds = load_dataset(data)
    utts = ds.utterances[:n]
    if enc.modality == "video":
        frames = decode_windows(utts[0].avi, [VideoWindow(u.start, u.end, u.crop) for u in utts if u.avi == utts[0].avi])
        raw = [frames[i % len(frames)] for i in range(len(utts))]
        batches = [enc.preprocess([r]) for r in raw]  # one utterance (all its frames) per forward
    elif enc.modality == "speech":
        raw = [load_audio(u.wav) for u in utts]
        batches = [enc.preprocess(raw[i : i + batch]) for i in range(0, len(raw), batch)]
    else:
        raw = [u.transcript for u in utts]
        batches = [enc.preprocess(raw[i : i + batch]) for i in range(0, len(raw), batch)]
    batches = [{k: v.to(enc.device) for k, v in b.items()} for b in batches]
    ac = torch.autocast(enc.device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ac:
        enc(**batches[0])  # warm-up
        _sync(enc.device)
        t0 = time.perf_counter()
        for b in batches:
            enc(**b)
        _sync(enc.device)
    return len(utts) / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_rate(data: Path, key: str, epochs: int) -> float:
    t0 = time.perf_counter()
    store = FeatureStore.open(data, key)
    ids = list(store)
    rng = np.random.default_rng(0)
    total = 0
    for _ in range(epochs):
        for u in rng.permutation(ids):
            x = torch.from_numpy(np.asarray(store[u], dtype=np.float32))  # what a training loader does
            total += x.shape[0] > 0
    return total / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", default="tiny-clip-untrained,tiny-wavlm-untrained,tiny-roberta-untrained")
    ap.add_argument("--random-init", action="store_true", help="paper-size clip/wavlm/roberta with random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--utterances", type=int, default=48)
    ap.add_argument("--per-video", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--read-epochs", type=int, default=20)
    ap.add_argument("--keep", help="keep the generated data in this directory")
    args = ap.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="giamic-bench-"))
    try:
        t0 = time.perf_counter()
        data = make_data(root, args.utterances, args.per_video, args.seconds, args.fps)
        print(f"data: {args.utterances} utterances of {args.seconds:g} s, video {args.fps} fps "
              f"({time.perf_counter() - t0:.1f} s to generate); device={args.device} dtype={args.dtype} "
              f"threads={torch.get_num_threads()} workers={args.workers}")
        print(f"{'encoder':<24}{'forward':>10}{'extract':>10}{'rerun':>10}{'read':>12}{'read/fwd':>10}{'extr/fwd':>10}"
              "   (utterances/s)")
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
        for name in [n.strip() for n in args.encoders.split(",") if n.strip()]:
            enc = build_encoder(name, device=args.device, frozen=True,
                                random_init=args.random_init and not name.startswith("tiny") and name != "minilm")
            opts = ExtractOptions(progress=False, workers=args.workers, batch_size=args.batch_size, dtype=args.dtype)
            fwd = forward_rate(enc, data, min(args.utterances, 16), args.batch_size, dtype)
            t = time.perf_counter()
            res = extract(data, enc, opts)
            ext = args.utterances / (time.perf_counter() - t)
            t = time.perf_counter()
            again = extract(data, enc, opts)
            rerun = args.utterances / (time.perf_counter() - t)
            assert again.computed == 0, "second run did encoder work"
            rd = read_rate(data, res.key, args.read_epochs)
            print(f"{name:<24}{fwd:>10.1f}{ext:>10.1f}{rerun:>10.1f}{rd:>12.0f}{rd / fwd:>10.0f}x{ext / fwd:>9.2f}x")
            del enc
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
