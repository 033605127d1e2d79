"""A voice-shift test set for the synthetic corpus: its test sentences spoken by voices of another kind.

The corpus's dev and test talkers are unseen *speakers* (voice+variant pairs no training talker uses), but they
are made by the same synthesisers as the training talkers. This set measures a shift in *kind*: every talker uses
an espeak-ng variant whose synthesiser no corpus talker uses. A variant file (``espeak-ng-data/voices/!v/<name>``)
picks its synthesiser with ``klatt N``: none is espeak's own harmonic synthesiser, ``N`` one of the Klatt
cascade-parallel synthesiser's voicing sources (1 impulsive, 2 natural, 3 and 4 sampled glottal pulses, 5
sawtooth, 6 the speechPlayer Klatt of espeak-ng builds that include it; the wheel's klatt6 sounds unlike every
other kind). The corpus uses kinds {none, 1, 3, 4} (klatt, klatt3, klatt4); this set
uses only variants of kinds 2, 5 and 6, which the corpus never does, so the default corpus is unchanged.
Each utterance is left clean, gets additive noise or gets reverberation (equal odds), both from
:mod:`asrdistill.data.augment` (generated white/pink noise; pyroomacoustics rooms): other simulators than the
corpus's own.

    asrdistill synth-shift-set --corpus data/corpus          # -> data/corpus/LibriSpeech/test_shift
    asrdistill prepare --corpus data/corpus --subsets test_shift --out data

Output: ``LibriSpeech/test_shift/<SPK>/<CH>/<SPK>-<CH>-<UTT>.flac`` and ``.trans.txt`` (sentences of the corpus's
test set), ``conditions.tsv`` (the corpus's columns), ``speakers.tsv`` (talker, variant, its kind, parameters), and
``<corpus>/.shift.done`` (its parameters and the corpus's, written last).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from asrdistill.data.augment import AugmentConfig, add_noise, colored_noise, make_rirs, reverberate
from asrdistill.data.espeak import engine
from asrdistill.fileio import write_text_atomic
from data_prep import synthetic
from data_prep.synthetic import SAMPLE_RATE, Speaker

SUBSET = "test_shift"
MARKER = ".shift.done"
# variants whose synthesiser (klatt N) no corpus talker uses; kinds checked by check_held_out
SHIFT_VARIANTS = ("klatt2", "klatt5", "klatt6", "edward", "david", "adam")
CONDITIONS = ("clean", "noise", "reverb")
_SPEAKER_IDS = range(9000, 10000)  # the corpus draws its talkers from 100..8999
_CHAPTER_IDS = range(300000, 400000)  # and its chapters from 10000..299999


def _variant_file(variant: str) -> Path:
    import espeakng_loader

    return Path(espeakng_loader.get_data_path()) / "voices" / "!v" / variant


def synthesiser_kind(variant: str) -> int:
    """The ``klatt N`` of an espeak-ng variant file (0: espeak's own synthesiser), read from the wheel's data.

    A variant without a file is 0 too: espeak-ng then speaks with the voice alone (file names are case-sensitive:
    ``en-us+michael`` sounds exactly as ``en-us``, the file is ``Michael``).
    """
    path = _variant_file(variant)
    if not path.is_file():
        return 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "klatt":
            return int(words[1])
    return 0


def check_held_out(corpus_variants: Iterable[str], shift_variants: Iterable[str] = SHIFT_VARIANTS) -> set[int]:
    """The shift set's synthesiser kinds; raises if a corpus variant shares one (or is one of its variants), or if a
    shift variant has no file (espeak would silently use the plain voice)."""
    corpus_variants, shift_variants = set(corpus_variants), set(shift_variants)
    missing = sorted(v for v in shift_variants if not _variant_file(v).is_file())
    if missing:
        raise ValueError(f"voice-shift variant(s) {missing} not in espeak-ng's data ({_variant_file('').parent})")
    shift_kinds = {synthesiser_kind(v) for v in shift_variants}
    if 0 in shift_kinds:
        raise ValueError(f"voice-shift variants {sorted(shift_variants)} include one of espeak's own synthesiser")
    shared = sorted(v for v in corpus_variants if v in shift_variants or synthesiser_kind(v) in shift_kinds)
    if shared:
        raise ValueError(
            f"corpus variant(s) {shared} use a synthesiser of the voice-shift set (klatt {sorted(shift_kinds)}): "
            "the shift set would not be held out"
        )
    return shift_kinds


@dataclass(frozen=True)
class _Job:
    utt_id: str
    path: str
    transcript: str
    spoken: str
    speaker: Speaker
    seed: int
    condition: str  # one of CONDITIONS
    noise: str  # white | pink | -
    snr_db: float | None
    rir: np.ndarray | None
    rt60_s: float | None  # the RIR's, measured


def make_shift_speakers(seed: int, num_speakers: int) -> list[Speaker]:
    """``num_speakers`` talkers cycling through :data:`SHIFT_VARIANTS`, accents and prosody as the corpus draws."""
    rng = random.Random(f"shift-speakers-{seed}")
    ids = rng.sample(_SPEAKER_IDS, num_speakers)
    out = []
    for i, spk_id in enumerate(ids):
        warp = rng.uniform(0.9, 1.12)
        out.append(
            Speaker(
                speaker_id=spk_id,
                sex="F" if warp > 1.02 else "M",
                subset=SUBSET,
                voice=rng.choice(synthetic._VOICES),
                variant=SHIFT_VARIANTS[i % len(SHIFT_VARIANTS)],
                pitch=rng.randint(25, 75),
                pitch_range=rng.randint(30, 90),
                rate=rng.randint(140, 195),
                source_rate=int(round(22050 * warp / 50)) * 50,
            )
        )
    return out


def render(job: _Job) -> np.ndarray:
    """One utterance: espeak at the talker's settings, resampled by its warp, padded, then its condition; int16."""
    spk, rng = job.speaker, np.random.default_rng(job.seed)
    syn = engine().synthesize(
        job.spoken,
        f"{spk.voice}+{spk.variant}",
        rate=spk.rate,
        pitch=spk.pitch,
        pitch_range=spk.pitch_range,
        seed=job.seed,
    )
    speech = synthetic._resample(syn.audio / 32768.0, spk.source_rate)
    pad = [np.zeros(int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)) for _ in range(2)]
    x = np.concatenate([pad[0], speech, pad[1]])
    if job.condition == "noise":
        x = add_noise(x, colored_noise(rng, len(x), job.noise), job.snr_db)
    elif job.condition == "reverb":
        x = reverberate(x, job.rir)
    power = float(np.mean(speech**2)) + 1e-12
    x = x + rng.standard_normal(len(x)) * math.sqrt(power / 10**5.5)  # the corpus's -55 dB floor
    x = x * 10 ** (rng.uniform(-30.0, -18.0) / 20) / math.sqrt(power)
    x = x * min(1.0, 0.97 / (np.max(np.abs(x)) + 1e-12))
    return np.round(x * 32767).astype(np.int16)


