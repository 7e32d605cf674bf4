"""Inference stage: predict on one's own media, Whisper ASR transcripts, whole recordings
(docs/predict.md).

Public API::

    from giamic.inference import Predictor, PredictOptions, Prediction, Window
    from giamic.inference import WhisperTranscriber, WhisperSettings, compute_wer, transcribe_dataset

Heavy modules (torch models, faster-whisper) load on first use, so ``giamic --help`` stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Predictor": "predictor", "PredictOptions": "predictor", "Prediction": "predictor", "format_table": "predictor",
    "variants_accepting": "predictor",
    "AnalyzeOptions": "recording", "Segment": "recording", "RecordingAnalysis": "recording",
    "analyze_recording": "recording", "VadSettings": "segments",
    "Window": "inputs", "InputItem": "inputs", "expand_inputs": "inputs",
    "WhisperTranscriber": "asr", "WhisperSettings": "asr", "WerNormalizer": "asr", "WerResult": "asr",
    "compute_wer": "asr", "resolve_whisper_model": "asr", "TranscriptStore": "asr",
    "transcribe_dataset": "transcribe", "TranscribeResult": "transcribe",
    "InferenceError": "errors", "InputError": "errors", "MissingModalityError": "errors",
    "ModelDirError": "errors", "AsrError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
