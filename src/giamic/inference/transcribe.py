"""``giamic transcribe``: Whisper transcripts for a prepared dataset, resumable, with WER.

Usage in docs/predict.md; the decoding settings and the WER normalisation are explained in
docs/decisions.md ("Inference: Whisper implementation, size and decoding", "Inference: WER
normalisation").

Steps:

1. every utterance wav is transcribed in full (not the 6-s crop) with :class:`WhisperTranscriber`;
   results go to ``DATA_DIR/asr_<model>.jsonl`` (:class:`TranscriptStore`), fsync'ed per batch,
   so an interrupted run resumes where it stopped;
2. the raw texts fill the ``transcript_asr`` column of ``utterances.csv`` through the data stage's
   writer (``giamic.data.set_asr_transcripts``), which ``--text asr`` in training reads;
3. corpus WER against the ground-truth transcripts under the documented normalisation
   (:func:`compute_wer`) is printed and saved to ``DATA_DIR/asr_<model>.json``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from giamic.errors import ConfigError
from giamic.log import progress as progress_bar
from giamic.utils.io import write_json_atomic

from .asr import TranscriptStore, WerNormalizer, WerResult, WhisperSettings, WhisperTranscriber, compute_wer
from .errors import AsrError

log = logging.getLogger(__name__)


@dataclass
class TranscribeResult:
    """What one ``transcribe`` run did; ``wer`` is ``None`` when no utterance has a reference."""

    data_dir: Path
    label: str
    store_path: Path
    report_path: Path
    transcribed: int  # in this run
    resumed: int  # already in the store when the run started
    no_audio: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"utt_id", "file", "reason"} under on_error="skip"
    wer: WerResult | None = None
    seconds: float = 0.0


def transcribe_dataset(
    data_dir: str | Path,
    settings: WhisperSettings = WhisperSettings(),
    *,
    batch_size: int = 16,
    overwrite: bool = False,
    on_error: str = "raise",
    spelling_map: str | None = None,
    progress: bool = True,
    transcriber: WhisperTranscriber | None = None,
) -> TranscribeResult:
    """Transcribe every utterance of ``data_dir``, fill ``transcript_asr``, score WER.

    ``on_error="skip"`` records an unreadable wav and goes on (its ``transcript_asr`` stays empty
    and it is listed in the report); the default stops with the error naming the file. An
    utterance without audio gets the empty transcript (the text encoder is fed the empty string) and is
    listed under ``no_audio``.
    """
    from giamic.data import DataError, load_audio, load_dataset, set_asr_transcripts

    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    data_dir = Path(data_dir)
    t0 = time.perf_counter()
    ds = load_dataset(data_dir)
    asr = transcriber or WhisperTranscriber(settings)
    store_path = data_dir / f"asr_{asr.label}.jsonl"
    report_path = data_dir / f"asr_{asr.label}.json"
    store = TranscriptStore(store_path, asr.identity(), overwrite=overwrite)
    known = set(ds.by_id)
    resumed = sum(1 for k in store.done if k in known)
    todo = [u for u in ds.utterances if u.utt_id not in store]
    result = TranscribeResult(data_dir, asr.label, store_path, report_path, transcribed=0, resumed=resumed)
    batch: dict[str, str] = {}
    log.info("transcribing %d utterance(s) with %s (%d done earlier)", len(todo), asr.label, resumed)
    for u in progress_bar(todo, desc=f"transcribe ({asr.label})", total=len(todo), unit="utt") if progress else todo:
        if u.wav is None:
            batch[u.utt_id] = ""
            result.no_audio.append(u.utt_id)
        else:
            try:
                wave = load_audio(u.wav)
            except DataError as e:
                if on_error == "raise":
                    store.add(batch)  # keep what this batch already did
                    raise
                result.failed.append({"utt_id": u.utt_id, "file": str(u.wav), "reason": str(e)})
                continue
            batch[u.utt_id] = asr.transcribe(wave)
        result.transcribed += 1
        if len(batch) >= batch_size:
            store.add(batch)
            batch = {}
    store.add(batch)
    # Utterances missing from the store have failed (skip policy): the column stays empty for them.
    texts = {u.utt_id: store.done[u.utt_id] for u in ds.utterances if u.utt_id in store}
    if texts:
        set_asr_transcripts(data_dir, texts, source=asr.label, require_all=not result.failed)
    refs = [(u.transcript, texts[u.utt_id]) for u in ds.utterances if u.utt_id in texts and u.transcript]
    normalizer = WerNormalizer(spelling_map)
    if refs:
        try:
            result.wer = compute_wer([r for r, _ in refs], [h for _, h in refs], normalizer)
        except ValueError:
            result.wer = None  # every reference empty after normalisation: WER undefined
    result.seconds = time.perf_counter() - t0
    write_json_atomic(
        report_path,
        {
            "dataset": str(data_dir),
            "asr": asr.identity(),
            "transcripts": str(store_path.name),
            "utterances": len(ds.utterances),
            "scored_utterances": len(refs),
            "wer": result.wer.as_dict() if result.wer else None,
            "normalization": normalizer.describe(),
            "no_audio": result.no_audio,
            "failed": result.failed,
        },
    )
    return result


def format_result(r: TranscribeResult) -> str:
    """Human-readable summary printed by the command."""
    lines = [
        f"transcribed {r.transcribed} utterance(s) with {r.label} ({r.resumed} resumed from {r.store_path.name}) "
        f"in {r.seconds:.1f}s"
    ]
    if r.no_audio:
        lines.append(f"  {len(r.no_audio)} utterance(s) without audio got the empty transcript")
    for f in r.failed:
        lines.append(f"  failed {f['utt_id']}: {f['reason']}")
    if r.wer is not None:
        w = r.wer
        lines.append(
            f"WER {100 * w.wer:.2f}% over {w.utterances} utterances, {w.reference_words} reference words "
            f"(S={w.substitutions} D={w.deletions} I={w.insertions}; Whisper English normaliser, IEMOCAP tags removed)"
        )
    else:
        lines.append("WER: no reference transcripts to score against")
    lines.append(f"report: {r.report_path}")
    return "\n".join(lines)


__all__ = ["TranscribeResult", "transcribe_dataset", "format_result", "AsrError"]
