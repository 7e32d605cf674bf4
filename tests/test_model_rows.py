"""Packed rows (``giamic.models.rows``): packing, per-sample sums, the joined tri-modal rows, the
per-sample attention with dropout and its gradients, the stride-2 convolution over the fixed slot
layout, and ``GIAMIC.forward_backward`` (micro-batches with the whole batch's gradient)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_model_helpers import make_batch, tiny_model

from giamic.models import rows as rows_mod
from giamic.models.modeling import balanced_parts, micro_batch_plan
from giamic.models.ops import attend, keep_mask, split_linear
from giamic.models.reference import reference_forward
from giamic.models.rows import Concat, Rows, attention, conv_plan, conv_rows

# Masks with holes (not only right padding), an empty sample and a full one.
MASK = torch.tensor([[1, 1, 0, 1, 0, 0, 1],
                     [0, 0, 0, 0, 0, 0, 0],
                     [1, 1, 1, 1, 1, 1, 1],
                     [0, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)



@pytest.fixture(autouse=True)
def per_sample_attention(monkeypatch):
    """The per-sample attention route for every sequence length here (short samples take the
    padded route by default; test_short_samples_take_the_padded_route checks that choice)."""
    monkeypatch.setattr(rows_mod, "PADDED_ATTENTION_MAX_ROWS", 0)


def test_short_samples_take_the_padded_route(monkeypatch):
    monkeypatch.setattr(rows_mod, "PADDED_ATTENTION_MAX_ROWS", 16)
    calls = []
    real = rows_mod._PerSampleAttention.apply
    monkeypatch.setattr(rows_mod._PerSampleAttention, "apply", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(4)
    d = 8
    for tq, tk, expect in ((1, 1, 0), (16, 16, 0), (17, 4, 1)):
        qr, kr = Rows.of(torch.ones(3, tq, dtype=torch.bool)), Rows.of(torch.ones(3, tk, dtype=torch.bool))
        q = torch.randn(qr.n, d, generator=g, requires_grad=True)
        k, v = torch.randn(kr.n, d, generator=g), torch.randn(kr.n, d, generator=g)
        calls.clear()
        out = attention(q, k, v, qr, kr, 2, 0.0)
        assert len(calls) == expect, (tq, tk)
        ref = attend(qr.unpack(q), kr.unpack(k), kr.unpack(v), kr.mask, 2, 0.0)
        torch.testing.assert_close(out, qr.pack(ref), rtol=1e-5, atol=1e-6)

def test_pack_unpack_sum_mean_expand():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 3, generator=g)
    r = Rows.of(MASK)
    assert r.n == 13 and r.spans == ((0, 4), (4, 0), (4, 7), (11, 2))
    assert r.sample.tolist() == [0] * 4 + [2] * 7 + [3] * 2
    assert r.positions().tolist() == [0, 1, 3, 6, 0, 1, 2, 3, 4, 5, 6, 1, 2]
    y = r.pack(x)
    torch.testing.assert_close(y, x[MASK], rtol=0, atol=0)
    torch.testing.assert_close(r.unpack(y), torch.where(MASK[..., None], x, 0), rtol=0, atol=0)
    torch.testing.assert_close(r.sum(y), torch.where(MASK[..., None], x, 0).sum(1), rtol=0, atol=1e-6)
    count = MASK.sum(1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(r.mean(y), torch.where(MASK[..., None], x, 0).sum(1) / count, rtol=0, atol=1e-6)
    v = torch.randn(4, 3, generator=g)
    torch.testing.assert_close(r.expand(v), v[:, None].expand(4, 7, 3)[MASK], rtol=0, atol=0)
    s = torch.randn(r.n, generator=g)  # one value per row
    torch.testing.assert_close(r.sum(s), torch.zeros(4).index_add(0, r.sample, s), rtol=0, atol=1e-6)


def test_concat_joins_in_the_slot_layout_with_its_gradient():
    g = torch.Generator().manual_seed(1)
    masks = [MASK, MASK[:, :3], torch.tensor([[1, 1], [1, 0], [0, 0], [0, 1]], dtype=torch.bool)]
    xs = [torch.randn(4, m.shape[1], 2, generator=g) for m in masks]
    parts = [Rows.of(m) for m in masks]
    vst = Concat(parts)
    packed = [r.pack(x).requires_grad_() for r, x in zip(parts, xs)]
    joined = vst.join(packed)
    padded = torch.cat([torch.where(m[..., None], x, 0) for m, x in zip(masks, xs)], 1)
    torch.testing.assert_close(vst.rows.unpack(joined), padded, rtol=0, atol=0)
    assert vst.rows.spans[:2] == ((0, 4 + 2 + 2), (8, 0 + 0 + 1))  # sample 1: its one text row
    w = torch.randn(joined.shape, generator=g)
    (joined * w).sum().backward()
    # Gradient of each part = the weights at its rows.
    back = vst.rows.unpack(w)
    slot = 0
    for m, r, p in zip(masks, parts, packed):
        torch.testing.assert_close(p.grad, r.pack(back[:, slot:slot + m.shape[1]]), rtol=0, atol=0)
        slot += m.shape[1]


def _explicit_attention(q, k, v, qm, km, heads, keep, p):
    """Per-sample attention written with autograd from padded tensors, dropout masks ``keep``."""
    B, _, d = q.shape
    e = d // heads
    outs, at = [], 0
    for b in range(B):
        qi = q[b][qm[b]].view(-1, heads, e).transpose(0, 1)
        ki = k[b][km[b]].view(-1, heads, e).transpose(0, 1)
        vi = v[b][km[b]].view(-1, heads, e).transpose(0, 1)
        a = (qi @ ki.transpose(1, 2) / math.sqrt(e)).softmax(-1)
        if p > 0:
            kp = keep[at:at + a.numel()].view(a.shape)
            at += a.numel()
            a = torch.where(kp, a, 0) / (1 - p)
        outs.append((a @ vi).transpose(0, 1).reshape(-1, d))
    return torch.cat(outs)


@pytest.mark.parametrize("heads, p", [(1, 0.0), (1, 0.3), (4, 0.2)])
def test_per_sample_attention_values_and_gradients(heads, p):
    g = torch.Generator().manual_seed(2)
    B, tq, tk, d = 3, 5, 7, 16
    qm = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    km = torch.tensor([[1] * 7, [0, 1, 0, 0, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    q, k, v = (torch.randn(B, t, d, generator=g) for t in (tq, tk, tk))
    qr, kr = Rows.of(qm), Rows.of(km)
    leaves = [qr.pack(q).requires_grad_(), kr.pack(k).requires_grad_(), kr.pack(v).requires_grad_()]
    torch.manual_seed(5)
    out = attention(*leaves, qr, kr, heads, p)
    sizes = [heads * int(qm[b].sum()) * int(km[b].sum()) for b in range(B)]
    torch.manual_seed(5)
    keep = keep_mask((sum(sizes),), p, q.device) if p > 0 else None  # the draw the tiles split
    ref_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    qp, kp_, vp = qr.unpack(ref_leaves[0]), kr.unpack(ref_leaves[1]), kr.unpack(ref_leaves[2])
    ref = _explicit_attention(qp, kp_, vp, qm, km, heads, keep, p)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    if p == 0:
        # Equal to the padded attention with a key padding mask at the valid query rows, and
        # without autograd (the fused kernel per sample) too.
        torch.testing.assert_close(out, qr.pack(attend(q, k, v, km, heads, 0.0)), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(attention(*leaves, qr, kr, heads, 0.0), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel, stride", [(3, 2), (5, 1), (3, 1)])
def test_conv_rows_equals_padded_convolution(kernel, stride):
    g = torch.Generator().manual_seed(3)
    # Slots of odd and even length, holes, an empty sample part: taps cross slot boundaries.
    masks = [MASK[:, :5], MASK, torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)]
    vst = Concat([Rows.of(m) for m in masks])
    rows = vst.rows
    d_in, d_out = 4, 3
    x = torch.randn(rows.n, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(d_out, d_in, kernel, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(d_out, generator=g, dtype=torch.float64, requires_grad=True)
    plan = conv_plan(rows, kernel, stride)
    out = conv_rows(x, plan, weight, bias)
    L = rows.time
    z = F.conv1d(rows.unpack(x).transpose(1, 2), weight, bias, stride=stride, padding=kernel // 2).transpose(1, 2)
    if stride == 2:
        z = z.repeat_interleave(2, dim=1)[:, :L]
    torch.testing.assert_close(out, rows.pack(z), rtol=1e-12, atol=1e-12)
    torch.autograd.gradcheck(lambda a, w, c: conv_rows(a, plan, w, c), (x, weight, bias))


def test_padded_attention_route_equals_literal_spec(monkeypatch):
    # Off CPU the attention pads the rows to the longest sample for one batched kernel; check
    # that route here, values and gradients.
    monkeypatch.setattr(rows_mod, "PER_SAMPLE_ATTENTION_DEVICES", set())
    torch.manual_seed(0)
    model = tiny_model("full", n_heads=2).eval()
    f, m, y = make_batch(model.config, batch=3)
    m["speech"][0, 3] = False
    out = model(f, m, y)
    ref = reference_forward(model, f, m)
    torch.testing.assert_close(out.logits, ref["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss_mir, ref["loss_mir"], rtol=0, atol=1e-6)
    params = list(model.parameters())
    grads = torch.autograd.grad(out.loss, params)
    ref_grads = torch.autograd.grad(F.cross_entropy(ref["logits"], y) + 0.1 * ref["loss_mir"], params)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6, msg=name)


def test_no_grad_path_equals_literal_spec():
    torch.manual_seed(0)
    model = tiny_model("full").eval()
    f, m, y = make_batch(model.config, batch=3)
    with torch.no_grad():
        out = model(f, m, y)
        ref = reference_forward(model, f, m)
    torch.testing.assert_close(out.logits, ref["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss_mir, ref["loss_mir"], rtol=0, atol=1e-6)


def test_forward_backward_in_micro_batches_gives_the_whole_batch_gradient():
    torch.manual_seed(0)
    model = tiny_model("full").eval()  # no dropout: the two computations see the same numbers
    f, m, y = make_batch(model.config, batch=5)
    out = model(f, m, y)
    (0.5 * out.loss).backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    acc = model.forward_backward(f, m, y, micro_batch_size=2, loss_weight=0.5)  # 2 + 2 + 1 samples
    for (name, p), w in zip(model.named_parameters(), whole):
        torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-7, msg=name)
    torch.testing.assert_close(acc.logits, out.logits.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(acc.loss, out.loss.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(acc.loss_mir, out.loss_mir.detach(), rtol=0, atol=1e-6)
    for k in out.gates:
        torch.testing.assert_close(acc.gates[k], out.gates[k].detach(), rtol=0, atol=1e-6)
    assert not acc.loss.requires_grad and set(acc.mig_residual_ratio) == set(out.mig_residual_ratio)
    # One micro-batch: the plain step, ratio included.
    model.zero_grad(set_to_none=True)
    one = model.forward_backward(f, m, y, micro_batch_size=0)
    torch.testing.assert_close(one.mig_residual_ratio["video"], out.mig_residual_ratio["video"], rtol=0, atol=0)


@pytest.mark.parametrize("variant, overrides", [
    ("full", dict(ds_mode="stride1", ds_kernel=5)), ("full", dict(gate_pool="local")),
    ("full", dict(mask_source="scatter_msr", n_heads=2)), ("full", dict(mask_source="full_msr")),
    ("full", dict(mask_source="share", prelu_per_channel=True)), ("full", dict(mig_qkv_proj=False, mic_mode="pooled")),
    ("full", dict(fe_posenc=("video",), fe_norm_first=True)), ("wo_msr", {}), ("VT", {}),
])
def test_fast_path_gradients_equal_literal_spec_for_flags(variant, overrides):
    # Holes in the masks and an empty text modality (the guard) as well.
    torch.manual_seed(0)
    model = tiny_model(variant, **overrides).eval()
    valid = {"video": [6, 2, 5], "speech": [9, 3, 1], "text": [5, 1, 2]}
    f, m, y = make_batch(model.config, valid=valid, batch=3)
    m["video"][0, 2] = False
    if "text" in m:
        m["text"][1] = False
    out = model(f, m, y)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    ref = reference_forward(model, f, m)
    torch.testing.assert_close(out.logits, ref["logits"], rtol=0, atol=1e-5)
    ref_loss = F.cross_entropy(ref["logits"], y) + model.config.gamma * ref["loss_mir"]
    ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        assert (g is None) == (r is None), name
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6, msg=name)


def test_split_linear_values_and_gradients():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    outs = split_linear(x, [w1, w2], [b1, b2], chunks=2)  # four [5,3] blocks
    assert [tuple(o.shape) for o in outs] == [(5, 3)] * 4
    full = torch.cat([F.linear(x, w1, b1), F.linear(x, w2, b2)], 1)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=1e-12)
    torch.autograd.gradcheck(lambda *a: torch.cat(split_linear(a[0], [a[1], a[3]], [a[2], a[4]], 2), 1),
                             (x, w1, b1, w2, b2))
    # Outputs that get no gradient (unused blocks) give zero rows of the weight's gradient.
    torch.autograd.gradcheck(lambda *a: split_linear(a[0], [a[1], a[3]], [a[2], a[4]], 2)[1].sum(),
                             (x, w1, b1, w2, b2))


def test_micro_batch_plan_keeps_row_poor_batches_whole():
    # 32 utterances on 2 threads: two micro-batches of 16 when each gets >= 128 rows of every
    # modality; one pass when a modality has one row per utterance (a per-clip vector)
    assert micro_batch_plan(32, "cpu", None, 2, True, rows=32 * 180) == (16, 2)
    assert micro_batch_plan(32, "cpu", None, 2, True, rows=256) == (16, 2)
    assert micro_batch_plan(32, "cpu", None, 2, True, rows=255) == (32, 1)
    assert micro_batch_plan(32, "cpu", None, 2, True, rows=32) == (32, 1)
    # an explicit size is obeyed; a GPU runs the whole batch
    assert micro_batch_plan(32, "cpu", 8, 2, True, rows=32) == (8, 2)
    assert micro_batch_plan(32, "cuda", None, None, True, rows=32 * 180) == (32, 1)


def test_balanced_parts_by_valid_rows():
    # valid rows per utterance 543, 426, 379, 411, 457, 361, 385, 437, two groups of four: longest
    # first into the lighter group gives {0, 1, 5, 6} (1715 rows) and {2, 3, 4, 7} (1684 rows),
    # where contiguous halves would hold 1759 and 1640.
    lengths = torch.tensor([543, 426, 379, 411, 457, 361, 385, 437])
    masks = {"video": torch.arange(600)[None] < lengths[:, None]}
    parts = balanced_parts(masks, 2, 4)
    assert [p.tolist() for p in parts] == [[0, 1, 5, 6], [2, 3, 4, 7]]
    # two modalities add up; a group never exceeds its size; every utterance once
    masks["text"] = torch.ones(8, 10, dtype=torch.bool)
    parts = balanced_parts(masks, 3, 3)
    assert sorted(torch.cat(parts).tolist()) == list(range(8)) and max(len(p) for p in parts) <= 3


def test_forward_backward_on_threads_equals_one_thread_and_is_reproducible():
    torch.manual_seed(0)
    model = tiny_model("full").eval()
    f, m, y = make_batch(model.config, batch=5)
    model.forward_backward(f, m, y, micro_batch_size=2, workers=1)
    one = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    threads = torch.get_num_threads()
    out = model.forward_backward(f, m, y, micro_batch_size=2, workers=2)  # 2 + 2 + 1, two at a time
    for (name, p), g in zip(model.named_parameters(), one):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7, msg=name)
    assert torch.get_num_threads() == threads and out.logits.shape == (5, 4)  # restored
    # the micro-batches were grouped by length, but the outputs come back in batch order
    with torch.no_grad():
        plain = model(f, m, y)
    torch.testing.assert_close(out.logits, plain.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pooled, plain.pooled, rtol=0, atol=1e-5)
    for k in plain.gates:
        torch.testing.assert_close(out.gates[k], plain.gates[k], rtol=0, atol=1e-6)
    # With dropout: the same seed gives the same gradient whichever thread runs first, and the
    # gradient adds to .grad like backward() does.
    model.train()
    runs = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        model.forward_backward(f, m, y, micro_batch_size=1, workers=3)
        runs.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    torch.manual_seed(7)
    model.forward_backward(f, m, y, micro_batch_size=1, workers=3)
    assert all(torch.allclose(p.grad, 2 * a) for p, a in zip(model.parameters(), runs[0]))
