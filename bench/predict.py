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
    python bench/predict.py --fps native,5,2 --clip-execution fp32,bf16 --clip-frames 4 --repeats 1
                                             # the stage split for each frame rate and CLIP execution
    python bench/predict.py --agreement /tmp/agree --fps native,10,5,2,1
                                             # the demo corpus: agreement with the 180-frame prediction
    python bench/predict.py --end-to-end --threads 2
                                             # `giamic predict` as a user runs it, wall time per setting

``--end-to-end``: ``giamic predict`` run as a separate process on the generated clip (start-up,
loading the paper-size encoders from local checkpoint folders and the fusion model from an
untrained model directory, decoding, every encoder, fusion and the output included) with each of
``--e2e-settings`` (default: the paper's native 180 frames in fp32, ``--video-fps 10
--clip-execution bf16`` and ``--cpu-fast``). The checkpoints hold random weights written here
(same architectures and files as the published ones).

Prints one line per stage (median of ``--repeats`` runs after ``--warmup`` runs) and the total.

``--recording``: ``giamic analyze`` over a generated recording (``giamic.data.demorecording``, two
speakers, 640x360 at 25 fps, ``--seconds`` long) with untrained model directories written here:
the CPU demo's encoders (tiny CLIP on 8 frames, tiny WavLM on 2 s, MiniLM) and the paper-size ones
(CLIP ViT-L/14 on up to 180 frames, WavLM-large, RoBERTa-base, GIA-MIC d = 768; random weights,
same compute). Segments and text come from the recording's own segments file, so every encoder
runs; Silero VAD is timed separately on the same audio as the segmentation stage. Prints seconds of
recording processed per second (> 1: faster than real time) and the time of each stage: decode
(audio and video), segmentation, face (detection, speaker choice, crop), each encoder, fusion.

    python bench/predict.py --recording --seconds 120           # CPU encoders and paper size
    python bench/predict.py --recording --which cpu --seconds 300
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
    ap.add_argument("--recording", action="store_true", help="time giamic analyze over a generated recording")
    ap.add_argument("--seconds", type=float, default=120.0, help="--recording: length of the recording (default 120 s)")
    ap.add_argument("--paper-seconds", type=float, default=None,
                    help="--recording: a shorter cap for the paper-size encoders (default: --seconds)")
    ap.add_argument("--which", choices=("cpu", "paper", "both"), default="both",
                    help="--recording: which encoders to time (default both)")
    ap.add_argument("--end-to-end", action="store_true",
                    help="wall time of `giamic predict` processes on one 6-s clip (paper-size encoders)")
    ap.add_argument("--e2e-settings", default="native fp32;--video-fps 10 --clip-execution bf16;--cpu-fast",
                    metavar="LIST", help="--end-to-end: ';'-separated predict options ('native fp32' = none)")
    add_rate_arguments(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recording:
        return recording_main(args)
    if args.end_to_end:
        return end_to_end_main(args)
    if args.agreement:
        return agreement_main(args)
    if args.fps or args.clip_execution:
        return settings_main(args)

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
    clip_enc = None  # release the weights before the next encoder

    wavlm = build_encoder("wavlm", random_init=True, device=dev).eval()
    with torch.no_grad():
        t_wavlm, (s_feats, s_mask) = timed(lambda: wavlm.encode([wave]), args.repeats, args.warmup)
    rows.append(("WavLM-large", t_wavlm, f"{int(s_mask.sum())} frames"))
    wavlm = None

    roberta = build_encoder("roberta", random_init=True, device=dev)
    text = "I can't believe you did that again, after everything we talked about last week. " * 3
    t_rob, (t_feats, t_mask) = timed(lambda: roberta.encode([text]), args.repeats, args.warmup)
    rows.append(("RoBERTa-base", t_rob, f"{int(t_mask.sum())} tokens"))
    roberta = None

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


# --------------------------------------------------------------------------- --recording


def _local_checkpoints(out: Path, device: str) -> dict:
    """Paper-size encoders with random weights saved as local Hugging Face folders and loaded back
    from them, as a user's downloaded checkpoints are."""
    from giamic.features import build_encoder

    paths = {}
    for name in ("clip", "wavlm", "roberta"):
        enc = build_encoder(name, random_init=True, device=device)
        paths[name] = out / f"hf-{name}"
        enc.model.save_pretrained(paths[name])
        if name == "roberta":
            enc.tokenizer.save_pretrained(paths[name])
        del enc
    return {"video": build_encoder("clip", paths["clip"], device=device),
            "speech": build_encoder("wavlm", paths["wavlm"], frozen=True, device=device),
            "text": build_encoder("roberta", paths["roberta"], device=device)}, paths


def _model_dir(out: Path, which: str, device: str, local: bool = False) -> Path:
    """An untrained model directory with the CPU demo's or the paper-size encoders (``local``: the
    paper-size ones read from local checkpoint folders, see :func:`_local_checkpoints`)."""
    from giamic import GIAMIC, GIAMICConfig
    from giamic.features import build_encoder
    from giamic.modeldir import FORMAT_VERSION, PipelineSpec, save_model_dir

    paths = {}

    if which == "cpu":
        encs = {"video": build_encoder("tiny-clip-untrained", device=device),
                "speech": build_encoder("tiny-wavlm-untrained", frozen=True, max_samples=32000, device=device),
                "text": build_encoder("minilm", device=device)}
        frames, audio_sec, tokens = 8, 2.0, 32
        lengths = {"video": frames, "speech": 99, "text": tokens}
    elif local:
        encs, paths = _local_checkpoints(out, device)
        frames, audio_sec, tokens = 180, 6.0, 64
        lengths = {"video": 180, "speech": 299, "text": 64}
    else:
        encs = {"video": build_encoder("clip", random_init=True, device=device),
                "speech": build_encoder("wavlm", random_init=True, frozen=True, device=device),
                "text": build_encoder("roberta", random_init=True, device=device)}
        frames, audio_sec, tokens = 180, 6.0, 64
        lengths = {"video": 180, "speech": 299, "text": 64}
    dims = {m: int(e.dim) for m, e in encs.items()}
    cfg = GIAMICConfig.tiny(input_dims=dims) if which == "cpu" else GIAMICConfig(input_dims=dims)
    torch.manual_seed(0)
    model = GIAMIC(cfg).eval()
    pipeline = {
        "format_version": FORMAT_VERSION, "classes": ["neu", "ang", "hap", "sad"], "variant": "full", "modalities": ["video", "speech", "text"],
        "encoders": {m: {"name": n, "name_or_path": str(paths[n]) if n in paths else None,
                         "identity": encs[m].identity(), "feature_key": None,
                         "dim": dims[m], "mode": "cached"}
                     for m, n in zip(("video", "speech", "text"),
                                     ("tiny-clip-untrained", "tiny-wavlm-untrained", "minilm") if which == "cpu"
                                     else ("clip", "wavlm", "roberta"))},
        "preprocessing": {"audio": {"sr": 16000, "max_sec": audio_sec, "max_samples": int(audio_sec * 16000),
                                    "crop": "first", "normalize": True},
                          "video": {"max_frames": frames, "max_sec": 6.0, "crop_mode": "fixed_window"},
                          "text": {"source": "gt", "max_tokens": tokens}, "lengths": lengths},
    }
    return save_model_dir(out / which, model, PipelineSpec.from_dict(pipeline))


def _timed_analysis(model_dir: Path, rec: Path, segments: Path, device: str) -> tuple[dict, float, int]:
    from giamic.inference import AnalyzeOptions, Predictor, analyze_recording

    p = Predictor.load(model_dir, device=device)
    lm = p.models[0]
    spent: dict[str, float] = {}
    for m, enc in lm.encoders.items():
        orig = enc.encode

        def encode(items, _orig=orig, _m=m):
            t0 = time.perf_counter()
            out = _orig(items)
            spent[_m] = spent.get(_m, 0.0) + time.perf_counter() - t0
            return out

        enc.encode = encode
    starts: list[float] = []
    lm.model.register_forward_pre_hook(lambda *a: starts.append(time.perf_counter()))
    lm.model.register_forward_hook(lambda *a: spent.__setitem__("fusion", spent.get("fusion", 0.0)
                                                                 + time.perf_counter() - starts.pop()))
    a = analyze_recording(p, rec, AnalyzeOptions(segments_file=segments))
    t = dict(a.timings)
    stages = {"decode (audio + video)": t.get("decode", 0.0), "segmentation (segments file)": t.get("segmentation", 0.0),
              "face (detect, speaker, crop)": t.get("face", 0.0)}
    for m, name in (("video", "video encoder"), ("speech", "speech encoder"), ("text", "text encoder")):
        stages[f"{name} ({lm.encoders[m].name if hasattr(lm.encoders[m], 'name') else m})"] = spent.get(m, 0.0)
    stages["fusion (GIA-MIC)"] = spent.get("fusion", 0.0)
    other = t.get("predict", 0.0) - sum(spent.values())
    stages["batching, padding, rest"] = max(0.0, other)
    return stages, t["total"], len(a.segments)


def recording_main(args) -> int:
    from giamic.data.demorecording import make_recording, write_segments_file
    from giamic.inference.segments import decode_audio_track, vad_segments

    tmp = Path(tempfile.mkdtemp(prefix="giamic-bench-rec-"))
    runs = ["cpu", "paper"] if args.which == "both" else [args.which]
    print(f"giamic analyze throughput, device={args.device}, torch threads={torch.get_num_threads()}")
    for which in runs:
        seconds = args.seconds if which == "cpu" or args.paper_seconds is None else args.paper_seconds
        rec = tmp / f"talk_{int(seconds)}s.mp4"
        if not rec.exists():
            info = make_recording(rec, seconds=seconds, speakers=2, size=(640, 360), fps=25.0, seed=0)
            write_segments_file(info, rec.with_suffix(".csv"))
        wave = decode_audio_track(rec)
        t0 = time.perf_counter()
        n_vad = len(vad_segments(wave))
        t_vad = time.perf_counter() - t0
        print(f"building the {which} model directory ...", file=sys.stderr)
        md = _model_dir(tmp, which, args.device)
        stages, total, n = _timed_analysis(md, rec, rec.with_suffix(".csv"), args.device)
        stages["segmentation (Silero VAD, separate run)"] = t_vad
        total += t_vad
        title = ("CPU demo encoders (tiny CLIP 8 frames, tiny WavLM 2 s, MiniLM; tiny fusion)" if which == "cpu"
                 else "paper-size encoders (CLIP ViT-L/14 up to 180 frames, WavLM-large, RoBERTa-base; d=768)")
        print(f"\n{title}\n  recording {seconds:.0f} s, 640x360 at 25 fps, {n} utterances (VAD: {n_vad} speech spans before the 6-s split)")
        width = max(len(k) for k in stages)
        for k, v in stages.items():
            print(f"  {k.ljust(width)}  {v:8.2f} s")
        print(f"  {'total'.ljust(width)}  {total:8.2f} s  ->  {seconds / total:.2f} s of recording per second"
              f" ({'faster' if seconds > total else 'slower'} than real time)")


def end_to_end_main(args) -> int:
    import os
    import subprocess

    tmp = Path(tempfile.mkdtemp(prefix="giamic-bench-e2e-"))
    clip = make_clip(tmp / "clip.avi")
    print("writing paper-size checkpoints and the model directory ...", file=sys.stderr)
    md = _model_dir(tmp, "paper", args.device, local=True)
    threads = args.threads or torch.get_num_threads()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"giamic predict, one 6-s clip (720x480, 29.97 fps), paper-size encoders with random weights, "
          f"{threads} thread(s); wall seconds of the whole process, median of {args.repeats}")
    for setting in args.e2e_settings.split(";"):
        opts = [] if setting.strip() == "native fp32" else setting.split()
        cmd = [sys.executable, "-m", "giamic", "predict", str(clip), "--model", str(md), "--transcript",
               "I can't believe you did that, it is wonderful.", "--json", "--no-progress", *opts]
        walls = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            if p.returncode:
                raise SystemExit(f"giamic predict failed ({p.returncode}):\n{p.stderr[-2000:]}")
        print(f"  {setting.strip():40s} {statistics.median(walls):8.2f} s")
    return 0


