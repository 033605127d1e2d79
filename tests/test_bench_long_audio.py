"""benchmarks/bench_long_audio.py end to end on the tests' tone bundle: long recordings built from utterances,
decoded both ways, compared in words and in time."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import soundfile as sf
from test_bundle import SR, recipe  # noqa: F401 - recipe is a fixture
from test_decode import UTTS
from test_long_audio import LIMIT, tone_system  # noqa: F401 - tone_system is a fixture

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_long_audio.py"
_spec = importlib.util.spec_from_file_location("bench_long_audio", BENCH)
bench = sys.modules["bench_long_audio"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(bench)


def test_long_recordings_decode_like_their_parts_with_times_in_place(tone_system, tmp_path, capsys):  # noqa: F811
    system, tones = tone_system
    corpus = tmp_path / "test_set"
    corpus.mkdir()
    refs = []
    for i in range(4):
        for name in UTTS:
            samples, words, _ = tones.utterance(name)
            sf.write(corpus / f"{name}_{i}.wav", samples, SR)
            refs.append(f"{name}_{i} {' '.join(words)}\n")
    (corpus / "text").write_text("".join(refs))
    figures = bench.run(system, corpus, tmp_path / "work", minutes=0.12, gap=0.5, max_files=5, nj=1)
    joined = [line.split(" ", 1)[0] for line in (tmp_path / "work" / "long" / "text").read_text().splitlines()]
    assert len(joined) == 3  # 12 utterances of 0.3-1.2 s and their pauses: 15.5 s, cut at >= 7.2 s
    assert figures["segments"] >= 2 * (7.2 // LIMIT + 1)  # the two 7.2 s recordings cut within the model's limit
    assert figures["wer_long"] == figures["wer_one_by_one_joined"] == figures["wer_one_by_one"] == 0.0
    assert figures["words_matched"] == sum(len(t.split()) - 1 for t in refs)  # every word, in order
    assert figures["offset_max"] < 0.1 and figures["within_0.1s"] == 1.0
    assert "difference (long - one by one, joined):  +0.00 points" in capsys.readouterr().out


def test_help_runs():
    out = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--model" in out and "--minutes" in out