def _run(job: _Job) -> str:
    synthetic._write_flac(Path(job.path), render(job))
    return job.utt_id


def _test_sentences(corpus_dir: Path, params: dict) -> list[tuple[str, str]]:
    """(transcript, spoken text) of the corpus's test utterances, re-planned from its marker (no synthesis)."""
    speakers = synthetic.make_speakers(
        params["seed"], params["num_speakers"], params["dev_fraction"], params["test_fraction"]
    )
    check_held_out({s.variant for s in speakers} | set(synthetic._MALE_VARIANTS + synthetic._FEMALE_VARIANTS))
    jobs, transcripts, where = synthetic._plan(
        corpus_dir / "LibriSpeech",
        speakers,
        params["hours"],
        params["seed"],
        params["dev_fraction"],
        params["test_fraction"],
        params.get("vocab_size", 0),
    )
    return [(transcripts[j.utt_id], j.spoken) for j in jobs if where[j.utt_id][0] == "test"]


def _plan(corpus_dir: Path, params: dict, seed: int, num_speakers: int, num_utterances: int) -> list[_Job]:
    """Which test sentence each talker says and under which condition (all from ``seed``)."""
    from pyroomacoustics.experimental import measure_rt60

    sentences = _test_sentences(corpus_dir, params)
    rng = random.Random(f"shift-{seed}")
    picked = rng.sample(sentences, min(num_utterances, len(sentences)))
    speakers = make_shift_speakers(seed, num_speakers)
    chapters = rng.sample(_CHAPTER_IDS, num_speakers)
    rirs = make_rirs(AugmentConfig(num_rirs=8, rt60_s=[0.3, 0.9], seed=seed))
    rt60s = [float(measure_rt60(h, SAMPLE_RATE)) for h in rirs]
    jobs = []
    for i, (transcript, spoken) in enumerate(picked):
        spk, ch = speakers[i % num_speakers], chapters[i % num_speakers]
        utt_id = f"{spk.speaker_id}-{ch}-{i // num_speakers:04d}"
        condition = rng.choice(CONDITIONS)
        room = rng.randrange(len(rirs))
        jobs.append(
            _Job(
                utt_id=utt_id,
                path=str(corpus_dir / "LibriSpeech" / SUBSET / str(spk.speaker_id) / str(ch) / f"{utt_id}.flac"),
                transcript=transcript,
                spoken=spoken,
                speaker=spk,
                seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
                condition=condition,
                noise=rng.choice(("white", "pink")) if condition == "noise" else "-",
                snr_db=round(rng.uniform(5.0, 20.0), 1) if condition == "noise" else None,
                rir=rirs[room] if condition == "reverb" else None,
                rt60_s=rt60s[room] if condition == "reverb" else None,
            )
        )
    return jobs


