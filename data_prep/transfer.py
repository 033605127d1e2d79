"""Unlabelled audio for distillation: a ``transfer`` subset of the synthetic corpus, spoken by new talkers.

Distillation needs inputs, not labels (Li et al. 2014: the teachers label untranscribed audio, and a student
trained on more of it matches them better). The synthetic corpus can make such audio cheaply, so
:func:`synthesize_transfer` adds ``LibriSpeech/transfer/`` to a finished corpus: new talkers drawn like training
talkers, never from a voice+variant of a dev or test talker and never a corpus speaker, reading sentences that no
train, dev or test utterance reads. The subset is in LibriSpeech layout, so ``asrdistill prepare`` and
``asrdistill features`` make ``data/transfer`` and ``data/fbank/transfer`` as for any other subset. It has
transcripts only because the layout requires them: nothing downstream reads them (the teachers label it,
:mod:`asrdistill.nnet.transfer`).

Real untranscribed audio takes the same path from a Kaldi data dir (``wav.scp`` and ``utt2spk``, no ``text``
needed; a plain folder of audio files becomes one with a line ``<utt> <path>`` per file in ``wav.scp`` and
``<utt> <speaker>`` in ``utt2spk``), a lhotse manifest (``asrdistill import-lhotse``) or a LibriSpeech-layout
folder (``asrdistill prepare``), e.g.::

    asrdistill import-data-dir /corpora/untranscribed data/transfer
    asrdistill features --config CONF data/transfer data/fbank/transfer

as long as none of its speakers is in the dev or test set (``label-transfer`` refuses utterance ids of the training
or dev set, but cannot know speakers).

Output (added to the corpus of :func:`data_prep.synthetic.synthesize_corpus`)::

    <out>/LibriSpeech/transfer/.synthetic.done   JSON of the parameters, written last (removed with the corpus)
    <out>/LibriSpeech/transfer/SPEAKERS.TXT      its talkers (the corpus' SPEAKERS.TXT is not touched)
    <out>/LibriSpeech/transfer/conditions.tsv
    <out>/LibriSpeech/transfer/<SPK>/<CH>/...    .flac, .trans.txt, .phones.ctm as in the other subsets
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Sequence

from asrdistill.fileio import write_text_atomic
from data_prep.synthetic import (
    _EST_UTT_SECONDS,
    MARKER,
    SUBSETS,
    Speaker,
    draw_speaker,
    make_speakers,
    plan_utterances,
    render_all,
    speakers_table,
    write_chapters,
    write_conditions,
)

__all__ = ["TRANSFER", "transfer_speakers", "check_transfer_speakers", "synthesize_transfer"]

TRANSFER = "transfer"  # the subset's folder name (and data dir name)
FORMAT_VERSION = 1


def transfer_speakers(corpus: Sequence[Speaker], num_speakers: int, seed: int) -> list[Speaker]:
    """``num_speakers`` new talkers (alternately female and male) for the transfer subset: ids no corpus speaker
    has, voice+variants no dev or test talker has, and no (voice, variant, warp) of a corpus talker."""
    rng = random.Random(f"transfer-speakers-{seed}")
    held_out = {(s.voice, s.variant) for s in corpus if s.subset != "train"}
    seen = {(s.voice, s.variant, round(s.warp, 2)) for s in corpus}
    free = sorted(set(range(100, 9000)) - {s.speaker_id for s in corpus})
    ids = rng.sample(free, num_speakers)
    speakers = [
        draw_speaker(rng, ids[i], "F" if i % 2 == 0 else "M", TRANSFER, held_out, seen) for i in range(num_speakers)
    ]
    check_transfer_speakers(corpus, speakers)
    return speakers


def check_transfer_speakers(corpus: Sequence[Speaker], transfer: Sequence[Speaker]) -> None:
    """Raise if a transfer talker is a corpus speaker or speaks with the voice+variant of a dev or test talker:
    the student would then hear, through the teachers' labels, the voices it is tested on."""
    ids = {s.speaker_id: s for s in corpus}
    held_out = {(s.voice, s.variant): s for s in corpus if s.subset != "train"}
    for t in transfer:
        if t.speaker_id in ids:
            raise ValueError(f"transfer talker {t.speaker_id} is the corpus' {ids[t.speaker_id].subset} speaker")
        held = held_out.get((t.voice, t.variant))
        if held is not None:
            raise ValueError(
                f"transfer talker {t.speaker_id} speaks with {t.voice}+{t.variant}, the voice of "
                f"{held.subset} speaker {held.speaker_id}"
            )


def _corpus_sentences(ls_dir: Path) -> set[str]:
    """Every transcript of the corpus' train, dev and test subsets."""
    out = set()
    for subset in SUBSETS:
        for trans in (ls_dir / subset).glob("*/*/*.trans.txt"):
            out.update(line.split(" ", 1)[1] for line in trans.read_text(encoding="utf-8").splitlines() if " " in line)
    return out


def synthesize_transfer(
    out_dir: Path, hours: float, num_speakers: int = 0, nj: int = 2, force: bool = False, progress: bool = True
) -> Path:
    """Add (or reuse) the transfer subset of the synthetic corpus in ``out_dir``; returns its folder.

    ``hours`` of new sentences by ``num_speakers`` new talkers (0: as many as the corpus has training talkers),
    seeded by the corpus' seed. A finished subset with the same parameters is reused; with other ones this raises
    unless ``force`` (then only the subset is rebuilt).
    """
    from data_prep.text import SentenceGenerator

    out_dir = Path(out_dir)
    ls_dir = out_dir / "LibriSpeech"
    corpus_marker = out_dir / MARKER
    if not corpus_marker.is_file():
        raise FileNotFoundError(f"{corpus_marker}: no finished synthetic corpus in {out_dir} (run synth-corpus)")
    if hours <= 0:
        raise ValueError(f"transfer hours must be positive, got {hours}")
    corpus = json.loads(corpus_marker.read_text())
    speakers = make_speakers(corpus["seed"], corpus["num_speakers"], corpus["dev_fraction"], corpus["test_fraction"])
    n = num_speakers or sum(s.subset == "train" for s in speakers)
    params = {"format": FORMAT_VERSION, "corpus": corpus, "hours": float(hours), "num_speakers": n}
    folder = ls_dir / TRANSFER
    marker = folder / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old == params:
            return folder
        if not force:
            raise FileExistsError(
                f"{folder} was made with {old}; asked for {params}. Use force=True (--force) to rebuild it."
            )
    if folder.exists():
        shutil.rmtree(folder)
    seed = corpus["seed"]
    talkers = transfer_speakers(speakers, n, seed)
    total = max(n, math.ceil(hours * 3600 / _EST_UTT_SECONDS))
    counts = {s.speaker_id: total // n + (i < total % n) for i, s in enumerate(talkers)}
    chapter_ids = random.Random(f"transfer-chapters-{seed}").sample(range(10000, 300000), 2 * n)
    gen = SentenceGenerator(corpus.get("vocab_size", 0))
    text_rng = random.Random(f"transfer-utterances-{seed}")
    used = _corpus_sentences(ls_dir)
    jobs, transcripts, where = plan_utterances(ls_dir, talkers, counts, chapter_ids, gen, text_rng, used, [seed, 1])
    results = render_all(jobs, seed, nj, progress)
    minutes = write_chapters(ls_dir, transcripts, where, results)
    write_conditions(folder, where, results)
    write_text_atomic(folder / "SPEAKERS.TXT", speakers_table(talkers, minutes))
    write_text_atomic(marker, json.dumps(params, sort_keys=True) + "\n")
    return folder
