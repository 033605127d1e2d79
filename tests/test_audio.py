"""``asrdistill.data.audio.load_audio``: the repairs and refusals a real corpus needs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrdistill.data.audio import AudioError, load_audio

SR = 16000


def _tone(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.argmax(spec) * sr / len(x))


def test_mono_16k_flac_roundtrip(tmp_path: Path) -> None:
    x = _tone(440, 1.0, SR)
    sf.write(tmp_path / "a.flac", x, SR)
    y = load_audio(tmp_path / "a.flac")
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-4)  # 16-bit FLAC quantisation


def test_stereo_is_downmixed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    left, right = _tone(300, 0.5, SR), _tone(700, 0.5, SR) * 0.5
    sf.write(tmp_path / "st.flac", np.stack([left, right], axis=1), SR)
    with caplog.at_level(logging.WARNING):
        y = load_audio(tmp_path / "st.flac")
    assert y.ndim == 1 and len(y) == len(left)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-4)
    assert "2 channels, downmixing" in caplog.text and "st.flac" in caplog.text


def test_wrong_sample_rate_is_resampled_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sf.write(tmp_path / "nb.wav", _tone(1000, 1.0, 8000), 8000)
    with caplog.at_level(logging.WARNING):
        y = load_audio(tmp_path / "nb.wav", sample_rate=SR)
    assert "sample rate 8000 Hz, resampling to 16000 Hz" in caplog.text
    assert y.dtype == np.float32 and abs(len(y) - SR) <= 2
    assert abs(_peak_hz(y, SR) - 1000) < 5  # same pitch, not played at double speed


def test_zero_length_audio(tmp_path: Path) -> None:
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(AudioError, match="zero-length audio") as e:
        load_audio(tmp_path / "empty.wav")
    assert e.value.path == str(tmp_path / "empty.wav")
    (tmp_path / "empty.flac").write_bytes(b"")  # what libsndfile writes for a FLAC of 0 samples
    with pytest.raises(AudioError, match="empty.flac"):
        load_audio(tmp_path / "empty.flac")


@pytest.mark.parametrize("cut", ["header", "middle", "last-bytes"])
def test_truncated_flac(tmp_path: Path, cut: str) -> None:
    rng = np.random.default_rng(0)
    x = _tone(440, 2.0, SR) + rng.normal(0, 0.05, 2 * SR).astype(np.float32)  # noise: no tiny frames
    sf.write(tmp_path / "full.flac", x, SR)
    data = (tmp_path / "full.flac").read_bytes()
    keep = {"header": 20, "middle": len(data) // 2, "last-bytes": len(data) - 10}[cut]
    (tmp_path / "cut.flac").write_bytes(data[:keep])
    with pytest.raises(AudioError, match="cannot decode audio") as e:
        load_audio(tmp_path / "cut.flac")
    assert str(tmp_path / "cut.flac") in str(e.value)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "junk.flac").write_bytes(np.random.default_rng(1).bytes(4000))
    with pytest.raises(AudioError, match="junk.flac: cannot decode audio"):
        load_audio(tmp_path / "junk.flac")
    with pytest.raises(AudioError, match="missing.flac: cannot decode audio"):
        load_audio(tmp_path / "missing.flac")
