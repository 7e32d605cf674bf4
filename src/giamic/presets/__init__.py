"""Named configuration presets: YAML files beside this module, shared by every stage.

A preset names the encoders (``encoders``), the data caps (``data``), the fusion model (``model``)
and the training recipe (``train``) of one way of running giamic:

* ``paper``: the paper's recipe (the defaults of ``giamic.train.config``; CLIP, fine-tuned
  WavLM-large, RoBERTa-base; a GPU);
* ``cpu``: the CPU path of the step-by-step commands, the demo's encoders and recipe (untrained
  tiny CLIP and WavLM, the latter frozen and cached, MiniLM text; a laptop);
* ``demo``: the recipe of ``giamic demo`` (the same as ``cpu``);
* ``tiny``: the smallest settings, for tests.

``giamic extract --preset NAME`` takes its encoders and caps from a preset; ``giamic train``,
``cv``, ``reproduce`` take the whole recipe (``giamic.train.config`` validates it). A preset may
extend another one (``base: NAME``).
"""
from __future__ import annotations

from importlib import resources

import yaml

from giamic.errors import ConfigError

__all__ = ["preset_names", "read_preset", "PRESETS_PACKAGE"]

PRESETS_PACKAGE = "giamic.presets"


def preset_names() -> list[str]:
    """The names of the presets shipped with giamic, sorted."""
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict:
    """The preset ``name`` as a nested dict of sections, its ``base`` chain merged in.

    Raises:
        ConfigError: no preset has this name (the message lists the presets).
    """
    res = resources.files(PRESETS_PACKAGE) / f"{name}.yaml"
    if not res.is_file():
        raise ConfigError(f"no preset named {name!r}; presets: {', '.join(preset_names())}")
    d = yaml.safe_load(res.read_text(encoding="utf-8")) or {}
    base = d.pop("base", None)
    if base:
        merged = read_preset(base)
        _deep_merge(merged, d)
        return merged
    return d


def _deep_merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v
