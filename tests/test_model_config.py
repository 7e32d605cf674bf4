"""GIAMICConfig: validation, serialisation, variants and the paper tables."""
import json

import pytest

from giamic import GIAMICConfig
from giamic.models.variants import PAPER_TABLE1, PAPER_TABLE2, VARIANTS, paper_result


def test_defaults_are_the_paper_model():
    cfg = GIAMICConfig()
    assert cfg.modalities == ("video", "speech", "text")
    assert cfg.input_dims == {"video": 768, "speech": 1024, "text": 768}
    assert (cfg.d_model, cfg.fe_heads, cfg.fe_ffn, cfg.n_heads, cfg.num_classes) == (768, 12, 3072, 1, 4)
    assert cfg.gamma == 0.1 and cfg.mask_source == "pooled_msr" and cfg.ds_mode == "stride2_upsample"


def test_modalities_are_normalised_to_canonical_order():
    cfg = GIAMICConfig(modalities=["T", "video"])
    assert cfg.modalities == ("video", "text")
    assert cfg.pairs == (("text", "video"),)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(modalities=("audio",)), "unknown modalities"),
        (dict(modalities=()), "at least one"),
        (dict(modalities=("video", "video")), "duplicate"),
        (dict(d_model=30, fe_heads=4), "divisible"),
        (dict(ds_kernel=2), "odd"),
        (dict(mask_source="conv"), "mask_source"),
        (dict(gamma=-1.0), "gamma"),
        (dict(attn_dropout=1.0), "attn_dropout"),
        (dict(modalities=("video",)), "two modalities"),
        (dict(use_msr=False, use_mir=False), "baseline"),
        (dict(input_dims={"video": 768, "speech": 1024}), "no entry"),
        (dict(fe_posenc=("video",), modalities=("speech", "text")), "fe_posenc"),
    ],
)
def test_invalid_values_raise_clear_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GIAMICConfig(**kw)


def test_dict_and_json_round_trip(tmp_path):
    cfg = GIAMICConfig.tiny("VT", fe_posenc=("V",), gate_pool="local")
    assert GIAMICConfig.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())  # plain JSON types only
    cfg.to_json_file(tmp_path / "c.json")
    assert GIAMICConfig.from_json_file(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="unknown GIAMICConfig fields"):
        GIAMICConfig.from_dict({**cfg.to_dict(), "heads": 3})


def test_variant_presets_follow_spec_items_42_to_44():
    full = GIAMICConfig.from_variant("full")
    wo_mic = GIAMICConfig.from_variant("wo_mic")
    diff = {k for k, v in full.to_dict().items() if wo_mic.to_dict()[k] != v}
    assert diff == {"gamma", "variant"} and wo_mic.gamma == 0.0
    assert not GIAMICConfig.from_variant("wo_msr").has_gia and GIAMICConfig.from_variant("wo_msr").has_mig
    assert GIAMICConfig.from_variant("wo_mir").has_gia and not GIAMICConfig.from_variant("wo_mir").has_mig
    base = GIAMICConfig.from_variant("baseline_ST")
    assert base.fusion == "baseline" and base.modalities == ("speech", "text") and base.gamma == 0.0
    assert GIAMICConfig.from_variant("S").modalities == ("speech",)
    assert GIAMICConfig.from_variant("VT", gamma=0.5).gamma == 0.5
    with pytest.raises(ValueError, match="unknown variant"):
        GIAMICConfig.from_variant("nope")


def test_paper_tables():
    assert set(PAPER_TABLE2) <= set(VARIANTS)
    assert len(PAPER_TABLE2) == 13  # the 13 rows of Table 2
    assert (PAPER_TABLE2["full"].wa, PAPER_TABLE2["full"].ua) == (80.7, 81.3)
    assert (PAPER_TABLE1["asr_text"].wa, PAPER_TABLE1["asr_text"].ua) == (79.6, 80.3)
    assert paper_result("wo_msr").wa == 79.6 and paper_result("baseline") is None
