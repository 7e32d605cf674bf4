"""Encoders and the feature cache (docs/features.md, docs/architecture.md).

```python
from giamic.features import build_encoder, ENCODERS, FeatureStore
enc = build_encoder("tiny-wavlm-untrained")
feats, mask = enc.encode([wave])                      # [B, T, D], [B, T]
store = FeatureStore.open(DATA_DIR, key)              # after `giamic extract`
store[utt_id]                                         # np.float16 [T, D], memory-mapped
```
"""
from giamic.features.encoders import (
    ClipSettings,
    ClipVideoEncoder,
    Encoder,
    TextEncoder,
    TextSettings,
    WavLMSettings,
    WavLMSpeechEncoder,
)
from giamic.features.extract import ExtractOptions, ExtractResult, extract, feature_key, find_feature_key
from giamic.features.image import ClipImageSettings, clip_preprocess
from giamic.features.importer import ImportResult, import_features
from giamic.features.registry import (
    ALIASES,
    ENCODERS,
    EncoderSpec,
    EncoderUnavailableError,
    build_encoder,
    parameter_count,
)
from giamic.features.store import AbsentFeatureError, FeatureStore, FeatureStoreError, list_keys

__all__ = [
    "AbsentFeatureError", "ExtractOptions", "ExtractResult", "FeatureStore", "FeatureStoreError", "ImportResult",
    "extract", "feature_key", "find_feature_key", "import_features", "list_keys",
    "ALIASES", "ENCODERS", "ClipImageSettings", "ClipSettings", "ClipVideoEncoder", "Encoder", "EncoderSpec",
    "EncoderUnavailableError", "TextEncoder", "TextSettings", "WavLMSettings", "WavLMSpeechEncoder",
    "build_encoder", "clip_preprocess", "parameter_count",
]
