"""GIAMIC fusion model: shapes, parameter counts, padding exactness, gates, pooling, ablations,
gradients, precision, determinism, save/load, overfitting (spec §9 items 4-8, 10)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from giamic import GIAMIC, GIAMICConfig, GIAMICOutput
from giamic.models.reference import reference_forward
from giamic.models.variants import VARIANTS
from test_model_helpers import make_batch, tiny_model, with_garbage

# ---------------------------------------------------------------------------------------------- #
# Parameter counts (spec §1.7), on the meta device: no memory, no init cost.


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_model(variant="full", **kw) -> GIAMIC:
    with torch.device("meta"):
        return GIAMIC(GIAMICConfig.from_variant(variant, **kw))


def test_parameter_count_at_paper_defaults():
    d, ffn = 768, 3072
    lin = lambda i, o: i * o + o  # noqa: E731
    fe = lin(d, 3 * d) + lin(d, d) + lin(d, ffn) + lin(ffn, d) + 2 * 2 * d  # attn in/out, FFN, 2 LN
    direction = 3 * lin(d, d) + 2 * d + lin(d, d)  # W_Q/W_K/W_V, LN_g, W_g
    mig = 3 * lin(d, d) + lin(2 * d, d) + 1 + (d * d * 3 + d) + 2 * d  # QKV, mask conv, PReLU, conv_ds, LN
    speech, clf = lin(1024, d), lin(d, 4)
    assert (fe, direction, mig, speech, clf) == (7_087_872, 2_363_904, 4_723_969, 787_200, 3_076)

    model = _meta_model()
    assert _count(model.fe["video"]) == fe and len(model.fe) == 3
    assert _count(model.input_proj["speech"]) == speech and list(model.input_proj) == ["speech"]
    units = [u for b in model.msr.blocks.values() for u in b.directions.values()]
    assert len(units) == 6 and all(_count(u) == direction for u in units)
    assert sorted(u.name for u in units) == sorted(["V<-S", "S<-V", "S<-T", "T<-S", "T<-V", "V<-T"])
    assert len(model.mir.blocks) == 3 and all(_count(b) == mig for b in model.mir.blocks.values())
    assert _count(model.classifier) == clf
    assert model.num_parameters() == 3 * fe + 6 * direction + 3 * mig + speech + clf == 50_409_223


def test_parameter_counts_of_ablations_and_sharing_flags():
    total = 50_409_223
    assert _meta_model("wo_msr").num_parameters() == total - 6 * 2_363_904
    assert _meta_model("wo_mir").num_parameters() == total - 3 * 4_723_969
    assert _meta_model("wo_mic").num_parameters() == total
    # One W_Q/W_K/W_V per block instead of per direction saves 3 x 1,771,776 (spec §1.7).
    assert _meta_model(gia_share_qkv_within_block=True).num_parameters() == total - 3 * 1_771_776
    assert _meta_model(mig_shared=True).num_parameters() == total - 2 * 4_723_969
    assert _meta_model("baseline").num_parameters() == 3 * 7_087_872 + 787_200 + 3_076
    assert _meta_model("S").num_parameters() == 7_087_872 + 787_200 + 3_076


def test_ablation_wiring():
    keys = {v: set(tiny_model(v).state_dict()) for v in ("full", "wo_msr", "wo_mir", "wo_mic", "baseline", "T", "VS")}
    assert keys["wo_mic"] == keys["full"]
    assert any(k.startswith("msr.") for k in keys["full"]) and any(k.startswith("mir.") for k in keys["full"])
    assert not any(k.startswith("msr.") for k in keys["wo_msr"]) and any(k.startswith("mir.") for k in keys["wo_msr"])
    assert not any(k.startswith("mir.") for k in keys["wo_mir"]) and any(k.startswith("msr.") for k in keys["wo_mir"])
    for v in ("baseline", "T"):
        assert {k.split(".")[0] for k in keys[v]} <= {"fe", "input_proj", "classifier"}
    assert {k.split(".")[1] for k in keys["T"] if k.startswith("fe.")} == {"text"}
    assert {k.split(".")[2] for k in keys["VS"] if k.startswith("msr.blocks.")} == {"VS"}
    assert {k.split(".")[2] for k in keys["VS"] if k.startswith("mir.blocks.")} == {"video", "speech"}

    torch.manual_seed(0)
    full = tiny_model("full").eval()
    wo_mic = GIAMIC(GIAMICConfig.tiny("wo_mic")).eval()
    wo_mic.load_state_dict(full.state_dict())
    f, m, y = make_batch(full.config)
    a, b = full(f, m, y), wo_mic(f, m, y)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    assert float(a.loss_mir.detach()) > 0 and torch.equal(a.loss_mir, b.loss_mir)
    torch.testing.assert_close(a.loss, a.loss_ce + 0.1 * a.loss_mir)
    torch.testing.assert_close(b.loss, b.loss_ce, rtol=0, atol=0)  # gamma = 0: only the weight differs

    out = tiny_model("wo_mir")(f, m, y)
    assert float(out.loss_mir) == 0.0 and out.invariant == {} and out.mig_residual_ratio == {}
    assert len(out.gates) == 6
    out = tiny_model("wo_msr")(f, m, y)
    assert out.gates == {} and set(out.invariant) == {"video", "speech", "text"}


# ---------------------------------------------------------------------------------------------- #
# Shapes (spec §1.6 / §9 item 4)


def test_shapes_at_paper_dims_batch_2():
    torch.manual_seed(0)
    cfg = GIAMICConfig()
    model = GIAMIC(cfg).eval()
    lengths = {"video": 180, "speech": 299, "text": 64}
    f, m, y = make_batch(cfg, lengths=lengths, valid={"video": [180, 40], "speech": [299, 100], "text": [64, 9]})
    seen = {}
    model.msr.register_forward_hook(lambda mod, inp, out: seen.update(msr_in=inp, msr=out))
    model.mir.register_forward_hook(lambda mod, inp, out: seen.update(mir_in=inp, mir=out))
    with torch.no_grad():
        out = model(f, m, y)
    assert isinstance(out, GIAMICOutput)
    assert out.logits.shape == (2, 4) and out.pooled.shape == (2, 768)
    assert out.loss_mir.shape == () and out.loss.shape == () and out.loss_ce.shape == ()
    # The modules compute on packed valid rows (giamic.models.rows); unpacked, they have the shapes
    # of docs/model.md.
    msr, gates = seen["msr"]
    rows = seen["msr_in"][1]
    assert {k: tuple(v.shape) for k, v in msr.items()} == {"video": (220, 768), "speech": (399, 768), "text": (73, 768)}
    assert {k: tuple(rows[k].unpack(v).shape) for k, v in msr.items()} == {
        "video": (2, 180, 768), "speech": (2, 299, 768), "text": (2, 64, 768)}
    h_vst, vst = seen["mir_in"][:2]
    assert h_vst.shape == (692, 768) and vst.rows.unpack(h_vst).shape == (2, 543, 768)  # H_VST
    assert all(vst.rows.unpack(v).shape == (2, 543, 768) for v in seen["mir"][0].values())  # H_M^MIG
    assert set(out.gates) == {"V<-S", "S<-V", "S<-T", "T<-S", "T<-V", "V<-T"}
    assert all(g.shape == (2, 768) and ((g > 0) & (g < 1)).all() for g in out.gates.values())
    assert all(v.shape == (2, 768) for v in out.invariant.values())
    assert all(r.shape == () and 0 < float(r) < 10 for r in out.mig_residual_ratio.values())
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_runs_and_backpropagates(variant):
    model = tiny_model(variant).train()
    f, m, y = make_batch(model.config, batch=3)
    out = model(f, m, y)
    assert out.logits.shape == (3, 4) and out.pooled.shape == (3, 32)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------- #
# Padding (spec §9 item 5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padding_is_exact_for_every_variant(variant):
    torch.manual_seed(0)
    model = tiny_model(variant, prelu_per_channel=True).eval()
    f, m, y = make_batch(model.config, batch=3)
    a = model(f, m, y)
    b = model(with_garbage(f, m), m, y)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.loss_mir, a.loss_mir, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-6)


@pytest.mark.parametrize("overrides", [
    dict(mask_source="scatter_msr"), dict(mask_source="full_msr"), dict(mask_source="share"),
    dict(ds_mode="stride1", ds_kernel=5), dict(gate_pool="local"), dict(n_heads=4), dict(mig_qkv_proj=False),
    dict(mic_mode="pooled"), dict(fe_posenc=("video", "text")), dict(fe_norm_first=True, fe_layers=2),
])
def test_padding_is_exact_for_every_flag(overrides):
    torch.manual_seed(0)
    model = tiny_model("full", **overrides).eval()
    f, m, y = make_batch(model.config, batch=3)
    a, b = model(f, m, y), model(with_garbage(f, m), m, y)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.loss_mir, a.loss_mir, rtol=0, atol=1e-6)


def test_padding_is_exact_in_training_mode_with_dropout():
    model = tiny_model("full").train()
    f, m, y = make_batch(model.config, batch=3)
    torch.manual_seed(5)
    a = model(f, m, y)
    torch.manual_seed(5)
    b = model(with_garbage(f, m), m, y)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-6)


def test_single_valid_position():
    model = tiny_model("full").eval()
    f, m, y = make_batch(model.config, valid={"video": [1, 6], "speech": [1, 1], "text": [1, 5]})
    out = model(f, m, y)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    # One valid key: each GIA attention reads exactly that row, whatever the garbage elsewhere.
    out2 = model(with_garbage(f, m), m, y)
    torch.testing.assert_close(out2.logits, out.logits, rtol=0, atol=1e-6)
    model.train()
    model(f, m, y).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_empty_modality_guard_and_error():
    model = tiny_model("full").eval()
    f, m, y = make_batch(model.config)
    m_empty = dict(m, text=torch.zeros_like(m["text"]))
    out = model(f, m_empty, y)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    # The guard (spec §0) equals position 0 marked valid with a zero vector.
    f0 = dict(f, text=torch.zeros_like(f["text"]))
    m0 = dict(m, text=torch.zeros_like(m["text"]))
    m0["text"][:, 0] = True
    torch.testing.assert_close(model(f0, m0, y).logits, out.logits, rtol=0, atol=0)

    strict = GIAMIC(GIAMICConfig.tiny(empty_modality="error"))
    with pytest.raises(ValueError, match="no valid position in 'text'"):
        strict(f, m_empty, y)


def test_input_validation_messages():
    model = tiny_model("full")
    f, m, y = make_batch(model.config)
    with pytest.raises(ValueError, match="missing \\['text'\\]"):
        model({k: v for k, v in f.items() if k != "text"}, m)
    with pytest.raises(ValueError, match="unexpected \\['audio'\\]"):
        model(dict(f, audio=f["video"]), dict(m, audio=m["video"]))
    with pytest.raises(ValueError, match="width 7, expected input_dims\\['speech'\\]=40"):
        model(dict(f, speech=f["speech"][..., :7]), m)
    with pytest.raises(ValueError, match="must be a bool tensor"):
        model(f, dict(m, video=m["video"].float()))
    with pytest.raises(ValueError, match="masks\\['text'\\] has shape"):
        model(f, dict(m, text=m["text"][:, :-1]))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(dict(f, text=f["text"][:1]), dict(m, text=m["text"][:1]))
    with pytest.raises(ValueError, match="labels must be an int64"):
        model(f, m, y.float())
    with pytest.raises(ValueError, match="labels must lie in"):
        model(f, m, torch.tensor([0, 4]))


# ---------------------------------------------------------------------------------------------- #
# Exactness of the fast path against the literal spec formulation


@pytest.mark.parametrize("variant, overrides", [
    ("full", {}), ("full", dict(mask_source="scatter_msr")), ("full", dict(mask_source="full_msr")),
    ("full", dict(mask_source="share")), ("full", dict(ds_mode="stride1")), ("full", dict(gate_pool="local")),
    ("full", dict(n_heads=2, prelu_per_channel=True)), ("full", dict(mig_qkv_proj=False, mic_mode="pooled")),
    ("full", dict(gia_share_qkv_within_block=True, mig_shared=True)), ("wo_msr", {}), ("wo_mir", {}),
    ("VT", {}), ("VS", {}),
])
def test_fast_path_equals_literal_spec(variant, overrides):
    torch.manual_seed(0)
    model = tiny_model(variant, **overrides).eval()
    f, m, y = make_batch(model.config, batch=3)
    out = model(f, m, y)
    ref = reference_forward(model, f, m)
    torch.testing.assert_close(out.logits, ref["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss_mir, ref["loss_mir"], rtol=0, atol=1e-6)
    for k, g in out.gates.items():
        torch.testing.assert_close(g, ref["gates"][k], rtol=0, atol=1e-6)


def test_fast_path_gradients_equal_literal_spec():
    torch.manual_seed(0)
    model = tiny_model("full").eval()
    f, m, y = make_batch(model.config, batch=3)
    out = model(f, m, y)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    ref = reference_forward(model, f, m)
    ref_loss = F.cross_entropy(ref["logits"], y) + 0.1 * ref["loss_mir"]
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- #
# Gates (spec §9 item 6), pooling identity (item 8), residual ratio (spec §2 item 28)


def test_gate_limits():
    torch.manual_seed(0)
    model = tiny_model("full").eval()
    f, m, _ = make_batch(model.config)
    h, mk = model.embed(f, m)
    units = [u for b in model.msr.blocks.values() for u in b.directions.values()]

    def run(bias):
        with torch.no_grad():
            for u in units:
                u.gate.weight.zero_()
                u.gate.bias.fill_(bias)
            return model.msr(h, mk)

    msr, gates = run(-60.0)  # G -> 0: every direction returns H_A, so H_A^MSR = 2 H_A (eq. 6)
    assert all(float(g.max()) < 1e-20 for g in gates.values())
    for x in model.config.modalities:
        torch.testing.assert_close(msr[x], 2 * h[x], rtol=0, atol=1e-6)

    msr, gates = run(60.0)  # G -> 1: every direction returns H_{A->B}
    assert all(float(g.min()) == 1.0 for g in gates.values())
    expect = {x: 0 for x in model.config.modalities}
    for blk in model.msr.blocks.values():
        for u in blk.directions.values():
            qkv, a, b = blk.projections(u), u.query, u.key
            s = qkv.q(h[a]) @ qkv.k(h[b]).transpose(1, 2) / math.sqrt(32)
            p = s.masked_fill(~mk[b][:, None, :], float("-inf")).softmax(-1)
            expect[a] = expect[a] + (p @ qkv.v(h[b])) * mk[a][..., None]
    for x in expect:
        torch.testing.assert_close(msr[x], expect[x], rtol=0, atol=1e-5)


def test_pooling_identity():
    torch.manual_seed(0)
    model = tiny_model("full").eval()
    f, m, y = make_batch(model.config, batch=3)
    out = model(f, m, y)
    ref = reference_forward(model, f, m)
    mu = torch.cat([m[x] for x in model.config.modalities], 1)

    def mmean(x):
        return (x * mu[..., None]).sum(1) / mu.sum(1, keepdim=True)

    h_msr = torch.cat([ref["msr"][x] for x in model.config.modalities], 1)
    z = 0.25 * mmean(h_msr) + 0.75 * sum(mmean(ref["mig"][x]) for x in ref["mig"]) / 3
    torch.testing.assert_close(out.pooled, z, rtol=0, atol=1e-6)
    for x, inv in out.invariant.items():
        torch.testing.assert_close(inv, mmean(ref["mig"][x]), rtol=0, atol=1e-6)


def test_zero_local_conv_collapses_mic_loss():
    # Spec §2 item 28: with Z_M = 0 and untrained LayerNorms the three MIG outputs coincide.
    model = tiny_model("full").eval()
    f, m, y = make_batch(model.config)
    with torch.no_grad():
        assert float(model(f, m, y).loss_mir) > 1e-4
    with torch.no_grad():
        for blk in model.mir.blocks.values():
            blk.conv_ds.weight.zero_()
            blk.conv_ds.bias.zero_()
        out = model(f, m, y)
    assert float(out.loss_mir) < 1e-10
    assert all(float(r) == 0.0 for r in out.mig_residual_ratio.values())


# ---------------------------------------------------------------------------------------------- #
# Training behaviour


@pytest.mark.parametrize("variant", ["full", "wo_msr"])
def test_gradient_reaches_every_parameter(variant):
    torch.manual_seed(0)
    model = tiny_model(variant, prelu_per_channel=True).train()
    f, m, y = make_batch(model.config, batch=4)
    model(f, m, y).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert dead == []


def test_finite_under_bf16_autocast():
    model = tiny_model("full").train()
    f, m, y = make_batch(model.config, batch=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(f, m, y)
    assert out.loss_mir.dtype == torch.float32 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.logits.float()).all() and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    ref = tiny_model("full")
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert abs(float(out.loss_ce) - float(ref.eval()(f, m, y).loss_ce)) < 0.5


def test_deterministic_under_a_fixed_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = tiny_model("full").train()
        f, m, y = make_batch(model.config)
        out = model(f, m, y)
        out.loss.backward()
        outs.append((out.loss.detach(), model.classifier.weight.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_overfit_a_tiny_batch():
    torch.manual_seed(0)
    model = tiny_model("full").train()
    f, m, y = make_batch(model.config, batch=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        out = model(f, m, y)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss_ce.detach()))
    assert losses[-1] < 0.2 * losses[0]
    assert (model.eval()(f, m).logits.argmax(-1) == y).all()


# ---------------------------------------------------------------------------------------------- #
# Save / load


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("VT", gate_pool="local").eval()
    f, m, y = make_batch(model.config)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = GIAMIC.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(f, m).logits, model(f, m).logits, rtol=0, atol=0)


def test_load_directory_written_before_a_config_field_existed(tmp_path):
    """A directory from an earlier version (its config lacks a later field) loads with the default."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    model = tiny_model("full").eval()
    model.save_pretrained(tmp_path / "m")
    cfg_file, w_file = tmp_path / "m" / "config.json", tmp_path / "m" / "model.safetensors"
    old = json.loads(cfg_file.read_text())
    old.pop("fast_dropout")
    cfg_file.write_text(json.dumps(old))
    with safe_open(str(w_file), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(w_file), metadata={"giamic_config": json.dumps(old)})
    loaded = GIAMIC.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    # A real difference is still refused.
    old["gamma"] = 0.5
    save_file(state, str(w_file), metadata={"giamic_config": json.dumps(old)})
    with pytest.raises(ValueError, match=r"fields \['gamma'\] differ"):
        GIAMIC.from_pretrained(tmp_path / "m")


def test_load_rejects_mismatches(tmp_path):
    tiny_model("full").save_pretrained(tmp_path / "a")
    tiny_model("wo_mir").save_pretrained(tmp_path / "b")
    # Weights of one model with the config of another: caught by the stored config.
    (tmp_path / "a" / "config.json").write_text((tmp_path / "b" / "config.json").read_text())
    with pytest.raises(ValueError, match="does not match the config stored"):
        GIAMIC.from_pretrained(tmp_path / "a")
    # A weights file without stored config and with missing keys: strict key check.
    from safetensors.torch import save_file

    state = tiny_model("wo_mir").state_dict()
    state.pop("classifier.bias")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b" / "model.safetensors"))
    with pytest.raises(ValueError, match="missing keys \\['classifier.bias'\\]"):
        GIAMIC.from_pretrained(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        GIAMIC.from_pretrained(tmp_path / "nowhere")
