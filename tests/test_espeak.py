"""The ctypes espeak-ng binding: audio, phoneme events, and history-independent output; the synthetic
corpus's phone segments made from them."""

import numpy as np

from asrdistill.data.espeak import engine
from data_prep.synthetic import SILENCE, phone_segments

TEXT = "the old man ate the apple, and then he walked home."


def test_synthesize_returns_audio_and_phoneme_events():
    syn = engine().synthesize(TEXT, "en-us+m3", rate=170, pitch=45)
    assert syn.sample_rate == 22050
    assert syn.audio.dtype == np.int16 and 1.5 < len(syn.audio) / syn.sample_rate < 6
    assert np.abs(syn.audio.astype(float)).max() > 1000
    symbols = [s for s, _ in syn.phonemes]
    assert len(symbols) > 20 and "m" in symbols and any(s.startswith("_") for s in symbols)
    starts = [p for _, p in syn.phonemes]
    assert starts == sorted(starts) and starts[-1] <= len(syn.audio)


def test_output_does_not_depend_on_history():
    a = engine().synthesize(TEXT, "en-gb-scotland+klatt", seed=3).audio
    engine().synthesize("something else entirely", "en-us+f2", seed=9)
    b = engine().synthesize(TEXT, "en-gb-scotland+klatt", seed=3).audio
    assert np.array_equal(a, b)


def test_phone_segments_cover_the_audio():
    syn = engine().synthesize(TEXT, "en-us+f3")
    segs = phone_segments(syn)
    assert segs[0][1] == 0 and segs[-1][2] == len(syn.audio)
    assert all(a < b for _, a, b in segs)
    assert all(prev[2] == cur[1] for prev, cur in zip(segs, segs[1:]))
    assert SILENCE in [s for s, _, _ in segs]
    assert not any("'" in s or "," in s or s.startswith("_") for s, _, _ in segs)


def test_unknown_voice_raises():
    import pytest

    with pytest.raises(ValueError):
        engine().synthesize("hello", "xx-nowhere")
