"""Encoders: shapes, masks, frame counts, preprocessing equal to the checkpoints' processors,
paper-size parameter counts, deterministic presets, the offline error (spec §3, §7.1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from giamic.features import (
    ENCODERS,
    EncoderUnavailableError,
    build_encoder,
    clip_preprocess,
    parameter_count,
)
from giamic.features.encoders import state_dict_sha256


@pytest.mark.parametrize(
    "name, expected",
    # spec §3.1-§3.3 / §7.1: CLIP vision + projection, WavLM-large, RoBERTa-base (with pooler)
    [("clip", 303_966_208), ("wavlm", 315_453_120), ("roberta", 124_645_632)],
)
def test_paper_size_architectures_have_the_spec_parameter_counts(name, expected):
    enc = build_encoder(name, random_init=True, device="meta")
    assert parameter_count(enc) == expected


def test_paper_size_dims_and_wavlm_conv_encoder_size():
    assert build_encoder("clip", random_init=True, device="meta").dim == 768
    wavlm = build_encoder("wavlm", random_init=True, device="meta")
    assert wavlm.dim == 1024
    conv = sum(p.numel() for p in wavlm.model.feature_extractor.parameters())
    assert conv == 4_206_592  # spec §3.2
    assert build_encoder("roberta", random_init=True, device="meta").dim == 768


def test_wavlm_frames_mask_and_zeroed_padding():
    enc = build_encoder("tiny-wavlm-untrained")
    assert enc.num_frames(96_000).item() == 299  # spec §3.2 / §9 item 3, with the real conv stack
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(120_000).astype(np.float32), rng.standard_normal(16_000).astype(np.float32)]
    enc.eval()
    feats, mask = enc.encode(waves)
    assert feats.shape == (2, 299, enc.dim) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [299, 49]
    assert torch.all(feats[1, 49:] == 0) and feats[1, :49].abs().sum() > 0
    # The valid frames do not depend on the padding: the short wave alone gives the same rows.
    alone, m1 = enc.encode(waves[1:])
    torch.testing.assert_close(alone[0, :49], feats[1, :49], atol=1e-5, rtol=1e-4)


def test_wavlm_normalisation_is_explicit_and_over_valid_samples():
    enc = build_encoder("tiny-wavlm-untrained")
    w = (3.0 + 2.0 * np.random.default_rng(1).standard_normal(32_000)).astype(np.float32)
    inp = enc.preprocess([w])
    x, am = inp["input_values"][0], inp["attention_mask"][0]
    assert am.sum() == 32_000 and x.shape == (96_000,)
    valid = x[:32_000].double()
    assert abs(valid.mean()) < 1e-5 and abs(valid.std(unbiased=False) - 1) < 1e-4
    assert torch.all(x[32_000:] == 0)
    raw = build_encoder("tiny-wavlm-untrained", normalize=False).preprocess([w])["input_values"][0]
    assert torch.allclose(raw[:32_000], torch.from_numpy(w))


def test_wavlm_is_trainable_by_default_with_frozen_conv_encoder():
    enc = build_encoder("tiny-wavlm-untrained")
    assert not enc.frozen
    assert all(not p.requires_grad for p in enc.model.feature_extractor.parameters())
    assert any(p.requires_grad for p in enc.model.encoder.parameters())
    enc.train()
    feats, mask = enc.encode([np.random.default_rng(2).standard_normal(20_000).astype(np.float32)])
    feats[mask].sum().backward()
    grads = [p.grad for p in enc.model.encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    ck = build_encoder("tiny-wavlm-untrained", gradient_checkpointing=True, mask_time_prob=0.0)
    assert ck.model.encoder.gradient_checkpointing and ck.model.config.mask_time_prob == 0.0


def test_frozen_encoder_stays_in_eval_and_has_no_grad():
    enc = build_encoder("tiny-wavlm-untrained", frozen=True)
    enc.train()
    assert not enc.model.training
    feats, _ = enc.encode([np.ones(20_000, np.float32)])
    assert not feats.requires_grad


@pytest.mark.parametrize("backend", ["pil", "torch"])
def test_clip_preprocessing_matches_clip_image_processor(backend):
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil()  # the checkpoint's processor: shortest edge 224, bicubic, crop 224
    rng = np.random.default_rng(0)
    for shape in [(240, 350), (480, 360), (100, 90)]:  # IEMOCAP crop, a half frame, an upscale
        frames = rng.integers(0, 256, size=(3, *shape, 3), dtype=np.uint8)
        ref = proc(images=list(frames), return_tensors="pt")["pixel_values"]
        ours = clip_preprocess(frames, backend=backend)
        assert ours.shape == ref.shape == (3, 3, 224, 224)
        diff = (ours - ref).abs()
        if backend == "pil":
            assert diff.max() < 1e-5
        else:  # at most one intensity level (1/255/std) on a small share of values
            assert diff.max() <= 1 / 255 / min(proc.image_std) + 1e-5
            assert (diff > 1e-5).float().mean() < 0.005


def test_clip_video_one_row_per_frame_and_mask():
    enc = build_encoder("tiny-clip-untrained")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(5, 64, 48, 3), dtype=np.uint8)
    b = rng.integers(0, 256, size=(2, 64, 48, 3), dtype=np.uint8)
    feats, mask = enc.encode([a, b])
    assert feats.shape == (2, 5, enc.dim) and mask.sum(1).tolist() == [5, 2]
    assert torch.all(feats[1, 2:] == 0)
    single, _ = enc.encode([b])
    torch.testing.assert_close(single[0], feats[1, :2], atol=1e-5, rtol=1e-4)
    # image_embeds are not normalised by default (spec item 29); the flag does it
    assert not torch.allclose(feats[0].norm(dim=-1), torch.ones(5))
    l2 = build_encoder("tiny-clip-untrained", l2norm=True).encode([a])[0]
    torch.testing.assert_close(l2[0].norm(dim=-1), torch.ones(5), atol=1e-5, rtol=0)


def test_text_tokenisation_special_tokens_truncation_and_mask():
    enc = build_encoder("tiny-roberta-untrained")
    ids = enc.preprocess(["hi", "word " * 100])
    assert ids["input_ids"].shape[1] == 64  # truncated at 64 incl. special tokens (spec item 31)
    row = ids["input_ids"][0][ids["attention_mask"][0].bool()].tolist()
    assert row[0] == enc.tokenizer.bos_token_id and row[-1] == enc.tokenizer.eos_token_id
    assert len(row) == 4  # <s> h i </s>: byte-level BPE without merges
    feats, mask = enc.encode(["hi", "word " * 100])
    assert mask.sum(1).tolist() == [4, 64] and torch.all(feats[0, 4:] == 0)
    strip = build_encoder("tiny-roberta-untrained", strip_nonverbal_tags=True)
    assert strip.preprocess(["hi [LAUGHTER]"])["attention_mask"].sum() == 4


def test_minilm_is_the_real_packaged_model():
    enc = build_encoder("minilm")
    assert enc.dim == 384 and enc.frozen
    feats, mask = enc.encode(["I am happy", "I am furious"])
    assert feats.shape[0] == 2 and mask[0].sum() == 5  # [CLS] i am happy [SEP]
    # real weights: the word "happy" differs between two sentences' contexts but sentences are close
    s = torch.nn.functional.cosine_similarity(feats[0][mask[0]].mean(0), feats[1][mask[1]].mean(0), dim=0)
    assert 0.2 < s < 0.99


def test_presets_are_deterministic_and_untrained_names():
    for name, spec in ENCODERS.items():
        if spec.untrained:
            assert name.endswith("-untrained")
            a, b = build_encoder(name), build_encoder(name)
            assert state_dict_sha256(a.model) == state_dict_sha256(b.model)
            assert a.identity() == b.identity()
    torch.manual_seed(123)  # the global RNG does not leak into the preset weights
    c = build_encoder("tiny-clip")
    assert c.identity()["weights_sha256"] == build_encoder("tiny-clip-untrained").identity()["weights_sha256"]


def test_identity_changes_with_output_settings_only():
    base = build_encoder("tiny-roberta-untrained").identity()
    assert build_encoder("tiny-roberta-untrained", max_tokens=32).identity() != base
    w = build_encoder("tiny-wavlm-untrained", frozen=True).identity()
    # a training-only regulariser leaves eval outputs (and the cache key) alone
    assert build_encoder("tiny-wavlm-untrained", frozen=True, layerdrop=0.0).identity() == w


def test_offline_real_encoder_error_names_model_and_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailableError) as ei:
        build_encoder("roberta")
    msg = str(ei.value)
    assert "FacebookAI/roberta-base" in msg and "name_or_path" in msg and "--roberta-path" in msg
    with pytest.raises(EncoderUnavailableError, match="/nonexistent/clip"):
        build_encoder("clip", name_or_path="/nonexistent/clip")
