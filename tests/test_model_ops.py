"""Dropout (spec §2 item 48), attention with dropout (eqs. 2, 9) and the FE encoder layer (eq. 1,
spec §2 item 21) against ``nn.TransformerEncoderLayer``."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from giamic import GIAMIC, GIAMICConfig
from giamic.models.feature_extractor import EncoderLayer
from giamic.models.ops import attend, dropout
from test_model_helpers import make_batch

# ---------------------------------------------------------------------------------------------- #
# ops.dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.3])
def test_dropout_keep_rate_and_scale(p):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 1.0  # no zeros of its own
    y = dropout(x, p, True)
    kept = y != 0
    n = x.numel()
    rate = float(kept.float().mean())
    # Binomial standard deviation sqrt(p (1-p) / n) < 5e-4; 6 sigma, plus the 2**-17 rounding of p.
    assert abs(rate - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n) + 1e-5
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-6, atol=0)
    # The two int16 halves of one int32 draw are independent: neighbours are kept independently.
    k = kept.flatten().float()
    both = float((k[0::2] * k[1::2]).mean())
    assert abs(both - (1 - p) ** 2) < 6 * math.sqrt((1 - p) ** 2 / (n / 2)) + 1e-4


def test_dropout_identity_when_not_training_or_p_zero():
    x = torch.randn(7, 5)
    assert dropout(x, 0.1, False) is x
    assert dropout(x, 0.0, True) is x
    assert dropout(x, 0.1, False, fast=False) is x


def test_dropout_is_deterministic_under_a_seed_and_odd_sizes_work():
    x = torch.randn(3, 5, 7)  # odd element count: the last int32 draw is half used
    torch.manual_seed(11)
    a = dropout(x, 0.2, True)
    torch.manual_seed(11)
    b = dropout(x, 0.2, True)
    assert torch.equal(a, b)
    c = dropout(x, 0.2, True)
    assert not torch.equal(a, c)


def test_dropout_gradient_flows_through_kept_positions_only():
    torch.manual_seed(3)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25, True)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y.detach() != 0
    assert 0 < int(kept.sum()) < x.numel()
    torch.testing.assert_close(x.grad, torch.where(kept, g / 0.75, 0), rtol=1e-6, atol=0)
    # A non-contiguous input takes the same path.
    xt = x.detach().t().requires_grad_()
    yt = dropout(xt, 0.25, True)
    yt.sum().backward()
    assert torch.equal(xt.grad != 0, yt.detach() != 0)


def test_dropout_fast_false_is_f_dropout():
    x = torch.randn(100, 10)
    torch.manual_seed(4)
    a = dropout(x, 0.3, True, fast=False)
    torch.manual_seed(4)
    assert torch.equal(a, F.dropout(x, 0.3, True))


# ---------------------------------------------------------------------------------------------- #
# attend with dropout: the explicit path is softmax, the same mask, @ V


@pytest.mark.parametrize("heads", [1, 4])
def test_attend_with_dropout_equals_explicit_formula(heads):
    g = torch.Generator().manual_seed(0)
    B, tq, tk, d = 2, 5, 7, 16
    q, k, v = (torch.randn(B, t, d, generator=g) for t in (tq, tk, tk))
    mask = torch.arange(tk)[None] < torch.tensor([[7], [3]])
    v_junk = torch.where(mask[..., None], v, 1e6)  # padded keys carry garbage values
    torch.manual_seed(9)
    out = attend(q, k, v_junk, mask, heads, 0.2)
    e = d // heads
    q4, k4, v4 = (x.view(B, -1, heads, e).transpose(1, 2) for x in (q, k, v))
    s = (q4 @ k4.transpose(-1, -2) / math.sqrt(e)).masked_fill(~mask[:, None, None, :], float("-inf"))
    torch.manual_seed(9)
    a = dropout(s.softmax(-1).reshape(B * heads, tq, tk), 0.2, True).view(B, heads, tq, tk)
    ref = (a @ v4).transpose(1, 2).reshape(B, tq, d)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Without dropout the fused kernel gives the plain attention.
    plain = (s.softmax(-1) @ v4).transpose(1, 2).reshape(B, tq, d)
    torch.testing.assert_close(attend(q, k, v_junk, mask, heads, 0.0), plain, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- #
# EncoderLayer == nn.TransformerEncoderLayer


def _pair(**overrides):
    cfg = GIAMICConfig.tiny(**overrides)
    torch.manual_seed(0)
    ours = EncoderLayer(cfg)
    torch.manual_seed(0)
    theirs = nn.TransformerEncoderLayer(
        cfg.d_model, cfg.fe_heads, cfg.fe_ffn, cfg.fe_dropout, activation=cfg.fe_activation,
        layer_norm_eps=cfg.layer_norm_eps, batch_first=True, norm_first=cfg.fe_norm_first)
    return ours, theirs


@pytest.mark.parametrize("overrides", [{}, dict(fe_norm_first=True), dict(fe_activation="relu")])
def test_encoder_layer_equals_torch_layer(overrides):
    ours, theirs = _pair(**overrides)
    # Same parameter names, shapes, and (same seed) values: the initialisation matches too.
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 32, generator=g)
    mask = torch.arange(9)[None] < torch.tensor([[9], [4], [1]])
    valid = mask[..., None]
    for train_p0 in (False, True):
        if train_p0:  # training mode with every dropout at p = 0
            ours, theirs = _pair(fe_dropout=0.0, **overrides)
            ours.train(), theirs.train()
        else:
            ours.eval(), theirs.eval()
        xo = x.clone().requires_grad_()
        xt = x.clone().requires_grad_()
        yo, yt = ours(xo, mask), theirs(xt, src_key_padding_mask=~mask)
        torch.testing.assert_close(torch.where(valid, yo, 0), torch.where(valid, yt, 0), rtol=1e-5, atol=1e-5)
        w = torch.randn(yo.shape, generator=g) * valid  # a loss on valid rows only
        (yo * w).sum().backward()
        (yt * w).sum().backward()
        torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-4, atol=1e-5)
        for (name, po), pt in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(po.grad, pt.grad, rtol=1e-4, atol=1e-5, msg=name)
    # Inference (no grad) takes torch's fused encoder kernel; valid rows still agree.
    ours.eval(), theirs.eval()
    with torch.no_grad():
        yo, yt = ours(x, mask), theirs(x, src_key_padding_mask=~mask)
    torch.testing.assert_close(torch.where(valid, yo, 0), torch.where(valid, yt, 0), rtol=1e-5, atol=1e-5)


def test_fast_dropout_flag_and_state_dict_keys():
    torch.manual_seed(0)
    model = GIAMIC(GIAMICConfig.tiny())
    keys = [k for k in model.state_dict() if k.startswith("fe.video.")]
    assert keys == [f"fe.video.layers.0.{k}" for k in (
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")]
    plain = GIAMIC(GIAMICConfig.tiny(fast_dropout=False))
    plain.load_state_dict(model.state_dict())
    f, m, y = make_batch(model.config, batch=3)
    model.train(), plain.train()
    torch.manual_seed(2)
    a = model(f, m, y).loss
    torch.manual_seed(2)
    b = plain(f, m, y).loss
    assert torch.isfinite(a) and torch.isfinite(b) and not torch.equal(a, b)  # different masks
    model.eval(), plain.eval()
    torch.testing.assert_close(model(f, m, y).loss, plain(f, m, y).loss, rtol=0, atol=0)


def test_mig_residual_ratio_equals_its_definition():
    # Spec §2 item 28: ||Z_M|| over valid rows / ||H_VST||, Z_M the upsampled eq. (11) conv output.
    torch.manual_seed(0)
    model = GIAMIC(GIAMICConfig.tiny()).eval()
    f, m, y = make_batch(model.config, batch=3)
    seen = {}
    for name, blk in model.mir.blocks.items():
        conv = blk.local_conv
        blk.local_conv = lambda hb, plan, conv=conv, name=name: seen.setdefault(name, (hb, conv(hb, plan)))[1]
    h_vst = {}
    # The MIR runs on packed valid rows (giamic.models.rows): unpack H_VST and H_M^b to [B,L,d].
    model.mir.register_forward_pre_hook(lambda mod, args: h_vst.update(h=args[1].rows.unpack(args[0]), rows=args[1].rows))
    out = model(f, m, y)
    L = h_vst["h"].shape[1]
    for name, (hb, _) in seen.items():
        conv = model.mir.blocks[name].conv_ds
        z = conv(h_vst["rows"].unpack(hb).transpose(1, 2)).transpose(1, 2)
        z = z.repeat_interleave(2, dim=1)[:, :L] * h_vst["rows"].mask[..., None]
        torch.testing.assert_close(out.mig_residual_ratio[name], z.norm() / h_vst["h"].norm(), rtol=1e-5, atol=0)