# -- frame rates and CLIP executions ---------------------------------------------------------------
def add_rate_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--fps", default="", metavar="LIST",
                    help="frame-rate settings to compare, e.g. native,10,5,2 (frames per second of the 6-s window)")
    ap.add_argument("--clip-execution", default="", metavar="LIST",
                    help="CLIP executions to compare, e.g. fp32,bf16,int8 (ClipSettings.execution)")
    ap.add_argument("--agreement", default="", metavar="DIR",
                    help="work folder: generate the demo corpus at 29.97 fps, train one model at the native rate "
                         "(180 frames per 6 s) and print, for each --fps, frames per clip and the agreement of "
                         "its predictions with the native-rate ones")


def parse_rates(text: str) -> list[float | None]:
    """``native,10,2`` -> ``[None, 10.0, 2.0]`` (None = the native rate)."""
    out: list[float | None] = []
    for t in (x.strip() for x in text.split(",")):
        if t:
            out.append(None if t in ("native", "0") else float(t))
    return out or [None]


def rate_name(fps: float | None) -> str:
    return "native" if fps is None else f"{fps:g}/s"


def settings_main(args) -> int:
    """Stage split of one 6-s clip for every frame rate x CLIP execution (paper-size encoders)."""
    import dataclasses

    from giamic import GIAMIC, GIAMICConfig
    from giamic.collate import pad_features
    from giamic.data import CropSpec, VideoWindow, decode_windows
    from giamic.features import build_encoder
    from giamic.features.encoders import ClipVideoEncoder
    from giamic.inference.inputs import Window, read_audio_window

    rates = parse_rates(args.fps)
    execs = [e.strip() for e in (args.clip_execution or "fp32").split(",") if e.strip()]
    dev = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="giamic-bench-"))
    clip = make_clip(tmp / "clip.avi")
    full = CropSpec(mode="full")

    # Stages that do not depend on the frame rate or the CLIP execution: measured once.
    t_audio, wave = timed(lambda: read_audio_window(clip, Window(0.0, 6.0)), args.repeats, args.warmup)
    print("building paper-size encoders with random weights ...", file=sys.stderr)
    speech_enc = build_encoder("wavlm", random_init=True, device=dev).eval()
    with torch.no_grad():
        t_wavlm, (s_feats, s_mask) = timed(lambda: speech_enc.encode([wave]), args.repeats, args.warmup)
    speech_enc = None
    text_enc = build_encoder("roberta", random_init=True, device=dev)
    text = "I can't believe you did that again, after everything we talked about last week. " * 3
    t_rob, (t_feats, t_mask) = timed(lambda: text_enc.encode([text]), args.repeats, args.warmup)
    text_enc = None
    xt, mt = pad_features([t_feats[0, : int(t_mask.sum())].to(torch.float16).cpu().numpy()], 64, 768)

    base = build_encoder("clip", random_init=True, device=dev)
    encs = {ex: ClipVideoEncoder(base.name, base.model, dataclasses.replace(base.settings, execution=ex), base.source)
            for ex in execs}
    # Decode and crop at each frame rate (measured); CLIP's cost per frame does not depend on the
    # rate, so each execution is measured once on the same frames and scaled to each rate's count.
    decoded = {}
    for fps in rates:
        t_dec, (frames,) = timed(lambda r=fps: decode_windows(clip, [VideoWindow(0.0, 6.0, full)], max_frames=180,
                                                              max_sec=6.0, fps=r), args.repeats, args.warmup)
        x0, y0, x1, y1 = CropSpec(side="L").resolve(frames.shape[2], frames.shape[1])
        t_crop, crops = timed(lambda f=frames, b=(x0, y0, x1, y1): np.ascontiguousarray(f[:, b[1]:b[3], b[0]:b[2]]),
                              args.repeats, args.warmup)
        decoded[fps] = (t_dec, t_crop, crops)
    native = decoded[rates[0]][2]
    n = max(1, min(args.clip_frames, len(native)))
    sample = native[np.linspace(0, len(native) - 1, n).round().astype(int)]
    per_frame: dict[str, float] = {}
    ref: dict[str, torch.Tensor] = {}
    for ex in execs:
        enc = encs[ex]
        t_clip, (v_feats, _) = timed(lambda e=enc: e.encode([sample]), args.repeats, args.warmup)
        per_frame[ex] = t_clip / n
        ref[ex] = v_feats[0].float()
        print(f"  CLIP {ex}: {per_frame[ex]:.3f} s/frame (on {n} frames)", file=sys.stderr, flush=True)
    model = GIAMIC(GIAMICConfig()).to(dev).eval()
    v_rows = [ref[execs[0]].to(torch.float16).cpu().numpy()]
    xv, mv = pad_features(v_rows, 180, 768)
    feats = {"video": xv.to(dev), "speech": s_feats.float(), "text": xt.to(dev)}
    masks = {"video": mv.to(dev), "speech": s_mask, "text": mt.to(dev)}

    def fuse():
        with torch.no_grad():
            return model(features=feats, masks=masks).logits

    t_fuse, _ = timed(fuse, args.repeats, args.warmup)
    print(f"giamic predict latency, one 6-s clip (720x480, 29.97 fps), device={dev}, torch threads="
          f"{torch.get_num_threads()}, median of {args.repeats} after {args.warmup} warm-up; CLIP per frame "
          f"measured on {n} frames and scaled to each rate's frame count")
    for fps in rates:
        t_dec, t_crop, crops = decoded[fps]
        k = len(crops)
        for ex in execs:
            stages = [("decode", t_dec), ("crop", t_crop), ("audio", t_audio), ("CLIP", per_frame[ex] * k),
                      ("WavLM", t_wavlm), ("RoBERTa", t_rob), ("fusion", t_fuse)]
            total = sum(t for _, t in stages)
            print(f"  fps {rate_name(fps):>6}  {k:3d} frames  CLIP {ex:4s}  " +
                  "  ".join(f"{name} {t:6.2f}s" for name, t in stages) + f"   total {total:7.2f} s", flush=True)
    ref_frames = sample
    if "fp32" in ref and len(ref) > 1:
        print(f"CLIP output difference vs fp32 ({len(ref_frames)} frames, paper-size random weights):")
        for ex, f in ref.items():
            if ex == "fp32":
                continue
            cos = torch.nn.functional.cosine_similarity(f, ref["fp32"], dim=-1)
            print(f"  {ex:5s} cosine min {cos.min():.6f}  max |diff| {(f - ref['fp32']).abs().max():.4f}  "
                  f"(|fp32| max {ref['fp32'].abs().max():.3f})")
    return 0


