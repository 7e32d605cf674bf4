"""Speed of the data pipeline: windowed video decoding and audio windows.

Prints, measured in one run on the same files:

* frames/s of the utterance pipeline (``decode_windows`` with the speaker crop over all utterances
  of each dialog video, decoded once per video);
* frames/s of a plain PyAV decode of the same videos (every frame to an RGB array), and the ratio
  plain/pipeline (the pipeline's overhead; near 1 is the aim);
* frames/s of the plain decode with one scaler context per file (as the pipeline converts), which
  separates the cost of windowing from the cost of colour conversion;
* frames/s of a per-utterance seek-and-decode loop, for contrast;
* audio windows/s (``load_audio`` + ``crop_or_pad`` + ``normalize_wave``);
* the loader margin of the fine-tuned speech encoder (:func:`loader_margin`): utterances/s that
  the training loader (``giamic.train.batches.OnlineSpeech`` in a ``DataLoader``: waveform read,
  first-6-s crop, normalisation, batches of 32) delivers with 0, 1, 2, ... workers, beside the
  utterances/s one GPU training step consumes, and their ratio.

The GPU's rate is derived, not measured: a training utterance of the paper's recipe costs
≈ 0.69 TFLOP (WavLM-large forward and backward on 6 s ≈ 614 GFLOP, the fusion model ≈ 71 GFLOP;
docs/reproducing.md), and an H100 at 40 % of its dense bf16 peak (≈ 990 TFLOP/s) does ≈ 396 TFLOP/s,
so ≈ 574 utterances/s (≈ 18 steps of 32 a second). The loader should deliver at least 3x that.

Runs on a generated demo corpus (IEMOCAP geometry by default: 720x480 at 29.97 fps) or on an
existing IEMOCAP-layout tree with ``--corpus``::

    python bench/data.py                       # generate, then measure
    python bench/data.py --corpus /data/IEMOCAP_full_release --dialogs 4
    python bench/data.py --loader-only --data DIR/data --workers 0 1 2   # a prepared dataset
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter

from giamic.data import crop_or_pad, decode_windows, load_audio, normalize_wave
from giamic.data.iemocap import prepare_iemocap


def plain_decode(path: Path) -> int:
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def plain_decode_shared_scaler(path: Path) -> int:
    """As plain_decode, with one scaler context for the file (what decode_windows does)."""
    n = 0
    reformatter = VideoReformatter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            reformatter.reformat(frame, format="rgb24").to_ndarray()
            n += 1
    return n


def seek_per_utterance(path: Path, utts) -> int:
    """The approach decode_windows replaces: open, seek and decode for every utterance."""
    n = 0
    for u in utts:
        win = u.video_window()
        stop = win.stop(6.0)
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            c.seek(int(win.start / s.time_base), stream=s, backward=True, any_frame=False)
            x0, y0, x1, y1 = win.crop.resolve(s.codec_context.width, s.codec_context.height)
            for frame in c.decode(s):
                if frame.time < win.start:
                    continue
                if frame.time >= stop or n >= 10**9:
                    break
                frame.to_ndarray(format="rgb24")[y0:y1, x0:x1].copy()
                n += 1
    return n


def best_of(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


TRAIN_TFLOP_PER_UTT = 0.69  # docs/reproducing.md: WavLM-large fwd+bwd on 6 s + the fusion model
H100_BF16_DENSE_TFLOPS = 990.0
MFU = 0.40
REQUIRED_MARGIN = 3.0


def gpu_utterances_per_s(tflop_per_utt: float = TRAIN_TFLOP_PER_UTT, peak: float = H100_BF16_DENSE_TFLOPS,
                         mfu: float = MFU) -> float:
    """Utterances/s one GPU training step consumes at ``mfu`` of ``peak`` TFLOP/s."""
    return peak * mfu / tflop_per_utt


def loader_margin(dataset, ids, workers: list[int], batch: int = 32, max_sec: float = 6.0,
                  repeat: int = 2) -> list[tuple[int, float]]:
    """Utterances/s of the training loader of the fine-tuned speech encoder, per worker count:
    ``OnlineSpeech.load`` (read, crop to the first ``max_sec``, normalise) through the same
    ``DataLoader`` + ``ModelInputs.collate`` the training epoch uses. The encoder is the tiny
    WavLM (its preprocessing is WavLM's; its weights are never run here)."""
    import torch

    from giamic.features import build_encoder
    from giamic.modeldir import EncoderRecord
    from giamic.train.batches import ModelInputs, OnlineSpeech, UnitDataset

    enc = build_encoder("tiny-wavlm-untrained", frozen=False, max_samples=int(max_sec * 16000), sample_rate=16000,
                        normalize=True)
    info = EncoderRecord(name="tiny-wavlm-untrained", dim=enc.dim, mode="finetune")
    inputs = ModelInputs(dataset, dataset.classes, {"speech": OnlineSpeech(enc, dataset, "first", info)})
    out = []
    for w in workers:
        best = float("inf")
        for _ in range(repeat):
            loader = torch.utils.data.DataLoader(UnitDataset(inputs, ids), batch_size=batch, collate_fn=inputs.collate,
                                                 num_workers=w, persistent_workers=False)
            t = time.perf_counter()
            n = sum(len(b) for b in loader)
            best = min(best, time.perf_counter() - t)
        out.append((w, n / best))
    return out


def print_loader_margin(dataset, n: int, workers: list[int]) -> None:
    import random

    ids = [u.utt_id for u in dataset.utterances if u.wav is not None]
    random.Random(0).shuffle(ids)
    ids = ids[:n]
    need = gpu_utterances_per_s()
    print(f"GPU training step (derived): {TRAIN_TFLOP_PER_UTT} TFLOP/utterance at {MFU:.0%} of "
          f"{H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s = {need:.0f} utterances/s ({need / 32:.1f} steps of 32/s); "
          f"the loader needs >= {REQUIRED_MARGIN:.0f}x = {REQUIRED_MARGIN * need:.0f} utterances/s")
    for w, rate in loader_margin(dataset, ids, workers):
        print(f"speech loader, {w} worker(s), batch 32, {len(ids)} utterances: {rate:.0f} utterances/s, "
              f"margin {rate / need:.2f}x")
    import os

    print(f"(this machine: {os.cpu_count()} CPU core(s); the rate grows with workers up to the cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="an IEMOCAP-layout tree (default: generate a demo corpus)")
    ap.add_argument("--size", default="720x480", help="generated video size (default 720x480, IEMOCAP's)")
    ap.add_argument("--fps", type=float, default=30000 / 1001, help="generated frame rate (default 29.97)")
    ap.add_argument("--n-per-dialog", type=int, default=8)
    ap.add_argument("--dialogs", type=int, default=2, help="dialog videos to measure (default 2)")
    ap.add_argument("--repeat", type=int, default=5, help="take the best of this many runs (default 5)")
    ap.add_argument("--loader-only", action="store_true", help="only the speech loader's margin")
    ap.add_argument("--data", type=Path, help="a prepared dataset for the loader margin (default: the generated corpus)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts (default 0 1 2)")
    ap.add_argument("--utterances", type=int, default=640, help="utterances the loader reads (default 640)")
    args = ap.parse_args()
    if args.loader_only and args.data is not None:
        from giamic.data import load_dataset

        print_loader_margin(load_dataset(args.data), args.utterances, args.workers)
        return

    tmp = tempfile.TemporaryDirectory()
    root = args.corpus
    if root is None:
        from giamic.data.democorpus import make_corpus

        w, h = (int(v) for v in args.size.split("x"))
        root = Path(tmp.name) / "corpus"
        t = time.perf_counter()
        make_corpus(root, seed=0, n_per_dialog=args.n_per_dialog, sessions=1, dialogs_per_session=2,
                    fps=args.fps, size=(w, h), dialog_wav=False)
        print(f"generated a demo corpus ({w}x{h}, {args.fps:.2f} fps) in {time.perf_counter() - t:.1f} s")
    res = prepare_iemocap(root, Path(tmp.name) / "data", partial=True)
    if args.loader_only or args.data is not None:
        from giamic.data import load_dataset

        print_loader_margin(load_dataset(args.data or Path(tmp.name) / "data"), args.utterances, args.workers)
        if args.loader_only:
            return
    by_video = defaultdict(list)
    for u in res.utterances:
        by_video[u.avi].append(u)
    videos = sorted(by_video)[: args.dialogs]
    n_utts = sum(len(by_video[v]) for v in videos)

    def pipeline():
        n = 0
        for v in videos:
            frames = decode_windows(v, [u.video_window() for u in by_video[v]])
            n += sum(f.shape[0] for f in frames)
        return n

    def plain():
        return sum(plain_decode(v) for v in videos)

    def plain_shared():
        return sum(plain_decode_shared_scaler(v) for v in videos)

    def seeking():
        return sum(seek_per_utterance(v, by_video[v]) for v in videos)

    # Interleaved runs, best of each: the machine's load changes less within one round.
    t_pipe = t_plain = t_seek = t_shared = float("inf")
    for _ in range(args.repeat):
        dt, n_pipe = best_of(pipeline, 1)
        t_pipe = min(t_pipe, dt)
        dt, n_plain = best_of(plain, 1)
        t_plain = min(t_plain, dt)
        dt, n_seek = best_of(seeking, 1)
        t_seek = min(t_seek, dt)
        dt, n_shared = best_of(plain_shared, 1)
        t_shared = min(t_shared, dt)
    fps_pipe, fps_plain, fps_seek = n_pipe / t_pipe, n_plain / t_plain, n_seek / t_seek
    print(f"videos: {len(videos)}, utterances: {n_utts}")
    print(f"utterance pipeline (decode once, crop): {n_pipe} frames in {t_pipe:.3f} s = {fps_pipe:.0f} frames/s")
    print(f"plain PyAV decode to RGB (all frames):  {n_plain} frames in {t_plain:.3f} s = {fps_plain:.0f} frames/s")
    print(f"ratio plain/pipeline frames/s:          {fps_plain / fps_pipe:.2f}")
    print(f"ratio pipeline/plain wall time:         {t_pipe / t_plain:.2f}"
          f"  (the pipeline delivers {n_pipe} frames out of {n_plain}; it decodes up to the last window)")
    print(f"plain decode, one scaler context:       {n_shared} frames in {t_shared:.3f} s = {n_shared / t_shared:.0f} frames/s")
    print(f"seek + decode per utterance:            {n_seek} frames in {t_seek:.3f} s = {fps_seek:.0f} frames/s")

    wavs = [u.wav for v in videos for u in by_video[v]]

    def audio():
        for p in wavs:
            w, valid = crop_or_pad(load_audio(p), 96000)
            normalize_wave(w, valid)
        return len(wavs)

    reps = max(1, 200 // max(1, len(wavs)))
    t_audio, _ = best_of(lambda: [audio() for _ in range(reps)], args.repeat)
    print(f"audio windows (load + crop/pad + normalise): {len(wavs) * reps / t_audio:.0f} windows/s")
    from giamic.data import load_dataset

    print_loader_margin(load_dataset(Path(tmp.name) / "data"), args.utterances, args.workers)
    tmp.cleanup()


if __name__ == "__main__":
    main()
