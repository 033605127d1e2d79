"""Recordings longer than the model's limit: cut in pauses, decoded, joined into one line in the file's time base."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from graph_paths import pdf_sequence
from test_bundle import SR, _bundle, _system, recipe  # noqa: F401 - recipe is a fixture
from test_decode import UTTS

from asrdistill.data.shards import iter_shard
from asrdistill.decoding.bundle import load_system
from asrdistill.decoding.long_audio import plan_segments

FRAMES_PER_STATE = 5
GAP = 0.6  # seconds of near-silence between concatenated utterances
LIMIT = 3.0  # the model's limit in these tests (a bundle's features.max_duration)


def _bin_hz(b: int, bins: int = 40, low: float = 20.0, high: float = SR / 2) -> float:
    """Centre frequency of mel bin ``b`` (Kaldi's mel scale)."""
    mel = lambda f: 1127.0 * np.log(1 + f / 700.0)  # noqa: E731
    m = mel(low) + (b + 1) * (mel(high) - mel(low)) / (bins + 1)
    return float(700.0 * (np.exp(m / 1127.0) - 1))


class ToneSystem:
    """Audio that spells senones: each non-silence senone a tone in its own mel bin, silence near-silent; and the
    posteriors that read them back from the features (frame by frame, nothing learnt), so what a decode outputs
    depends on the audio alone, and long recordings and their parts can be compared word for word and in time."""

    def __init__(self, task):
        lang, tree, topo, _ = task
        self.lang, self.tree, self.topo = lang, tree, topo
        sil = lang.phone_id[lang.silence_phones[0]]
        self.sil = {p for p, info in enumerate(tree.pdf_info) if any(ph == sil for ph, _ in info)}
        self.bin = {p: 4 + 2 * p for p in range(tree.num_pdfs)}
        self.pdf_of_bin = {b: p for p, b in self.bin.items()}

    def utterance(self, name: str) -> tuple[np.ndarray, list[str], list[float]]:
        """(samples, words, each word's start in seconds) of test_decode's utterance ``name``."""
        prons, text = UTTS[name]
        pdfs = pdf_sequence(prons, self.lang, self.tree, self.topo, FRAMES_PER_STATE)
        hz = np.repeat([0.0 if p in self.sil else _bin_hz(self.bin[p]) for p in pdfs], SR // 100)
        tone = 0.3 * np.sin(2 * np.pi * np.cumsum(hz) / SR) * (hz > 0)
        samples = (tone + 1e-4 * np.random.default_rng(0).normal(size=hz.size)).astype(np.float32)
        starts, frame = [], 0
        for pron in prons:
            if pron != ("SIL",):
                starts.append(frame / 100.0)
            frame += sum(self.topo.num_states[self.lang.phone_id[p]] for p in pron) * FRAMES_PER_STATE
        return samples, text.split(), starts

    def posteriors(self, feats):
        for path in feats.shard_paths:
            for utt, sample in iter_shard(path):
                x = sample["feats"].astype(np.float32)
                logp = np.full((len(x), self.tree.num_pdfs), -40.0, np.float32)
                for t, row in enumerate(x):
                    if row.max() < 12.0:  # near-silence: any silence senone
                        logp[t, sorted(self.sil)] = 0.0
                    else:
                        b = int(np.argmax(row))
                        logp[t, self.pdf_of_bin.get(b, self.pdf_of_bin.get(b - 1, 0))] = 0.0
                yield utt, logp


def _silence(seconds: float) -> np.ndarray:
    return (1e-4 * np.random.default_rng(1).normal(size=int(seconds * SR))).astype(np.float32)


@pytest.fixture
def tone_system(recipe, tmp_path):  # noqa: F811
    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    system.fbank = replace(system.fbank, max_duration=LIMIT)  # a model limit the test's files exceed
    tones = ToneSystem(task)
    system.posteriors = tones.posteriors
    return system, tones


def _ctm(path):
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(r[0], float(r[2]), r[4]) for r in rows]


def test_a_long_recording_decodes_to_one_line_with_word_times_in_its_own_time_base(tone_system, tmp_path):
    system, tones = tone_system
    root = tmp_path / "mine"
    root.mkdir()
    parts, words, starts, offset = [_silence(GAP)], [], [], GAP
    for i in range(4):  # ~8 s: 12 utterances, three segments at least
        for name in UTTS:
            samples, w, s = tones.utterance(name)
            sf.write(root / f"{name}_{i}.wav", samples, SR)
            parts += [samples, _silence(GAP)]
            words += w
            starts += [offset + t for t in s]
            offset += len(samples) / SR + GAP
    sf.write(root / "long.wav", np.concatenate(parts), SR)
    sf.write(root / "too_long.wav", _silence(21.0), SR)
    report = system.decode_corpus(root, tmp_path / "out", max_seconds=20.0)

    text = dict(line.split(" ", 1) for line in (tmp_path / "out" / "text").read_text().splitlines())
    assert sorted(text) == sorted({f"{n}_{i}" for n in UTTS for i in range(4)} | {"long"})  # one line per file
    one_by_one = " ".join(text[f"{n}_{i}"] for i in range(4) for n in UTTS)
    assert text["long"] == one_by_one == " ".join(words)  # the same words as decoding the parts, in order
    ctm = [(t, w) for u, t, w in _ctm(tmp_path / "out" / "ctm") if u == "long"]
    assert [w for _, w in ctm] == words
    assert max(abs(t - s) for (t, _), s in zip(ctm, starts)) < 0.1  # the file's time base, not the segment's
    assert starts[-1] > 2 * LIMIT  # so the later words' times include a segment's offset
    wav = dict(line.split(" ", 1) for line in (tmp_path / "out" / "data" / "wav.scp").read_text().splitlines())
    segments = [u for u in wav if u.startswith("long-")]
    assert len(segments) >= 3 and report.notes["long"].startswith(f"cut into {len(segments)} segments")
    assert all(Path(wav[u]).is_file() and ".staging" not in wav[u] for u in segments)  # kept with the data dir
    assert [(u, r) for u, _, r in report.skipped] == [
        ("too_long", "21.0 s is longer than the maximum 20 s (--max-seconds)")
    ]
    files = {
        row.split("\t")[1]: row.split("\t")[2:]
        for row in (tmp_path / "out" / "files.tsv").read_text().split("\n")[1:-1]
    }
    assert files["long"][0] == "decoded" and files["long"][1].startswith("cut into")
    assert files["too_long"] == ["skipped", ""]


def test_segments_stay_within_the_limit_cover_the_recording_and_cut_in_pauses():
    rng = np.random.default_rng(0)
    speech = lambda s: (0.3 * rng.normal(size=int(s * SR))).astype(np.float32)  # noqa: E731
    pause_at = []
    parts = []
    for length in (1.3, 2.2, 0.7, 1.9, 2.5, 1.1, 2.0):
        parts.append(speech(length))
        pause_at.append(sum(len(p) for p in parts))
        parts.append(np.zeros(int(0.4 * SR), np.float32))
    x = np.concatenate(parts)
    ranges = plan_segments(x, SR, LIMIT)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(x) and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert len(ranges) > 1 and all(b - a <= LIMIT * SR for a, b in ranges)
    for _, cut in ranges[:-1]:  # each cut inside one of the 0.4 s pauses
        assert any(p <= cut <= p + 0.4 * SR for p in pause_at), cut
    no_pause = plan_segments(speech(10.0), SR, LIMIT)  # continuous: cut at the quietest frame, still within
    assert no_pause[-1][1] == 10 * SR and all(0.25 * LIMIT * SR <= b - a <= LIMIT * SR for a, b in no_pause)