def agreement_main(args) -> int:
    """Frames per clip vs agreement with the native-rate (180 frames per 6 s) prediction, on the demo
    corpus rendered at IEMOCAP's 29.97 fps, with one demo-size model trained at the native rate."""
    import json

    from giamic.cli import main as cli
    from giamic.collate import pad_features
    from giamic.data import load_dataset
    from giamic.features import ExtractOptions, FeatureStore, build_encoder, extract
    from giamic.modeldir import load_model_dir

    work = Path(args.agreement)
    work.mkdir(parents=True, exist_ok=True)
    corpus, data = work / "corpus", work / "data"
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if not (data / "utterances.csv").is_file():
        run = ["-q"]
        assert cli(["make-corpus", str(corpus), "--fps", "29.97", *run]) == 0
        assert cli(["prepare", str(corpus), "--out", str(data), *run]) == 0
    ds = load_dataset(data)
    rates = parse_rates(args.fps or "native,10,5,2,1")
    if None not in rates:
        rates = [None] + rates
    execs = [e.strip() for e in (args.clip_execution or "fp32").split(",") if e.strip()]
    if "fp32" not in execs:
        execs = ["fp32"] + execs
    t0 = time.perf_counter()
    video_keys: dict[tuple, str] = {}
    for ex in execs:
        enc = build_encoder("tiny-clip", execution=ex)
        for fps in rates if ex == "fp32" else [None, *[r for r in rates if r is not None][-2:]]:
            res = extract(data, enc, ExtractOptions(video_fps=fps, progress=False, workers=0))
            video_keys[(ex, fps)] = res.key
    s_key = extract(data, build_encoder("tiny-wavlm", frozen=True), ExtractOptions(progress=False)).key
    t_key = extract(data, build_encoder("minilm", max_tokens=32), ExtractOptions(progress=False)).key
    print(f"extraction: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    run_dir = work / "run"
    if not list(run_dir.rglob("pipeline.json")):
        sets = [f"encoders.video_key={video_keys[('fp32', None)]}", f"encoders.speech_key={s_key}",
                f"encoders.text_key={t_key}", "data.max_frames=180", "data.audio_max_sec=6.0"]
        argv = ["train", str(data), "--out", str(run_dir), "--config", "demo", "--fold", "fold1", "-q"]
        for x in sets:
            argv += ["--set", x]
        assert cli(argv) == 0
    mdir = next(run_dir.rglob("pipeline.json")).parent
    md = load_model_dir(mdir)
    model, spec = md.model.eval(), md.spec
    L = spec.preprocessing.lengths
    test = set(json.loads((data / "folds.json").read_text())[0]["test"])
    ids = [u.utt_id for u in ds.utterances]
    s_store, t_store = FeatureStore.open(data, s_key), FeatureStore.open(data, t_key)

    def probs(video_key: str) -> tuple[np.ndarray, np.ndarray]:
        v_store = FeatureStore.open(data, video_key)
        out, frames = [], []
        for s in range(0, len(ids), 32):
            b = ids[s : s + 32]
            xv, mv = pad_features([v_store[u] for u in b], L["video"], v_store.dim)
            xs, ms = pad_features([s_store[u] for u in b], L["speech"], s_store.dim)
            xt, mt = pad_features([t_store[u] for u in b], L["text"], t_store.dim)
            with torch.no_grad():
                lg = model(features={"video": xv, "speech": xs, "text": xt},
                           masks={"video": mv, "speech": ms, "text": mt}).logits
            out.append(torch.softmax(lg.float(), -1).numpy())
            frames += [v_store.length(u) for u in b]
        return np.concatenate(out), np.asarray(frames)

    ref, ref_frames = probs(video_keys[("fp32", None)])
    is_test = np.array([u in test for u in ids])
    truth = np.array([ds.classes.index(u.label) for u in ds.utterances])
    print(f"Agreement with the native-rate prediction (demo corpus at 29.97 fps, {len(ids)} utterances, "
          f"{int(is_test.sum())} of them held out in {mdir.relative_to(work)}; model trained at the native rate)")
    print(f"  {'fps':>7} {'CLIP':>5} {'frames/clip':>12} {'6-s clip':>9} {'labels agree':>13} {'held out':>9} "
          f"{'max |dp|':>9} {'mean |dp|':>9} {'held-out acc':>13}")
    for (ex, fps), key in video_keys.items():
        p, fr = probs(key)
        same = p.argmax(1) == ref.argmax(1)
        d = np.abs(p - ref)
        k6 = 180 if fps is None else min(180, int(round(6 * fps)))
        print(f"  {rate_name(fps):>7} {ex:>5} {fr.mean():12.1f} {k6:9d} {same.mean():13.1%} "
              f"{same[is_test].mean():9.1%} {d.max():9.4f} {d.mean():9.4f} "
              f"{(p.argmax(1) == truth)[is_test].mean():13.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
