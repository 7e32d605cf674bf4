"""MIC loss (eqs. 14-16, spec §9 item 7) and the joint objective (eqs. 18-19)."""
import math

import torch
import torch.nn.functional as F

from giamic.models.loss import joint_loss, kl_div, mic_loss, skl_div


def test_skl_matches_a_hand_computed_value():
    p = torch.tensor([0.5, 0.5]).log()
    q = torch.tensor([0.9, 0.1]).log()
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert abs(float(kl_div(p, q)) - kl_pq) < 1e-6 and abs(float(kl_div(q, p)) - kl_qp) < 1e-6
    assert abs(float(skl_div(p, q)) - 0.5 * (kl_pq + kl_qp)) < 1e-6
    assert abs(0.5 * (kl_pq + kl_qp) - 0.43945) < 1e-4


def test_skl_symmetric_zero_on_identical_and_equal_to_kl_div_path():
    g = torch.Generator().manual_seed(0)
    a = torch.log_softmax(torch.randn(3, 7, 10, generator=g), -1)
    b = torch.log_softmax(torch.randn(3, 7, 10, generator=g), -1)
    assert torch.equal(skl_div(a, b), skl_div(b, a))
    assert float(skl_div(a, a).abs().max()) == 0.0
    via_kl_div = 0.5 * (F.kl_div(b, a, log_target=True, reduction="none").sum(-1)
                        + F.kl_div(a, b, log_target=True, reduction="none").sum(-1))
    torch.testing.assert_close(skl_div(a, b), via_kl_div, rtol=1e-5, atol=1e-7)
    assert (skl_div(a, b) > 0).all()


def test_mic_loss_reduction_by_hand():
    g = torch.Generator().manual_seed(1)
    reps = [torch.randn(2, 4, 6, generator=g) for _ in range(3)]
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    loss = mic_loss(reps, mask, [(0, 1), (1, 2), (2, 0)])
    lp = [torch.log_softmax(r, -1) for r in reps]
    expect = 0.0
    for i, j in [(0, 1), (1, 2), (2, 0)]:
        per_utt = []
        for b in range(2):
            vals = [0.5 * float(kl_div(lp[i][b, t], lp[j][b, t]) + kl_div(lp[j][b, t], lp[i][b, t]))
                    for t in range(4) if mask[b, t]]
            per_utt.append(sum(vals) / len(vals))
        expect += sum(per_utt) / 2
    assert abs(float(loss) - expect) < 1e-5
    # Padded positions do not count; identical representations give zero.
    junk = [r.clone() for r in reps]
    for r in junk:
        r[~mask] = 1e4 * torch.randn(int((~mask).sum()), 6, generator=g)
    assert abs(float(mic_loss(junk, mask, [(0, 1), (1, 2), (2, 0)])) - expect) < 1e-5
    assert float(mic_loss([reps[0]] * 3, mask, [(0, 1), (1, 2), (2, 0)])) == 0.0
    # Temperature: tau scales the logits before the softmax.
    t2 = mic_loss([r * 0.5 for r in reps], mask, [(0, 1)])
    assert abs(float(mic_loss(reps, mask, [(0, 1)], tau=2.0)) - float(t2)) < 1e-6


def test_mic_loss_pooled_mode():
    g = torch.Generator().manual_seed(2)
    reps = [torch.randn(2, 5, 6, generator=g) for _ in range(2)]
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    pooled = [torch.stack([r[b][mask[b]].mean(0) for b in range(2)]) for r in reps]
    lp = [torch.log_softmax(x, -1) for x in pooled]
    expect = float(skl_div(lp[0], lp[1]).mean())
    assert abs(float(mic_loss(reps, mask, [(0, 1)], mode="pooled")) - expect) < 1e-6


def test_mic_loss_is_fp32_and_finite_under_bf16_autocast():
    g = torch.Generator().manual_seed(3)
    reps = [(torch.randn(2, 8, 16, generator=g) * 30).bfloat16().requires_grad_() for _ in range(3)]
    mask = torch.ones(2, 8, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mic_loss(reps, mask, [(0, 1), (1, 2), (2, 0)])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(r.grad.float()).all() for r in reps)


def test_joint_loss():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1])
    ce, total = joint_loss(logits, y, torch.tensor(3.0), gamma=0.1)
    e2, e1 = math.exp(2), math.exp(1)
    expect = 0.5 * (-math.log(e2 / (e2 + 3)) - math.log(1 / (e1 + 3)))
    assert abs(float(ce) - expect) < 1e-6 and abs(float(total) - (expect + 0.3)) < 1e-6
