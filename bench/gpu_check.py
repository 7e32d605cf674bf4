"""What a GPU machine needs to show before a long `giamic reproduce` run (docs/gpu.md).

Each check prints one line; without CUDA every check prints that it skipped and the script exits 0:

1. bf16 matmul peak (8192^3, measured here) and a fusion-model training step in bf16 (the paper-size
   GIA-MIC, batch 32, slots K=180, M=299, N=64): its TFLOP/s and its share of the measured peak;
2. a WavLM-large training step (random init, the paper's architecture: 24 layers, d = 1024), batch 32
   of 6-s waves in bf16 autocast: seconds per step and peak memory, with and without gradient
   checkpointing;
3. CLIP ViT-L/14 image-embedding extraction (random init, 224 px) in frames/s;
4. a one-process NCCL initialisation and a DistributedDataParallel step of the fusion model.

    python bench/gpu_check.py [--steps 5] [--skip wavlm,clip]
"""
from __future__ import annotations

import argparse
import datetime
import os
import time


def line(name: str, text: str) -> None:
    print(f"{name:<22} {text}", flush=True)


def timed(fn, steps: int, sync) -> float:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t) / steps


def matmul_peak(torch, steps: int) -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    dt = timed(lambda: a @ b, steps * 4, torch.cuda.synchronize)
    return 2 * n ** 3 / dt / 1e12


def fusion_batch(torch, cfg, batch: int = 32):
    lengths = {"video": 180, "speech": 299, "text": 64}
    feats = {m: torch.randn(batch, lengths[m], cfg.input_dims[m], device="cuda") for m in cfg.modalities}
    masks = {m: torch.ones(batch, lengths[m], dtype=torch.bool, device="cuda") for m in cfg.modalities}
    return feats, masks, torch.randint(0, cfg.num_classes, (batch,), device="cuda")


def fusion_step(torch, steps: int, peak: float) -> None:
    from giamic import GIAMIC, GIAMICConfig

    cfg = GIAMICConfig(num_classes=4, input_dims={"video": 768, "speech": 1024, "text": 768})
    model = GIAMIC(cfg).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    feats, masks, y = fusion_batch(torch, cfg)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(features=feats, masks=masks, labels=y)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    dt = timed(step, steps, torch.cuda.synchronize)
    flop = 71e9 * 32  # docs/reproducing.md: the fusion model's forward and backward per utterance
    line("fusion step bf16", f"{dt * 1e3:.1f} ms/step (batch 32), {flop / dt / 1e12:.1f} TFLOP/s = "
                             f"{flop / dt / 1e12 / peak:.1%} of the measured bf16 matmul peak")


def wavlm_step(torch, steps: int, checkpointing: bool) -> None:
    from transformers import WavLMConfig, WavLMModel

    cfg = WavLMConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    model = WavLMModel(cfg).cuda().train()
    model.feature_extractor._freeze_parameters()
    if checkpointing:
        model.gradient_checkpointing_enable()
    head = torch.nn.Linear(1024, 4).cuda()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-5)
    x = torch.randn(32, 96000, device="cuda")
    y = torch.randint(0, 4, (32,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = model(x).last_hidden_state.mean(1)
            loss = torch.nn.functional.cross_entropy(head(h).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    dt = timed(step, steps, torch.cuda.synchronize)
    mem = torch.cuda.max_memory_allocated() / 2 ** 30
    line(f"wavlm-large ckpt={'on' if checkpointing else 'off'}",
         f"{dt:.3f} s/step (batch 32 x 6 s, bf16), {32 / dt:.0f} utterances/s, peak memory {mem:.1f} GiB")
    torch.cuda.empty_cache()


def clip_extract(torch, steps: int) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           patch_size=14, image_size=224, projection_dim=768)
    model = CLIPVisionModelWithProjection(cfg).cuda().eval().half()
    x = torch.randn(256, 3, 224, 224, device="cuda", dtype=torch.half)

    @torch.no_grad()
    def run():
        model(pixel_values=x).image_embeds

    dt = timed(run, steps, torch.cuda.synchronize)
    line("clip vit-l/14 fp16", f"{256 / dt:.0f} frames/s (batch 256, the model alone; decoding is on the CPU)")


def ddp_step(torch) -> None:
    import torch.distributed as dist

    from giamic import GIAMIC, GIAMICConfig

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    t = time.perf_counter()
    dist.init_process_group("nccl", rank=0, world_size=1)
    init = time.perf_counter() - t
    cfg = GIAMICConfig(num_classes=4, input_dims={"video": 768, "speech": 1024, "text": 768})
    model = torch.nn.parallel.DistributedDataParallel(GIAMIC(cfg).cuda(), device_ids=[0])
    feats, masks, y = fusion_batch(torch, cfg)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(features=feats, masks=masks, labels=y)
    out.loss.backward()
    torch.cuda.synchronize()
    dist.destroy_process_group()
    line("nccl + ddp", f"init {init:.2f} s; one DDP step of the fusion model done (loss {float(out.loss):.3f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per check (default 5)")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip: fusion, wavlm, clip, ddp")
    args = ap.parse_args(argv)
    import torch

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    checks = ["matmul", "fusion", "wavlm", "wavlm-ckpt", "clip", "ddp"]
    if not torch.cuda.is_available():
        for c in checks:
            line(c, "skipped: no CUDA device (run on a GPU machine; docs/gpu.md)")
        return 0
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {torch.cuda.get_device_name(0)}, "
          f"torch {torch.__version__}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak(torch, args.steps)
    line("bf16 matmul peak", f"{peak:.0f} TFLOP/s (8192^3, measured)")
    if "fusion" not in skip:
        fusion_step(torch, args.steps, peak)
    if "wavlm" not in skip:
        wavlm_step(torch, args.steps, checkpointing=False)
        wavlm_step(torch, args.steps, checkpointing=True)
    if "clip" not in skip:
        clip_extract(torch, args.steps)
    if "ddp" not in skip:
        if torch.distributed.is_nccl_available():
            ddp_step(torch)
        else:
            line("nccl + ddp", "skipped: this torch has no NCCL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
