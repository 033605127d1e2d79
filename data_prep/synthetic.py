"""Offline synthetic stand-in for LibriSpeech: espeak-ng speech in the exact LibriSpeech layout.

LibriSpeech cannot be downloaded here, so the recipe's default corpus is synthesized: sentences from
:mod:`data_prep.text`, spoken by many espeak-ng "speakers", degraded by noise and reverberation, and
written exactly like LibriSpeech so the same preparation code runs on it.  Because the TTS tells us
where every phoneme is, each chapter also gets a ground-truth phone ``.ctm`` for scoring aligners.

Output (``<out>`` is the folder given to :func:`synthesize_corpus`)::

    <out>/.synthetic.done                      JSON of the parameters, written last
    <out>/lm/lm-text.txt                       LM training text, one UPPERCASE sentence a line,
                                               no dev/test sentence in it
    <out>/LibriSpeech/SPEAKERS.TXT             ;ID |SEX| SUBSET |MINUTES| NAME (NAME = voice parameters)
    <out>/LibriSpeech/SYNTHETIC.TXT            how the corpus was made and what the ctm means
    <out>/LibriSpeech/<subset>/conditions.tsv  utt_id, condition, noise, snr_db, rt60_s
    <out>/LibriSpeech/<subset>/<SPK>/<CH>/<SPK>-<CH>-<UTT:04d>.flac   16 kHz mono PCM_16
    <out>/LibriSpeech/<subset>/<SPK>/<CH>/<SPK>-<CH>.trans.txt       "<UTTID> WORD WORD ..."
    <out>/LibriSpeech/<subset>/<SPK>/<CH>/<SPK>-<CH>.phones.ctm      "<UTTID> 1 START DUR PHONE"

with ``<subset>`` in ``train``, ``dev``, ``test`` (speaker-disjoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from asrdistill import logs
from asrdistill.data.espeak import Synthesis, engine
from asrdistill.fileio import atomic_open, write_text_atomic

if TYPE_CHECKING:
    from data_prep.text import SentenceGenerator

SAMPLE_RATE = 16000
SUBSETS = ("train", "dev", "test")
FORMAT_VERSION = 2  # 2: dev/test voices (voice+variant) never used in training
MARKER = ".synthetic.done"
# Mean utterance length observed with the default grammar and speakers (speech + padding); only
# used to turn ``hours`` into a number of utterances, the real durations go to SPEAKERS.TXT.
_EST_UTT_SECONDS = 3.5

_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_MALE_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "klatt",
    "klatt3",
    "john",
    "max",
    "michael",
    "paul",
    "robert",
)
_FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "anika", "linda", "steph", "belinda", "aunty", "klatt4", "andrea")
_NOISES = ("white", "pink", "brown", "babble")
SILENCE = "SIL"
# espeak phonemes that start with a closure (digital silence before the burst); see phone_segments.
_STOPS = frozenset({"p", "t", "k", "b", "d", "g", "tS", "dZ", "t2", "d2", "t#", "d#", "?"})

_CTM_DOC = """\
Synthetic LibriSpeech-layout corpus made offline with espeak-ng (data_prep/synthetic.py).

