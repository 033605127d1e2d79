"""Waveform augmentation as Kaldi's LibriSpeech recipes do it: perturbed copies of a data dir as new utterances.

    asrdistill augment-data-dir data/train data/train_sp --config conf/synthetic_augment.yaml

Each kind is a key of :class:`AugmentConfig` (section ``augment``) and makes copies of every utterance under a
new utterance *and* speaker id (a copy is another talker to per-speaker CMVN and to the aligner):

* speed perturbation, ``sp<f>-<utt>``: Kaldi's ``perturb_data_dir_speed_3way.sh`` (sox ``speed``), i.e. the
  signal resampled as if recorded at ``f`` times the rate, so pitch, formants and tempo change together and the
  copy lasts ``1/f`` as long; ``sp1.0-`` is the original, as in Kaldi;
* volume perturbation: Kaldi's ``perturb_data_dir_volume.sh`` (a gain drawn in [1/8, 2]) on every copy;
* additive noise, ``noise<k>-<utt>``: generated white or pink (1/f) noise, or babble made from
  ``babble_talkers`` other utterances of the same data dir (the training speech itself), at an SNR drawn from
  ``snrs_db`` (speech power over the whole utterance to noise power);
* reverberation, ``rvb<k>-<utt>``: room impulse responses of shoebox rooms from pyroomacoustics' image-source
  model, the absorption set by Sabine's formula from an RT60 drawn in ``rt60_s``. Chosen over a hand-written
  tail because it is a maintained library (LCAV, wheels on PyPI) and simulates rooms the way the RIRs of Kaldi's
  RIRS_NOISES set were made (image method); the direct path is put at lag 0 so no copy moves in time;
* vocal-tract-length perturbation, ``vtlp<k>-<utt>`` (Jaitly & Hinton 2013): the spectrum warped along frequency
  by a factor drawn in ``vtlp_range``, pitch and timing kept (:func:`vtlp`).

Everything is a pure function of ``seed`` and the new utterance id, whatever the number of processes. The
signal functions (:func:`speed_perturb`, :func:`add_noise`, :func:`reverberate`, ...) take and return plain
float arrays so that other code (e.g. teacher and student seeing the same perturbed input) can reuse them.
"""

from __future__ import annotations

import json
import logging
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from asrdistill.config import result_settings
from asrdistill.data.audio import AudioError, load_audio
from asrdistill.data.datadir import DataDir
from asrdistill.fileio import (
    atomic_open,
    fingerprint_inputs,
    mark_done,
    stage_done,
    write_json_atomic,
    write_skipped,
)
from asrdistill.parallel import Executor

__all__ = [
    "AugmentConfig",
    "NOISE_TYPES",
    "add_noise",
    "augment_data_dir",
    "babble",
    "colored_noise",
    "make_rirs",
    "perturb",
    "reverberate",
    "speed_perturb",
    "utterance_rng",
    "vtlp",
]

log = logging.getLogger(__name__)

NOISE_TYPES = ("white", "pink", "babble")
_PEAK = 0.999  # a copy louder than this is scaled down as a whole (never clipped: that would change its SNR)


