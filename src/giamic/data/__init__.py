"""Data stage: corpus readers, media decoding, folds and the demo corpus (docs/data.md).

Public API::

    from giamic.data import load_dataset, Dataset, Utterance, Fold
    from giamic.data import load_audio, crop_or_pad, normalize_wave
    from giamic.data import decode_windows, VideoWindow, CropSpec
    from giamic.data import DataError, MediaError, SkipPolicy, SkipReport
    from giamic.data import prepare_iemocap, prepare_manifest, make_corpus
"""
from giamic.data.audio import (
    MAX_SAMPLES,
    SAMPLE_RATE,
    AudioInfo,
    audio_info,
    choose_offset,
    crop_or_pad,
    load_audio,
    normalize_wave,
)
from giamic.data.dataset import (
    Dataset,
    Fold,
    Utterance,
    folds_grouped_kfold,
    folds_leave_one_group_out,
    load_dataset,
    set_asr_transcripts,
    write_dataset,
    write_utterances,
)
from giamic.data.errors import DataError, MediaError, SkippedItem, SkipPolicy, SkipReport
from giamic.data.democorpus import CorpusInfo, make_corpus
from giamic.data.iemocap import CLASSES as IEMOCAP_CLASSES
from giamic.data.iemocap import FULL_CORPUS_COUNTS, ExpectedCounts, prepare_iemocap
from giamic.data.manifest import prepare_manifest
from giamic.data.video import (
    FIXED_WINDOWS,
    MAX_FRAMES,
    CropSpec,
    VideoInfo,
    VideoWindow,
    decode_windows,
    probe_video,
)

__all__ = [
    "AudioInfo", "CropSpec", "DataError", "Dataset", "FIXED_WINDOWS", "Fold", "MAX_FRAMES", "MAX_SAMPLES",
    "MediaError", "SAMPLE_RATE", "SkipPolicy", "SkipReport", "SkippedItem", "Utterance", "VideoInfo",
    "VideoWindow", "audio_info", "choose_offset", "crop_or_pad", "decode_windows", "folds_grouped_kfold",
    "folds_leave_one_group_out", "load_audio", "load_dataset", "normalize_wave", "probe_video",
    "set_asr_transcripts", "write_dataset", "write_utterances", "CorpusInfo", "make_corpus", "IEMOCAP_CLASSES",
    "FULL_CORPUS_COUNTS", "ExpectedCounts", "prepare_iemocap", "prepare_manifest",
]