def synthesize_shift_set(
    corpus_dir: str | Path,
    num_speakers: int = 12,
    num_utterances: int = 600,
    seed: int = 0,
    nj: int = 2,
    force: bool = False,
) -> Path:
    """Build (or reuse) ``<corpus_dir>/LibriSpeech/test_shift`` from the synthetic corpus in ``corpus_dir``.

    ``num_utterances`` of the corpus's test sentences (all of them if fewer), spread over ``num_speakers`` talkers
    of :data:`SHIFT_VARIANTS`. Reused when its parameters and the corpus's are those of the last build; rebuilt
    (it is derived data) when either changed, or with ``force``. Same parameters => the same files whatever ``nj``.
    """
    corpus_dir = Path(corpus_dir)
    try:
        corpus = json.loads((corpus_dir / synthetic.MARKER).read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{corpus_dir}: no finished synthetic corpus ({synthetic.MARKER}: {e})") from e
    if corpus.get("format") != synthetic.FORMAT_VERSION:
        raise ValueError(f"{corpus_dir}: corpus format {corpus.get('format')}, expected {synthetic.FORMAT_VERSION}")
    if num_speakers < 1 or num_utterances < 1:
        raise ValueError("num_speakers and num_utterances must be >= 1")
    params = {"corpus": corpus, "num_speakers": num_speakers, "num_utterances": num_utterances, "seed": seed}
    marker, out = corpus_dir / MARKER, corpus_dir / "LibriSpeech" / SUBSET
    if not force and marker.is_file() and json.loads(marker.read_text()) == params:
        return out
    marker.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    jobs = _plan(corpus_dir, params["corpus"], seed, num_speakers, num_utterances)
    for job in jobs:
        Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    if nj <= 1:
        list(map(_run, jobs))
    else:  # spawn: espeak is process-global (see asrdistill.data.espeak)
        with mp.get_context("spawn").Pool(nj) as pool:
            list(pool.imap_unordered(_run, jobs, chunksize=4))
    _write_metadata(out, jobs)
    write_text_atomic(marker, json.dumps(params, sort_keys=True) + "\n")
    return out


def _write_metadata(out: Path, jobs: list[_Job]) -> None:
    """trans.txt per chapter, conditions.tsv and speakers.tsv (sorted)."""
    chapters: dict[Path, list[_Job]] = {}
    for job in jobs:
        chapters.setdefault(Path(job.path).parent, []).append(job)
    for folder, members in sorted(chapters.items()):
        lines = sorted(f"{j.utt_id} {j.transcript}\n" for j in members)
        write_text_atomic(folder / f"{folder.parent.name}-{folder.name}.trans.txt", "".join(lines))
    rows = ["utt_id\tcondition\tnoise\tsnr_db\trt60_s\n"]
    for j in sorted(jobs, key=lambda j: j.utt_id):
        snr = "-" if j.snr_db is None else f"{j.snr_db:.1f}"
        rows.append(f"{j.utt_id}\t{j.condition}\t{j.noise}\t{snr}\t{'-' if j.rt60_s is None else f'{j.rt60_s:.2f}'}\n")
    write_text_atomic(out / "conditions.tsv", "".join(rows))
    speakers = {j.speaker.speaker_id: j.speaker for j in jobs}
    lines = ["speaker\tvariant\tklatt\tdescription\n"]
    for spk in sorted(speakers.values(), key=lambda s: s.speaker_id):
        lines.append(f"{spk.speaker_id}\t{spk.variant}\t{synthesiser_kind(spk.variant)}\t{spk.description}\n")
    write_text_atomic(out / "speakers.tsv", "".join(lines))
