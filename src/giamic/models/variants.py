"""Named presets for every row of the paper's Table 2 (and the GIA-MIC rows of Table 1).

Each variant is a set of ``GIAMICConfig`` overrides (the paper defines none of these rows; our
reading is in docs/model.md and docs/decisions.md), never a code fork:

* ``full``: V+S+T, MSR + MIR + MIC (eqs. 1-19).
* ``wo_msr``: no GIA; the MIGs read the FE outputs ``H_M`` in place of ``H_M^MSR``; fusion = H^MIR.
* ``wo_mir``: no MIG and no L_MIR; fusion = H^MSR.
* ``wo_mic``: the full architecture with gamma = 0.
* ``baseline``: FE outputs time-concatenated, masked mean, linear classifier; gamma = 0.
* ``V``/``S``/``T``: one modality, FE, masked mean, linear classifier (the baseline on one modality).
* ``VS``/``ST``/``VT``: GIA-MIC on two modalities (one GIA block, two MIGs, one SKL pair).
* ``baseline_VS``/``baseline_ST``/``baseline_VT``: the baseline on two modalities.
* ``asr_text``: the full model; only the transcript source differs (a data setting: Whisper text).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from giamic.modalities import MODALITIES
from giamic.models.config import GIAMICConfig

_V, _S, _T = MODALITIES
_BASELINE = dict(fusion="baseline", use_msr=False, use_mir=False, gamma=0.0)

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "wo_msr": dict(use_msr=False),
    "wo_mir": dict(use_mir=False),
    "wo_mic": dict(gamma=0.0),
    "baseline": dict(_BASELINE),
    "V": dict(_BASELINE, modalities=(_V,)),
    "S": dict(_BASELINE, modalities=(_S,)),
    "T": dict(_BASELINE, modalities=(_T,)),
    "VS": dict(modalities=(_V, _S)),
    "ST": dict(modalities=(_S, _T)),
    "VT": dict(modalities=(_V, _T)),
    "baseline_VS": dict(_BASELINE, modalities=(_V, _S)),
    "baseline_ST": dict(_BASELINE, modalities=(_S, _T)),
    "baseline_VT": dict(_BASELINE, modalities=(_V, _T)),
    "asr_text": {},
}


@dataclass(frozen=True)
class PaperRow:
    """One reported result (mean over the 5 LOSO folds, %)."""

    table: int
    modality: str
    method: str
    wa: float
    ua: float


# Table 2 of the paper, keyed by variant name. The full row is also Table 1's V+S+T(GT) row.
PAPER_TABLE2: dict[str, PaperRow] = {
    "V": PaperRow(2, "V", "CLIP", 46.6, 47.9),
    "S": PaperRow(2, "S", "WavLM", 71.7, 72.4),
    "T": PaperRow(2, "T(GT)", "RoBERTa", 68.4, 69.4),
    "baseline_VS": PaperRow(2, "V+S", "Baseline", 72.3, 73.1),
    "baseline_ST": PaperRow(2, "S+T(GT)", "Baseline", 76.4, 77.2),
    "baseline_VT": PaperRow(2, "V+T(GT)", "Baseline", 69.0, 69.9),
    "VS": PaperRow(2, "V+S", "GIA-MIC", 79.4, 80.1),
    "ST": PaperRow(2, "S+T(GT)", "GIA-MIC", 79.0, 80.4),
    "VT": PaperRow(2, "V+T(GT)", "GIA-MIC", 71.3, 72.0),
    "full": PaperRow(2, "V+S+T(GT)", "GIA-MIC", 80.7, 81.3),
    "wo_msr": PaperRow(2, "w/o MSR", "GIA-MIC", 79.6, 80.4),
    "wo_mir": PaperRow(2, "w/o MIR", "GIA-MIC", 80.1, 80.7),
    "wo_mic": PaperRow(2, "w/o MIC", "GIA-MIC", 80.2, 80.9),
}
# The V+S+T "Baseline" variant has no row in the paper (Table 2 lists only the bimodal baselines).

# GIA-MIC rows of Table 1 (UA 81.3 as in the abstract and both tables; the 81.1 of the paper's
# results text is taken as a typo).
PAPER_TABLE1: dict[str, PaperRow] = {
    "full": PaperRow(1, "V+S+T(GT)", "GIA-MIC", 80.7, 81.3),
    "asr_text": PaperRow(1, "V+S+T(ASR)", "GIA-MIC", 79.6, 80.3),
}


def paper_result(variant: str) -> PaperRow | None:
    """The paper's WA/UA for a variant (Table 2 first, then Table 1), or None if unreported."""
    return PAPER_TABLE2.get(variant) or PAPER_TABLE1.get(variant)


def variant_config(name: str, **overrides: Any) -> GIAMICConfig:
    """Build the ``GIAMICConfig`` of a named variant; ``overrides`` win over the preset."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    kw: dict[str, Any] = dict(VARIANTS[name])
    kw.update(overrides)
    kw.setdefault("variant", name)
    return GIAMICConfig(**kw)
