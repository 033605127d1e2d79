"""Reading audio for feature extraction, with the repairs a real corpus needs.

Stereo is downmixed (the mean of the channels), a wrong sample rate is
resampled with ``librosa.resample`` (its default ``soxr_hq`` resampler), each
with a warning, and unreadable or empty files raise :class:`AudioError` naming the file and the
reason, so the caller can skip that utterance and go on with the batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["AudioError", "load_audio"]

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Return mono float32 samples in [-1, 1] at ``sample_rate``."""
    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(path, f"cannot decode audio ({e})") from e
    if samples.shape[0] == 0:
        raise AudioError(path, "zero-length audio")
    if samples.shape[1] > 1:
        log.warning("%s: %d channels, downmixing to mono", path, samples.shape[1])
    mono = samples.mean(axis=1)
    if sr != sample_rate:
        log.warning("%s: sample rate %d Hz, resampling to %d Hz", path, sr, sample_rate)
        import librosa

        mono = librosa.resample(mono, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq").astype(np.float32)
    if not np.all(np.isfinite(mono)):
        raise AudioError(path, "non-finite samples")
    return mono
