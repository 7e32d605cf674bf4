"""Latency of ``giamic predict`` on one 6-second clip, split by stage.

Paper-size architectures with random weights (same compute as the real checkpoints):
CLIP ViT-L/14 per frame, WavLM-large on 6 s, RoBERTa-base on the transcript, and the paper-size
GIA-MIC fusion model (d = 768, K = 180, M = 299, N = 64). The clip is generated here: 720x480 at
29.97 fps (IEMOCAP's geometry) with a 16 kHz audio track, in an AVI (MPEG-4 Part 2).

Stages are the ones ``giamic predict`` runs, called through the same functions:
decode (video frames of the window, ``decode_windows`` with the full frame), crop (the IEMOCAP
fixed speaker window on the decoded frames), audio (the window's samples, ``read_audio_window``),
CLIP, WavLM, RoBERTa (``Encoder.encode``), fusion (``GIAMIC`` forward on the padded slots).

    python bench/predict.py                  # all 180 frames through CLIP (minutes on a laptop CPU)
    python bench/predict.py --clip-frames 8  # CLIP on 8 frames, scaled to 180 (per-frame cost is constant)

Prints one line per stage (median of ``--repeats`` runs after ``--warmup`` runs) and the total.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_clip(path: Path, seconds: float = 6.0, size=(720, 480), fps=30000 / 1001) -> Path:
    import av
    from fractions import Fraction

    w, h = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=Fraction(30000, 1001))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=16000)
        a.layout = "mono"
        base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for i in range(int(round(seconds * fps)) + 2):
            img = np.roll(base, 4 * i, axis=1)  # moving texture: a realistic decode cost
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        t = np.arange(int(seconds * 16000)) / 16000
        pcm = (0.2 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16)
        for s in range(0, len(pcm), 1600):
            f = av.AudioFrame.from_ndarray(pcm[None, s : s + 1600], format="s16", layout="mono")
            f.sample_rate, f.pts = 16000, s
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


def timed(fn, repeats: int, warmup: int):
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip-frames", type=int, default=180, help="frames run through CLIP (scaled to 180 when fewer)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from giamic import GIAMIC, GIAMICConfig
    from giamic.data import CropSpec, VideoWindow, decode_windows
    from giamic.features import build_encoder
    from giamic.inference.inputs import Window, read_audio_window
    from giamic.collate import pad_features

    dev = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="giamic-bench-"))
    clip = make_clip(tmp / "clip.avi")
    window = Window(0.0, 6.0)
    rows: list[tuple[str, float, str]] = []

    t_decode, (frames,) = timed(
        lambda: decode_windows(clip, [VideoWindow(0.0, 6.0, CropSpec(mode="full"))], max_frames=180, max_sec=6.0),
        args.repeats, args.warmup,
    )
    rows.append(("decode (180 frames, 720x480)", t_decode, f"{len(frames)} frames"))
    x0, y0, x1, y1 = CropSpec(side="L").resolve(frames.shape[2], frames.shape[1])
    t_crop, crops = timed(lambda: np.ascontiguousarray(frames[:, y0:y1, x0:x1]), args.repeats, args.warmup)
    rows.append(("crop (IEMOCAP fixed window)", t_crop, f"{crops.shape[2]}x{crops.shape[1]}"))
    t_audio, wave = timed(lambda: read_audio_window(clip, window), args.repeats, args.warmup)
    rows.append(("audio (6 s window, 16 kHz)", t_audio, f"{len(wave)} samples"))

    print("building paper-size encoders with random weights ...", file=sys.stderr)
    clip_enc = build_encoder("clip", random_init=True, device=dev)
    n = max(1, min(args.clip_frames, len(crops)))
    t_clip, (v_feats, v_mask) = timed(lambda: clip_enc.encode([crops[:n]]), args.repeats, args.warmup)
    scale = len(crops) / n
    rows.append(("CLIP ViT-L/14", t_clip * scale,
                 f"{len(crops)} frames" + (f" (measured on {n}, x{scale:.1f})" if n < len(crops) else "")))
    v_rows = [v_feats[0, : int(v_mask[0].sum())].to(torch.float16).cpu().numpy()]
    del clip_enc

    wavlm = build_encoder("wavlm", random_init=True, device=dev).eval()
    with torch.no_grad():
        t_wavlm, (s_feats, s_mask) = timed(lambda: wavlm.encode([wave]), args.repeats, args.warmup)
    rows.append(("WavLM-large", t_wavlm, f"{int(s_mask.sum())} frames"))
    del wavlm

    roberta = build_encoder("roberta", random_init=True, device=dev)
    text = "I can't believe you did that again, after everything we talked about last week. " * 3
    t_rob, (t_feats, t_mask) = timed(lambda: roberta.encode([text]), args.repeats, args.warmup)
    rows.append(("RoBERTa-base", t_rob, f"{int(t_mask.sum())} tokens"))
    del roberta

    model = GIAMIC(GIAMICConfig()).to(dev).eval()
    xv, mv = pad_features(v_rows, 180, 768)
    xt, mt = pad_features([t_feats[0, : int(t_mask.sum())].to(torch.float16).cpu().numpy()], 64, 768)
    feats = {"video": xv.to(dev), "speech": s_feats.float(), "text": xt.to(dev)}
    masks = {"video": mv.to(dev), "speech": s_mask, "text": mt.to(dev)}

    def fuse():
        with torch.no_grad():
            return model(features=feats, masks=masks).logits

    t_fuse, _ = timed(fuse, args.repeats, args.warmup)
    rows.append(("fusion (GIA-MIC, d=768)", t_fuse, f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params"))

    print(f"giamic predict latency, one 6-s clip, device={dev}, torch threads={torch.get_num_threads()}, "
          f"median of {args.repeats} after {args.warmup} warm-up")
    width = max(len(r[0]) for r in rows)
    for name, t, note in rows:
        print(f"  {name.ljust(width)}  {t * 1000:10.1f} ms   {note}")
    total = sum(r[1] for r in rows)
    print(f"  {'total'.ljust(width)}  {total * 1000:10.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
