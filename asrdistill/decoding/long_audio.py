"""Recordings longer than the model's limit: cut in pauses, decoded as segments, joined back per file.

A bundle decodes utterances of at most its ``features.max_duration`` seconds (36 s
for LibriSpeech-trained systems: the length the training data, its CMVN and the
decoder's memory were sized for). A longer recording (a lecture, a meeting) is cut
into segments of at most that length, each decoded as an utterance of its own,
and their words are joined into one line per file with times in the file's own
time base: the segments' offsets are added to their word times.

Cuts fall in pauses, found with :func:`librosa.effects.split` (energy-based, a
dependency already; lhotse is not one, and its windows would cut through words
where this cuts between them): in each stretch, the cut is the middle of the
longest pause in the second half of the allowed length. A stretch without any
pause there is cut in the longest pause after a quarter of the length, and one
without any (continuous speech or noise) at its quietest 10 ms frame, so
segments never overlap and no word is decoded twice; a word cut in two that way
can be lost or misrecognised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from asrdistill.data.audio import AudioError, load_audio
from asrdistill.data.datadir import DataDir

__all__ = ["Segmented", "cut_long_recordings", "join_segments", "plan_segments"]

log = logging.getLogger(__name__)

TOP_DB = 35.0  # frames this far below the loudest are a pause (librosa.effects.split)


def plan_segments(samples: np.ndarray, sample_rate: int, limit_seconds: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges that cover ``samples`` in order, each at most ``limit_seconds`` long and
    cut in pauses (see the module docstring); the last one at least a quarter of the limit."""
    import librosa

    n, limit = len(samples), int(limit_seconds * sample_rate)
    if n <= limit:
        return [(0, n)]
    hop = sample_rate // 100
    speech = librosa.effects.split(samples, top_db=TOP_DB, frame_length=4 * hop, hop_length=hop)
    edges = [0, *speech.ravel().tolist(), n]
    pauses = list(zip(edges[0::2], edges[1::2]))  # before, between and after the speech intervals
    energy = librosa.feature.rms(y=samples, frame_length=4 * hop, hop_length=hop, center=False)[0]
    cuts = [0]
    while n - cuts[-1] > limit:
        hi = min(cuts[-1] + limit, n - limit // 4)
        for lo in (cuts[-1] + limit // 2, cuts[-1] + limit // 4):  # a long segment if a pause allows
            inside = [(max(a, lo), min(b, hi)) for a, b in pauses if min(b, hi) > max(a, lo)]
            if inside:
                a, b = max(inside, key=lambda p: p[1] - p[0])
                cuts.append((a + b) // 2)
                break
        else:
            lo = (
                cuts[-1] + limit // 2
            )  # the quietest frame whose centre (frame i spans [i hop, i hop + 4 hop)) lies in [lo, hi]
            first, last = max(-(-(lo - 2 * hop) // hop), 0), min((hi - 2 * hop) // hop + 1, len(energy))
            quiet = first + int(np.argmin(energy[first:last])) if last > first else (lo + hi) // 2 // hop - 2
            cuts.append(quiet * hop + 2 * hop)
    return list(zip(cuts, [*cuts[1:], n]))


@dataclass
class Segmented:
    """What :func:`cut_long_recordings` did: the data dir to featurize (segments in their recordings' place),
    each segment's recording and offset in seconds, the recordings it could not read, and a note per recording."""

    data: DataDir
    of: dict[str, tuple[str, float]] = field(default_factory=dict)  # segment -> (recording, offset s)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (utt, file, reason)
    notes: dict[str, str] = field(default_factory=dict)  # recording -> "cut into N segments ..."


def _segment_ids(utt: str, count: int, taken: set[str]) -> list[str]:
    """``<utt>-0000``, ``<utt>-0001``, ...; a ``-`` more while one of them is already an utterance id."""
    sep = "-"
    while any(f"{utt}{sep}{k:04d}" in taken for k in range(count)):
        sep += "-"
    return [f"{utt}{sep}{k:04d}" for k in range(count)]


def cut_long_recordings(
    data: DataDir, files: dict[str, str], limit_seconds: float, sample_rate: int, out_dir: Path
) -> Segmented:
    """Replace each utterance of ``data`` longer than ``limit_seconds`` (by ``utt2dur``) by its segments, written
    as ``out_dir/<segment>.flac`` (24-bit, at ``sample_rate``); ``files`` names the inputs in skip reasons."""
    long = [u for u in data.utt_ids if data.utt2dur.get(u, 0.0) > limit_seconds]
    out = Segmented(DataDir(dict(data.wav), dict(data.text), dict(data.utt2spk), dict(data.utt2dur)))
    taken = set(files) | set(data.wav)
    for utt in long:
        del out.data.wav[utt], out.data.utt2spk[utt], out.data.utt2dur[utt]
        out.data.text.pop(utt, None)  # a reference is the recording's, scored after the join
        try:
            samples = load_audio(data.wav[utt], sample_rate)
        except AudioError as e:
            out.skipped.append((utt, files.get(utt, data.wav[utt]), e.reason))
            continue
        ranges = plan_segments(samples, sample_rate, limit_seconds)
        out_dir.mkdir(parents=True, exist_ok=True)
        for seg, (a, b) in zip(_segment_ids(utt, len(ranges), taken), ranges):
            path = out_dir / f"{seg}.flac"
            sf.write(path, samples[a:b], sample_rate, subtype="PCM_24")
            out.data.wav[seg], out.data.utt2spk[seg] = str(path), data.utt2spk.get(utt, utt)
            out.data.utt2dur[seg] = (b - a) / sample_rate
            out.of[seg] = (utt, a / sample_rate)
        out.notes[utt] = f"cut into {len(ranges)} segments of at most {limit_seconds:g} s (the model's limit)"
    if out.notes:
        log.info(
            "%d recording(s) longer than the model's limit of %g s cut in pauses into %d segments (in %s)",
            len(out.notes),
            limit_seconds,
            len(out.of),
            out_dir,
        )
    return out


def join_segments(
    hyps: dict[str, list[str]],
    times: dict[str, list[tuple[float, float]]],
    segmented: Segmented,
    skipped: list[tuple[str, str, str]],
    files: dict[str, str],
) -> None:
    """Replace the segments' words and times (seconds) in ``hyps`` and ``times`` by their recordings', in order,
    times shifted by the segments' offsets; a recording with a segment in ``skipped`` is skipped as a whole
    (``skipped`` gets it instead of its segments, with the segment's span and reason)."""
    bad: dict[str, str] = {}
    for seg, _, reason in [s for s in skipped if s[0] in segmented.of]:
        utt, start = segmented.of[seg]
        end = start + segmented.data.utt2dur[seg]
        bad.setdefault(utt, f"its segment {start:.2f}-{end:.2f} s: {reason}")
    skipped[:] = [s for s in skipped if s[0] not in segmented.of]
    skipped += [(utt, files.get(utt, ""), reason) for utt, reason in bad.items()]
    for seg in sorted(segmented.of, key=lambda s: segmented.of[s]):
        utt, offset = segmented.of[seg]
        words, spans = hyps.pop(seg, []), times.pop(seg, [])
        if utt in bad:
            continue
        hyps.setdefault(utt, []).extend(words)
        times.setdefault(utt, []).extend((offset + a, offset + b) for a, b in spans)
