"""The loader of the fine-tuned speech encoder (``giamic.train.batches.OnlineSpeech``)."""
from __future__ import annotations

import numpy as np

from giamic.data import Utterance

CLASSES = ["neu", "ang", "hap", "sad"]


def test_the_speech_loader_prepares_waves_as_the_encoder_does(tmp_path):
    """``OnlineSpeech.load`` (the fine-tuning loader) gives bit for bit the encoder's own
    ``preprocess`` of the wave: shorter and longer than the window, with an offset, and silent."""
    import soundfile as sf

    from giamic.data import Dataset
    from giamic.features import build_encoder
    from giamic.modeldir import EncoderRecord
    from giamic.train.batches import OnlineSpeech, crop_rng

    rng = np.random.default_rng(0)
    utts = []
    for i, sec in enumerate([0.7, 2.0, 3.5, 0.0]):
        p = tmp_path / f"u{i}.wav"
        sf.write(p, (rng.normal(size=int(sec * 16000)) * 0.1 + 0.05).astype(np.float32) if sec else
                 np.zeros(1600, np.float32), 16000)
        utts.append(Utterance(utt_id=f"u{i}", label="neu", group="G0", wav=p))
    ds = Dataset(root=tmp_path, name="w", classes=CLASSES, utterances=utts, folds=[])
    enc = build_encoder("tiny-wavlm-untrained", frozen=False, max_samples=32000, sample_rate=16000, normalize=True)
    src = OnlineSpeech(enc, ds, "random_train", EncoderRecord(name="tiny-wavlm-untrained", dim=enc.dim))
    from giamic.data import choose_offset, load_audio

    for u in utts:
        for r in (None, crop_rng(0, 1, 2, u.utt_id)):
            got, valid = src.load(u.utt_id, r)
            wave = load_audio(u.wav)
            off = 0 if r is None else choose_offset(len(wave), 32000, "random", crop_rng(0, 1, 2, u.utt_id))
            pre = enc.preprocess([wave[off:]])
            assert np.array_equal(got, pre["input_values"][0].numpy())
            assert valid == int(pre["attention_mask"][0].sum())