@dataclass
class AugmentConfig:
    """Section ``augment`` of a recipe config: which copies ``augment-data-dir`` makes of each utterance."""

    enabled: bool = False  # read by run.sh only: whether the recipe runs its augmentation stage
    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # one copy each; [] = none
    volume: list[float] = field(default_factory=lambda: [0.125, 2.0])  # gain range on every copy; [] = off
    noise_copies: int = 0  # copies with additive noise per utterance
    noise_types: list[str] = field(default_factory=lambda: list(NOISE_TYPES))
    snrs_db: list[float] = field(default_factory=lambda: [0.0, 5.0, 10.0, 15.0, 20.0])  # one drawn per copy
    babble_talkers: int = 4  # other utterances summed into one babble noise
    reverb_copies: int = 0  # reverberated copies per utterance
    rt60_s: list[float] = field(default_factory=lambda: [0.2, 0.8])  # range of the simulated rooms' RT60
    num_rirs: int = 32  # simulated rooms, made once per run; each reverberated copy draws one
    vtlp_copies: int = 0  # vocal-tract-length perturbed copies per utterance
    vtlp_range: list[float] = field(default_factory=lambda: [0.9, 1.1])  # warp factor alpha, drawn per copy
    seed: int = 0
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if any(not 0.5 <= s <= 2.0 for s in self.speeds) or len(set(self.speeds)) != len(self.speeds):
            raise ValueError(f"speeds: distinct factors in [0.5, 2] expected, got {self.speeds}")
        if self.volume and (len(self.volume) != 2 or not 0 < self.volume[0] <= self.volume[1]):
            raise ValueError(f"volume: [low, high] gains with 0 < low <= high, or [] (off), got {self.volume}")
        if min(self.noise_copies, self.reverb_copies, self.vtlp_copies) < 0:
            raise ValueError("noise_copies, reverb_copies and vtlp_copies must be >= 0")
        if not self.speeds and not self.noise_copies + self.reverb_copies + self.vtlp_copies:
            raise ValueError("speeds is empty and noise_copies = reverb_copies = vtlp_copies = 0: no copy to make")
        if len(self.vtlp_range) != 2 or not 0.7 <= self.vtlp_range[0] <= self.vtlp_range[1] <= 1.3:
            raise ValueError(f"vtlp_range: [low, high] warp factors within [0.7, 1.3] expected, got {self.vtlp_range}")
        unknown = sorted(set(self.noise_types) - set(NOISE_TYPES))
        if unknown or (self.noise_copies and not self.noise_types):
            raise ValueError(f"noise_types: some of {list(NOISE_TYPES)} expected, got {self.noise_types}")
        if self.noise_copies and not self.snrs_db:
            raise ValueError("snrs_db: at least one SNR needed when noise_copies > 0")
        if self.babble_talkers < 1:
            raise ValueError(f"babble_talkers must be >= 1, got {self.babble_talkers}")
        if len(self.rt60_s) != 2 or not 0.05 <= self.rt60_s[0] <= self.rt60_s[1] <= 2.0:
            raise ValueError(f"rt60_s: [low, high] seconds within [0.05, 2] expected, got {self.rt60_s}")
        if self.num_rirs < 1:
            raise ValueError(f"num_rirs must be >= 1, got {self.num_rirs}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    def prefixes(self) -> list[str]:
        """The copies' id prefixes in the order they are made: ``sp0.9``, ``sp1.0``, ``noise1``, ``rvb1``, ``vtlp1``."""
        return (
            [f"sp{s:.1f}" if round(s, 1) == s else f"sp{s:g}" for s in self.speeds]
            + [f"noise{k}" for k in range(1, self.noise_copies + 1)]
            + [f"rvb{k}" for k in range(1, self.reverb_copies + 1)]
            + [f"vtlp{k}" for k in range(1, self.vtlp_copies + 1)]
        )


# ----------------------------------------------------------------------------- signal functions
def utterance_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one copy: a function of the seed and the copy's id only (crc32: stable across runs)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def speed_perturb(samples: np.ndarray, factor: float, sample_rate: int = 16000) -> np.ndarray:
    """sox ``speed factor``: read the samples as if taken at ``factor * rate`` and resample to ``rate``.

    Pitch and tempo change together; the result has ``len / factor`` samples (rounded up).
    """
    if factor == 1.0:
        return samples.astype(np.float32, copy=True)
    import torch
    import torchaudio.functional as F

    src = int(round(sample_rate * factor))
    out = F.resample(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), src, sample_rate)
    return out.numpy()


def colored_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """White or pink (1/f power, above 20 Hz) Gaussian noise of unit variance."""
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    if kind != "pink":
        raise ValueError(f"colored_noise: kind must be white or pink, got {kind!r}")
    spec = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(n), 20.0 / 16000)  # no infrared rumble
    out = np.fft.irfft(spec / np.sqrt(freqs), n)
    return out / (out.std() + 1e-12)