<SPK>-<CH>.phones.ctm: one line per phone, "UTTID 1 START DUR PHONE", seconds in the 16 kHz FLAC
(3 decimals), contiguous and covering the whole file from 0 to its duration.  PHONE is the espeak-ng
phoneme mnemonic of the voice's accent with stress marks removed (e.g. D @2 w O: t# 3 r- I n);
SIL is leading/trailing padding and espeak pauses.  Times are espeak's own phoneme event positions
(start of each phoneme's synthesis), mapped through the vocal-tract-length resampling and shifted
by the added leading silence; a stop's closure silence is given to the stop.  espeak synthesises
vowel-sonorant transitions inside the vowel, so boundaries next to l/r/w/j are only good to a few
tens of ms.  Reverberation uses a direct path at lag 0, so it does not move any boundary.
To compare with an ARPAbet forced alignment, align the two phone sequences first (they differ in
inventory and sometimes in count), then compare the boundaries of matched phones.

<subset>/conditions.tsv: utt_id, condition (clean | noise | reverb | reverb+noise), noise
(white | pink | brown | babble | -), snr_db (speech-to-noise, dB, or -), rt60_s (or -).  Every
utterance also has a noise floor 55 dB below the speech, so no file contains digital silence;
"clean" means nothing beyond that.  Score aligners on the clean portion.

SPEAKERS.TXT NAME field: espeak voice+variant, pitch, range, words-per-minute rate and vocal tract
warp factor (>1 = shorter tract: higher formants, pitch and tempo).
"""


@dataclass(frozen=True)
class Speaker:
    """One synthetic talker: an espeak voice and variant plus prosody and a vocal-tract warp."""

    speaker_id: int
    sex: str
    subset: str
    voice: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int
    source_rate: int  # espeak audio is read as if sampled at this rate: 22050 * warp

    @property
    def warp(self) -> float:
        return self.source_rate / 22050

    @property
    def description(self) -> str:
        return (
            f"espeak {self.voice}+{self.variant} pitch {self.pitch} range {self.pitch_range} "
            f"rate {self.rate} vtl {self.warp:.3f}"
        )


@dataclass(frozen=True)
class UtteranceJob:
    """Everything a worker needs for one utterance (a pure function of it)."""

    utt_id: str
    path: str
    spoken: str
    speaker: Speaker
    seed: int


def _params(
    hours: float,
    seed: int,
    num_speakers: int,
    dev_fraction: float,
    test_fraction: float,
    lm_sentences: int,
    vocab_size: int,
) -> dict:
    """The marker's identity of a corpus; ``vocab_size`` only when set, so corpora made before it had
    the option keep their marker."""
    params = {
        "format": FORMAT_VERSION,
        "hours": hours,
        "seed": seed,
        "num_speakers": num_speakers,
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction,
        "lm_sentences": lm_sentences,
    }
    return params | ({"vocab_size": vocab_size} if vocab_size else {})


def make_speakers(seed: int, num_speakers: int, dev_fraction: float, test_fraction: float) -> list[Speaker]:
    """Draw ``num_speakers`` distinct talkers and split them speaker-disjointly into the subsets.

    Dev and test talkers each get an espeak voice+variant of their own that no
    training talker uses, so the test measures generalisation to unseen voices
    (as LibriSpeech's speaker-disjoint test sets do), not recognition of a
    training voice at another pitch.
    """
    if num_speakers < 3:
        raise ValueError("need at least 3 speakers (one each for train, dev and test)")
    rng = random.Random(f"speakers-{seed}")
    n_dev = max(1, round(num_speakers * dev_fraction))
    n_test = max(1, round(num_speakers * test_fraction))
    if n_dev + n_test >= num_speakers:
        raise ValueError("dev/test fractions leave no training speaker")
    subsets = ["dev"] * n_dev + ["test"] * n_test + ["train"] * (num_speakers - n_dev - n_test)
    ids = sorted(rng.sample(range(100, 9000), num_speakers))
    rng.shuffle(ids)
    held_out: set[tuple[str, str]] = set()  # (voice, variant) of dev/test talkers: never heard in training
    seen: set[tuple] = set()
    speakers = []
    for i, subset in enumerate(subsets):  # dev and test talkers are drawn first
        spk = draw_speaker(rng, ids[i], "F" if i % 2 == 0 else "M", subset, held_out, seen)
        if subset != "train":
            held_out.add((spk.voice, spk.variant))  # each held-out talker has a voice of its own
        speakers.append(spk)
    return speakers


def draw_speaker(
    rng: random.Random, speaker_id: int, sex: str, subset: str, held_out: set[tuple[str, str]], seen: set[tuple]
) -> Speaker:
    """One talker whose voice+variant is not in ``held_out`` (the dev/test talkers') and whose voice, variant and
    vocal-tract warp are not in ``seen`` (which gets them)."""
    while True:
        variant = rng.choice(_FEMALE_VARIANTS if sex == "F" else _MALE_VARIANTS)
        voice = rng.choice(_VOICES)
        warp = rng.uniform(1.0, 1.14) if sex == "F" else rng.uniform(0.87, 1.02)
        key = (voice, variant, round(warp, 2))
        if (voice, variant) not in held_out and key not in seen:
            break
    seen.add(key)
    return Speaker(
        speaker_id=speaker_id,
        sex=sex,
        subset=subset,
        voice=voice,
        variant=variant,
        pitch=rng.randint(30, 70),
        pitch_range=rng.randint(30, 90),
        rate=rng.randint(140, 195),
        source_rate=int(round(22050 * warp / 50)) * 50,
    )


# ----------------------------------------------------------------------------- signal processing
def _resample(x: np.ndarray, source_rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = math.gcd(SAMPLE_RATE, source_rate)
    return resample_poly(x, SAMPLE_RATE // g, source_rate // g)


def _colored_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """White, pink (1/f) or brown (1/f^2) Gaussian noise of unit variance."""
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    f = np.maximum(f, 20.0)  # no infrared rumble
    spec /= f ** (0.5 if kind == "pink" else 1.0)
    out = np.fft.irfft(spec, n)
    return out / (out.std() + 1e-12)


def _rir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Exponentially decaying noise tail after a unit direct path at lag 0 (so no time shift)."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0
    drr_db = rng.uniform(-3.0, 8.0)  # direct-to-reverberant ratio
    tail *= 10 ** (-drr_db / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    tail[0] = 1.0
    return tail


_BABBLE: dict[int, np.ndarray] = {}


def _babble_bank(seed: int) -> np.ndarray:
    """~30 s of 5-talker babble from non-corpus espeak voices; identical in every process."""
    if seed not in _BABBLE:
        from data_prep.text import SentenceGenerator

        rng = random.Random(f"babble-{seed}")
        gen = SentenceGenerator()
        length = 30 * SAMPLE_RATE
        bank = np.zeros(length)
        for talker in range(5):
            voice = f"{rng.choice(_VOICES)}+{rng.choice(_MALE_VARIANTS + _FEMALE_VARIANTS)}"
            stream = []
            total = 0
            while total < length:
                syn = engine().synthesize(
                    gen.sentence(rng)[1], voice, rate=rng.randint(150, 200), pitch=rng.randint(25, 75), seed=talker
                )
                x = _resample(syn.audio / 32768.0, syn.sample_rate)
                x /= np.sqrt(np.mean(x**2)) + 1e-12
                stream.append(x)
                total += len(x)
            bank += np.roll(np.concatenate(stream)[:length], rng.randrange(length))
        _BABBLE[seed] = bank / bank.std()
    return _BABBLE[seed]


def phone_segments(syn: Synthesis) -> list[tuple[str, int, int]]:
    """Turn phoneme events into contiguous (phone, start, end) sample spans covering the whole audio.

    Rules (why): stress marks ``'``/``,`` are dropped (they are not phones); espeak pauses
    (``_``, ``_:``, ``_!`` ...) and the leading gap become ``SIL`` and adjacent ``SIL`` merge;
    the ``;`` linking marker is folded into the previous phone (it carries that phone's audio);
    espeak reports a stop at its burst, leaving the closure (exact digital zeros) on the previous
    phone, so a stop's start is moved back over that zero run, leaving the previous phone >= 10 ms.
    """
    n = len(syn.audio)
    raw: list[tuple[str, int]] = []
    for sym, start in syn.phonemes:
        start = min(max(start, 0), n)
        sym = sym.lstrip("',")
        if not sym or sym == ";":
            continue
        raw.append((SILENCE if sym.startswith("_") else sym, start))
    if not raw or raw[0][1] > 0:
        raw.insert(0, (SILENCE, 0))
    starts = [int(s) for s in np.maximum.accumulate([s for _, s in raw])]
    min_keep = syn.sample_rate // 100
    silent = syn.audio == 0
    for i in range(1, len(raw)):
        if raw[i][0] in _STOPS and raw[i - 1][0] != SILENCE:
            b = starts[i]
            floor = starts[i - 1] + min_keep
            while b > floor and silent[b - 1]:
                b -= 1
            starts[i] = b
    segs: list[tuple[str, int, int]] = []
    for i, (sym, _) in enumerate(raw):
        start, end = starts[i], (starts[i + 1] if i + 1 < len(raw) else n)
        if end <= start:
            continue
        if segs and segs[-1][0] == sym == SILENCE:
            segs[-1] = (sym, segs[-1][1], end)
        else:
            segs.append((sym, start, end))
    return segs


def render_utterance(job: UtteranceJob, corpus_seed: int) -> tuple[np.ndarray, list[tuple[str, float, float]], dict]:
    """Synthesize one utterance: (int16 audio at 16 kHz, [(phone, start_s, end_s)], condition)."""
    spk = job.speaker
    rng = np.random.default_rng(job.seed)
    syn = engine().synthesize(
        job.spoken,
        f"{spk.voice}+{spk.variant}",
        rate=int(spk.rate * rng.uniform(0.92, 1.08)),
        pitch=int(np.clip(spk.pitch + rng.integers(-4, 5), 0, 99)),
        pitch_range=spk.pitch_range,
        seed=job.seed,
    )
    segs = phone_segments(syn)
    speech = _resample(syn.audio / 32768.0, spk.source_rate)
    lead = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
    trail = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
    x = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    duration = len(x) / SAMPLE_RATE
    phones = []
    for sym, a, b in segs:
        phones.append((sym, lead / SAMPLE_RATE + a / spk.source_rate, lead / SAMPLE_RATE + b / spk.source_rate))
    if phones:  # padding is silence: extend/prepend SIL so the ctm covers [0, duration]
        phones[0] = (phones[0][0], 0.0, phones[0][2]) if phones[0][0] == "SIL" else phones[0]
        if phones[0][1] > 0:
            phones.insert(0, ("SIL", 0.0, phones[0][1]))
        if phones[-1][0] == "SIL":
            phones[-1] = ("SIL", phones[-1][1], duration)
        else:
            phones.append(("SIL", phones[-1][2], duration))

    # Channel: a random first-order tilt, so spectra differ beyond the voice itself.
    tilt = rng.uniform(-0.6, 0.6)
    x = np.concatenate([x[:1], x[1:] - tilt * x[:-1]])
    power = np.mean(speech**2) + 1e-12

    u = rng.random()
    condition = "clean" if u < 0.4 else "noise" if u < 0.75 else "reverb" if u < 0.9 else "reverb+noise"
    noise_kind, snr, rt60 = "-", None, None
    if "reverb" in condition:
        from scipy.signal import fftconvolve

        rt60 = float(rng.uniform(0.2, 0.8))
        x = fftconvolve(x, _rir(rng, rt60))[: len(x)]
    if "noise" in condition:
        noise_kind = _NOISES[int(rng.integers(len(_NOISES)))]
        snr = float(rng.uniform(5.0, 30.0))
        if noise_kind == "babble":
            bank = _babble_bank(corpus_seed)
            start = int(rng.integers(len(bank)))
            noise = np.take(bank, np.arange(start, start + len(x)), mode="wrap")
        else:
            noise = _colored_noise(rng, len(x), noise_kind)
        x = x + noise * math.sqrt(power / 10 ** (snr / 10))
    x = x + rng.standard_normal(len(x)) * math.sqrt(power / 10**5.5)  # -55 dB floor
    level = 10 ** (rng.uniform(-30.0, -18.0) / 20)
    x *= level / math.sqrt(power)
    peak = np.max(np.abs(x))
    if peak > 0.97:
        x *= 0.97 / peak
    audio = np.round(x * 32767).astype(np.int16)
    cond = {
        "condition": condition,
        "noise": noise_kind,
        "snr_db": "-" if snr is None else f"{snr:.1f}",
        "rt60_s": "-" if rt60 is None else f"{rt60:.2f}",
    }
    return audio, phones, cond


# ----------------------------------------------------------------------------- files
def _write_flac(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    with atomic_open(path, "wb") as f:  # the format is given, so the temporary's name need not end in .flac
        sf.write(f, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")


_CORPUS_SEED = 0


def _init_worker(corpus_seed: int) -> None:
    global _CORPUS_SEED
    _CORPUS_SEED = corpus_seed


def _run_job(job: UtteranceJob) -> tuple[str, float, list[tuple[str, float, float]], dict]:
    audio, phones, cond = render_utterance(job, _CORPUS_SEED)
    _write_flac(Path(job.path), audio)
    return job.utt_id, len(audio) / SAMPLE_RATE, phones, cond


def _format_ctm(utt_id: str, phones: Sequence[tuple[str, float, float]]) -> list[str]:
    lines = []
    for sym, a, b in phones:
        a3, b3 = round(a, 3), round(b, 3)
        if b3 > a3:
            lines.append(f"{utt_id} 1 {a3:.3f} {b3 - a3:.3f} {sym}")
    return lines


def _plan(
    ls_dir: Path,
    speakers: list[Speaker],
    hours: float,
    seed: int,
    dev_fraction: float,
    test_fraction: float,
    vocab_size: int,
) -> tuple[list[UtteranceJob], dict[str, str], dict[str, tuple[str, str, str]]]:
    """Decide every utterance: its speaker, chapter, id, path and sentence (all from ``seed``)."""
    from data_prep.text import SentenceGenerator

    total = max(3, math.ceil(hours * 3600 / _EST_UTT_SECONDS))
    n_dev = max(1, round(total * dev_fraction))
    n_test = max(1, round(total * test_fraction))
    counts = {"train": max(1, total - n_dev - n_test), "dev": n_dev, "test": n_test}
    gen = SentenceGenerator(vocab_size)
    text_rng = random.Random(f"utterances-{seed}")
    chapter_rng = random.Random(f"chapters-{seed}")
    counts_per_speaker = {}
    for subset in SUBSETS:
        spks = [s for s in speakers if s.subset == subset]
        for i, spk in enumerate(spks):
            counts_per_speaker[spk.speaker_id] = counts[subset] // len(spks) + (i < counts[subset] % len(spks))
    order = [s for subset in SUBSETS for s in speakers if s.subset == subset]
    chapter_ids = chapter_rng.sample(range(10000, 300000), 2 * len(speakers))
    return plan_utterances(ls_dir, order, counts_per_speaker, chapter_ids, gen, text_rng, set(), [seed])


def plan_utterances(
    ls_dir: Path,
    speakers: Sequence[Speaker],
    counts: dict[int, int],
    chapter_ids: Sequence[int],
    gen: SentenceGenerator,
    text_rng: random.Random,
    used_sentences: set[str],
    entropy: list[int],
) -> tuple[list[UtteranceJob], dict[str, str], dict[str, tuple[str, str, str]]]:
    """``counts[id]`` utterances of each speaker in order, each a sentence not in ``used_sentences`` (which gets
    it), in two chapters (``chapter_ids``, two per speaker) once it has 8 or more; utterance ``i`` is rendered with
    the seed of ``entropy + [i]``. Returns the jobs, transcripts and ``utt_id -> (subset, speaker, chapter)``."""
    jobs: list[UtteranceJob] = []
    transcripts: dict[str, str] = {}
    where: dict[str, tuple[str, str, str]] = {}
    chapter_iter = iter(chapter_ids)
    for spk in speakers:
        n = counts[spk.speaker_id]
        chapters = [next(chapter_iter), next(chapter_iter)]
        first = n if n < 8 else (n + 1) // 2  # speakers with enough utterances read two chapters
        for k in range(n):
            ch, utt_no = (chapters[0], k) if k < first else (chapters[1], k - first)
            utt_id = f"{spk.speaker_id}-{ch}-{utt_no:04d}"
            while True:
                transcript, spoken = gen.sentence(text_rng)
                if transcript not in used_sentences:
                    break
            used_sentences.add(transcript)
            folder = ls_dir / spk.subset / str(spk.speaker_id) / str(ch)
            jobs.append(
                UtteranceJob(
                    utt_id=utt_id,
                    path=str(folder / f"{utt_id}.flac"),
                    spoken=spoken,
                    speaker=spk,
                    seed=int(np.random.SeedSequence([*entropy, len(jobs)]).generate_state(1)[0]),
                )
            )
            transcripts[utt_id] = transcript
            where[utt_id] = (spk.subset, str(spk.speaker_id), str(ch))
    return jobs, transcripts, where


def _lm_text(seed: int, n: int, exclude: set[str], vocab_size: int) -> Iterable[str]:
    from data_prep.text import SentenceGenerator

    gen = SentenceGenerator(vocab_size)
    rng = random.Random(f"lm-{seed}")
    made = 0
    while made < n:
        s = gen.sentence(rng)[0]
        if s not in exclude:
            made += 1
            yield s


def synthesize_corpus(
    out_dir: Path,
    hours: float,
    seed: int = 0,
    num_speakers: int = 48,
    nj: int = 2,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    lm_sentences: int = 100_000,
    vocab_size: int = 0,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build (or reuse) the synthetic corpus under ``out_dir`` and return its ``LibriSpeech`` folder.

    ``hours`` is the target audio length (met on average; the real minutes are in SPEAKERS.TXT).
    ``dev_fraction``/``test_fraction`` apply both to speakers and to utterances. ``vocab_size`` extra
    CMUdict words widen the text's vocabulary (:class:`data_prep.text.SentenceGenerator`; 0: the
    grammar's ~1.3k words). Same parameters =>
    bit-identical files whatever ``nj`` is. A finished corpus with the same parameters is reused;
    with different ones this raises unless ``force`` (then LibriSpeech/ and lm/ are rebuilt).
    """
    out_dir = Path(out_dir)
    ls_dir = out_dir / "LibriSpeech"
    marker = out_dir / MARKER
    params = _params(
        float(hours),
        int(seed),
        int(num_speakers),
        float(dev_fraction),
        float(test_fraction),
        int(lm_sentences),
        int(vocab_size),
    )
    if marker.exists():
        old = json.loads(marker.read_text())
        if old == params:
            return ls_dir
        if not force:
            raise FileExistsError(
                f"{out_dir} already holds a synthetic corpus made with {old}; asked for {params}. "
                "Use another folder or force=True (--force) to rebuild it."
            )
        marker.unlink()
    if hours <= 0:
        raise ValueError("hours must be positive")
    if ls_dir.exists() and not (ls_dir / "SYNTHETIC.TXT").exists():
        raise FileExistsError(f"{ls_dir} exists and is not a synthetic corpus; refusing to overwrite it")
    for stale in (ls_dir, out_dir / "lm"):
        if stale.exists():
            shutil.rmtree(stale)
    ls_dir.mkdir(parents=True)
    write_text_atomic(ls_dir / "SYNTHETIC.TXT", _CTM_DOC)  # first: marks the folder as ours to rebuild
    speakers = make_speakers(seed, num_speakers, dev_fraction, test_fraction)
    jobs, transcripts, where = _plan(ls_dir, speakers, hours, seed, dev_fraction, test_fraction, vocab_size)

    results = render_all(jobs, seed, nj, progress)
    _write_metadata(ls_dir, speakers, transcripts, where, results)
    lm_dir = out_dir / "lm"
    lm_dir.mkdir(parents=True, exist_ok=True)
    held_out = {transcripts[u] for u, (subset, _, _) in where.items() if subset != "train"}
    lm_text = _lm_text(seed, lm_sentences, held_out, vocab_size)
    write_text_atomic(lm_dir / "lm-text.txt", "".join(s + "\n" for s in lm_text))
    write_text_atomic(marker, json.dumps(params, sort_keys=True) + "\n")
    return ls_dir


def render_all(jobs: Sequence[UtteranceJob], corpus_seed: int, nj: int, progress: bool) -> dict[str, tuple]:
    """Render and write every job's FLAC (``nj`` processes); ``utt_id -> (seconds, phones, condition)``."""
    results: dict[str, tuple[float, list, dict]] = {}
    started = time.monotonic()
    audio_s = 0.0
    for job in jobs:
        Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            logs.progress(total=len(jobs), unit="utt", desc="synthesize", disable=not progress, dynamic_ncols=True)
        )
        if nj <= 1:
            _init_worker(corpus_seed)
            outputs: Iterable = map(_run_job, jobs)
        else:  # spawn: never fork a parent that may hold threads (torch) or a loaded espeak
            pool = stack.enter_context(
                mp.get_context("spawn").Pool(nj, initializer=_init_worker, initargs=(corpus_seed,))
            )
            outputs = pool.imap_unordered(_run_job, jobs, chunksize=4)
        for utt_id, dur, phones, cond in outputs:
            results[utt_id] = (dur, phones, cond)
            audio_s += dur
            bar.update(1)
            bar.set_postfix(
                audio_h=f"{audio_s / 3600:.2f}", xRT=f"{audio_s / max(time.monotonic() - started, 1e-9):.0f}"
            )
    return results


def _write_metadata(
    ls_dir: Path,
    speakers: list[Speaker],
    transcripts: dict[str, str],
    where: dict[str, tuple[str, str, str]],
    results: dict[str, tuple[float, list, dict]],
) -> None:
    """trans.txt, phones.ctm, conditions.tsv and SPEAKERS.TXT (sorted, deterministic)."""
    minutes = write_chapters(ls_dir, transcripts, where, results)
    for subset in SUBSETS:
        write_conditions(ls_dir / subset, where, results)
    write_text_atomic(ls_dir / "SPEAKERS.TXT", speakers_table(speakers, minutes))


def write_chapters(
    ls_dir: Path,
    transcripts: dict[str, str],
    where: dict[str, tuple[str, str, str]],
    results: dict[str, tuple[float, list, dict]],
) -> dict[str, float]:
    """Each chapter's trans.txt and phones.ctm; returns the minutes of speech of each speaker."""
    chapters: dict[tuple[str, str, str], list[str]] = {}
    for utt_id in sorted(where):
        chapters.setdefault(where[utt_id], []).append(utt_id)
    minutes: dict[str, float] = {}
    for (subset, spk, ch), utts in sorted(chapters.items()):
        folder = ls_dir / subset / spk / ch
        write_text_atomic(folder / f"{spk}-{ch}.trans.txt", "".join(f"{u} {transcripts[u]}\n" for u in utts))
        ctm = [line for u in utts for line in _format_ctm(u, results[u][1])]
        write_text_atomic(folder / f"{spk}-{ch}.phones.ctm", "\n".join(ctm) + "\n")
        minutes[spk] = minutes.get(spk, 0.0) + sum(results[u][0] for u in utts) / 60
    return minutes


def write_conditions(subset_dir: Path, where: dict[str, tuple[str, str, str]], results: dict) -> None:
    """``<subset_dir>/conditions.tsv`` of the utterances of that subset."""
    rows = ["utt_id\tcondition\tnoise\tsnr_db\trt60_s\n"]
    for utt_id in sorted(u for u, w in where.items() if w[0] == subset_dir.name):
        c = results[utt_id][2]
        rows.append(f"{utt_id}\t{c['condition']}\t{c['noise']}\t{c['snr_db']}\t{c['rt60_s']}\n")
    subset_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(subset_dir / "conditions.tsv", "".join(rows))


def speakers_table(speakers: Sequence[Speaker], minutes: dict[str, float]) -> str:
    """SPEAKERS.TXT: the speakers with speech in ``minutes``, by id."""
    lines = [
        "; Synthetic speakers (espeak-ng), in the format of LibriSpeech's SPEAKERS.TXT\n",
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
    ]
    for spk in sorted(speakers, key=lambda s: s.speaker_id):
        if str(spk.speaker_id) in minutes:
            lines.append(
                f"{spk.speaker_id:<5}| {spk.sex} | {spk.subset:<16} | {minutes[str(spk.speaker_id)]:5.2f} | "
                f"{spk.description}\n"
            )
    return "".join(lines)