def add_noise(samples: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``samples`` plus ``noise`` (looped or cut to length) scaled to ``snr_db`` = 10 log10(P_speech / P_noise)."""
    noise = np.resize(np.asarray(noise, dtype=np.float64), len(samples))
    speech_power = float(np.mean(np.square(samples, dtype=np.float64)))
    noise_power = float(np.mean(noise**2))
    if noise_power == 0.0:
        raise ValueError("add_noise: the noise is all zeros")
    gain = np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (samples + gain * noise).astype(np.float32)


def make_rirs(config: AugmentConfig) -> list[np.ndarray]:
    """``num_rirs`` room impulse responses (pyroomacoustics image-source model), direct path at lag 0, peak 1.

    Rooms of 4-10 x 4-8 x 2.5-4 m with an RT60 drawn in ``rt60_s`` (absorption by Sabine's formula), source and
    microphone at least 0.5 m from the walls. Made once per run from ``seed``.
    """
    import pyroomacoustics as pra

    rng = np.random.default_rng([int(config.seed), zlib.crc32(b"rirs")])
    rirs = []
    for _ in range(config.num_rirs):
        dim = rng.uniform([4.0, 4.0, 2.5], [10.0, 8.0, 4.0])
        rt60 = rng.uniform(*config.rt60_s)
        absorption, max_order = pra.inverse_sabine(rt60, dim)
        room = pra.ShoeBox(dim, fs=config.sample_rate, materials=pra.Material(absorption), max_order=min(max_order, 60))
        room.add_source(rng.uniform(0.5, dim - 0.5))
        room.add_microphone(rng.uniform(0.5, dim - 0.5))
        room.compute_rir()
        h = np.asarray(room.rir[0][0], dtype=np.float64)
        h = h[int(np.argmax(np.abs(h))) :]
        rirs.append(h / h[0])
    return rirs


def reverberate(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``samples`` convolved with ``rir`` (direct path at lag 0), cut to the input's length and power."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(samples.astype(np.float64), rir)[: len(samples)]
    scale = np.sqrt(np.mean(np.square(samples, dtype=np.float64)) / (np.mean(wet**2) + 1e-20))
    return (wet * scale).astype(np.float32)


def vtlp(samples: np.ndarray, alpha: float, sample_rate: int = 16000, f_hi: float = 4800.0) -> np.ndarray:
    """Vocal-tract-length perturbation (Jaitly & Hinton 2013) of a waveform: its short-time spectrum warped along
    frequency by their piecewise-linear map (``f -> alpha f`` up to ``f_hi min(alpha, 1) / alpha``, then a line to
    the Nyquist frequency, which stays fixed), resynthesised by a phase vocoder at the input's length.

    Each output bin takes the magnitude at its source frequency (interpolated) and the instantaneous frequency of
    the nearest source bin, warped, so overlapping frames add up coherently. ``alpha > 1`` moves formants (and
    harmonics) up, as a shorter vocal tract would; timing is unchanged.
    """
    from scipy.signal import istft, stft

    n_fft, hop, nyquist = 512, 128, sample_rate / 2
    knee = f_hi * min(alpha, 1.0) / alpha

    def warp(f: np.ndarray) -> np.ndarray:
        return np.where(f <= knee, f * alpha, nyquist - (nyquist - knee * alpha) / (nyquist - knee) * (nyquist - f))

    freqs, _, spec = stft(samples.astype(np.float64), fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
    source = np.interp(freqs, warp(freqs), freqs)  # (F,) the input frequency each output bin shows
    mag = np.abs(spec)  # (F, T)
    out_mag = np.stack([np.interp(source, freqs, mag[:, t]) for t in range(mag.shape[1])], axis=1)
    nearest = np.clip(np.round(source / freqs[1]).astype(int), 0, len(freqs) - 1)
    # instantaneous frequency of every input bin from its phase advance over one hop (phase vocoder)
    phase = np.angle(spec)
    expected = 2 * np.pi * freqs[:, None] * hop / sample_rate
    deviation = np.angle(np.exp(1j * (np.diff(phase, axis=1, prepend=phase[:, :1]) - expected)))
    inst = np.clip(freqs[:, None] + deviation * sample_rate / (2 * np.pi * hop), 0.0, nyquist)  # (F, T) Hz
    advance = 2 * np.pi * warp(inst[nearest]) * hop / sample_rate
    advance[:, 0] = 0.0
    out_phase = phase[nearest, :1] + np.cumsum(advance, axis=1)
    _, out = istft(out_mag * np.exp(1j * out_phase), fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
    out = np.pad(out[: len(samples)], (0, max(0, len(samples) - len(out))))
    return out.astype(np.float32)


def _fit_peak(samples: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    return samples * (_PEAK / peak) if peak > _PEAK else samples


# ----------------------------------------------------------------------------- one utterance
@dataclass(frozen=True)
class _Job:
    utt: str
    index: int  # in the worker's list of every utterance's audio (the babble talkers are the others)
    out_dir: str


# set once per worker process by _init_worker: the config, the simulated rooms, every utterance's audio path
_CONFIG: list[AugmentConfig] = []
_RIRS: list[np.ndarray] = []
_WAVS: list[str] = []


def _init_worker(config: AugmentConfig, rirs: list[np.ndarray], wavs: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    _CONFIG[:], _RIRS[:], _WAVS[:] = [config], rirs, wavs


def babble(wavs: list[str], n: int, rng: np.random.Generator, config: AugmentConfig, own: int = -1) -> np.ndarray:
    """``babble_talkers`` utterances drawn by ``rng`` from ``wavs`` (never ``wavs[own]``; an unreadable one is
    passed over), each at unit power and a random offset, summed over ``n`` samples."""
    out, talkers = np.zeros(n), 0
    for _ in range(4 * config.babble_talkers):
        i = int(rng.integers(len(wavs)))
        if i == own:
            continue
        try:
            talker = np.resize(load_audio(wavs[i], config.sample_rate).astype(np.float64), n)
        except AudioError:
            continue
        out += np.roll(talker, int(rng.integers(n))) / (talker.std() + 1e-12)
        talkers += 1
        if talkers == config.babble_talkers:
            break
    if talkers == 0:
        raise ValueError(f"no babble: none of {4 * config.babble_talkers} utterances drawn could be read")
    return out


def perturb(
    samples: np.ndarray,
    prefix: str,
    name: str,
    config: AugmentConfig,
    rirs: list[np.ndarray],
    talkers: list[str],
    own: int = -1,
) -> np.ndarray:
    """The copy ``prefix`` (see :meth:`AugmentConfig.prefixes`) of ``samples``, drawn from the generator of its id
    ``name``; ``rirs`` from :func:`make_rirs`, babble from the audio files ``talkers`` but ``talkers[own]``."""
    rng = utterance_rng(config.seed, name)
    if prefix.startswith("sp"):
        out = speed_perturb(samples, float(prefix[2:]), config.sample_rate)
    elif prefix.startswith("noise"):
        kind = config.noise_types[int(rng.integers(len(config.noise_types)))]
        if kind == "babble" and len(talkers) <= (0 <= own < len(talkers)):
            kind = "pink"  # a data dir of one utterance has no other talker
        n = len(samples)
        noise = babble(talkers, n, rng, config, own) if kind == "babble" else colored_noise(rng, n, kind)
        out = add_noise(samples, noise, float(config.snrs_db[int(rng.integers(len(config.snrs_db)))]))
    elif prefix.startswith("rvb"):
        out = reverberate(samples, rirs[int(rng.integers(len(rirs)))])
    else:
        out = vtlp(samples, rng.uniform(*config.vtlp_range), config.sample_rate)
    if config.volume:
        out = out * rng.uniform(*config.volume)
    return _fit_peak(out).astype(np.float32)


def _augment_one(job: _Job) -> tuple[str, list[tuple[str, str, float]], str | None]:
    """(utt, [(new utt, audio path, seconds)], reason it failed or None); finished copies are kept (resume)."""
    config = _CONFIG[0]
    samples: np.ndarray | None = None
    made = []
    for prefix in config.prefixes():
        name = f"{prefix}-{job.utt}"
        path = Path(job.out_dir) / "audio" / prefix / f"{name}.flac"
        if not path.is_file():
            try:
                samples = load_audio(_WAVS[job.index], config.sample_rate) if samples is None else samples
                copy = perturb(samples, prefix, name, config, _RIRS, _WAVS, own=job.index)
            except (AudioError, ValueError) as e:
                return job.utt, [], str(e)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as f:
                sf.write(f, copy, config.sample_rate, format="FLAC", subtype="PCM_16")
        made.append((name, str(path.resolve()), sf.info(str(path)).frames / config.sample_rate))
    return job.utt, made, None


# ----------------------------------------------------------------------------- a data dir
def _keep_audio_only_from(audio_dir: Path, fingerprints: dict[str, str]) -> None:
    """Copies a killed run left are resumed only if made from these inputs (``audio_dir/inputs.json``)."""
    record = audio_dir / "inputs.json"
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) != fingerprints:
        log.info("%s: copies of a killed run from other inputs, removed", audio_dir)
        shutil.rmtree(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, fingerprints)


def augment_data_dir(
    data_dir: str | Path, out_dir: str | Path, config: AugmentConfig, nj: int = 1, force: bool = False
) -> DataDir:
    """Write ``out_dir``: a data dir of the copies :class:`AugmentConfig` asks for, audio in ``out_dir/audio``.

    An utterance whose audio cannot be read is left out with all its copies and listed in ``skipped.tsv``.
    Resumable: copies written by a killed run are reused; a finished run with the same inputs is skipped.
    Returns the new :class:`DataDir`.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    stage = "augment"
    inputs = {
        "config": result_settings(config),
        "wav.scp": data_dir / "wav.scp",
        "text": data_dir / "text",
        "utt2spk": data_dir / "utt2spk",
    }
    if stage_done(out_dir, stage, inputs, force, on_redo=lambda: shutil.rmtree(out_dir / "audio", True)):
        return DataDir.load(out_dir)
    data = DataDir.load(data_dir)
    if not data.wav:
        raise ValueError(f"{data_dir}: wav.scp lists no utterances")
    _keep_audio_only_from(out_dir / "audio", fingerprint_inputs(inputs))
    rirs = make_rirs(config) if config.reverb_copies else []
    utts = data.utt_ids
    jobs = [_Job(u, i, str(out_dir)) for i, u in enumerate(utts)]
    init = (config, rirs, [data.wav[u] for u in utts])
    out, skipped = DataDir(), []
    # fork: workers start in milliseconds and share the path list; the parent runs no torch threads here
    with Executor(min(nj, len(jobs)), initializer=_init_worker, initargs=init, start_method="fork") as ex:
        for utt, made, reason in ex.map(_augment_one, jobs):
            if reason is not None:
                log.warning("%s: skipping %s: %s", data_dir, utt, reason)
                skipped.append((utt, data.wav[utt], reason))
                continue
            for name, path, seconds in made:
                out.wav[name], out.utt2dur[name] = path, seconds
                out.utt2spk[name] = f"{name.split('-', 1)[0]}-{data.utt2spk[utt]}"
                if utt in data.text:
                    out.text[name] = data.text[utt]
    if not out.wav:
        raise ValueError(f"{data_dir}: no utterance could be augmented; reasons in {out_dir / 'skipped.tsv'}")
    out.save(out_dir)
    write_skipped(out_dir / "skipped.tsv", skipped)
    info = {"source": str(data_dir), "copies": config.prefixes(), "utterances": len(out.wav), "skipped": len(skipped)}
    mark_done(out_dir, stage, info, inputs)
    log.info(
        "%s -> %s: %d copies of %d utterance(s), %d skipped", data_dir, out_dir, len(out.wav), len(utts), len(skipped)
    )
    return out
