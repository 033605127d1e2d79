"""benchmarks/bench_low_rate.py end to end on the tests' tone bundle: copies at low rates decoded beside the
originals, each row scored on the same utterances and its upsampled files counted."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import librosa
import pytest
import soundfile as sf
from test_bundle import SR, recipe  # noqa: F401 - recipe is a fixture
from test_decode import UTTS
from test_long_audio import tone_system  # noqa: F401 - tone_system is a fixture

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_low_rate.py"
_spec = importlib.util.spec_from_file_location("bench_low_rate", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _corpus(tones, root):
    """Six utterances at 16 kHz but u1_0 at 22.05 kHz: an original with a note ("downsampled") of another kind."""
    root.mkdir()
    refs = {}
    for i in range(2):
        for name in UTTS:
            samples, words, _ = tones.utterance(name)
            rate = 22050 if f"{name}_{i}" == "u1_0" else SR
            if rate != SR:
                samples = librosa.resample(samples, orig_sr=SR, target_sr=rate)
            sf.write(root / f"{name}_{i}.wav", samples, rate)
            refs[f"{name}_{i}"] = words
    (root / "text").write_text("".join(f"{u} {' '.join(w)}\n" for u, w in refs.items()))
    return refs


def test_each_rate_is_decoded_scored_and_its_upsampled_files_counted(tone_system, tmp_path, capsys):  # noqa: F811
    system, tones = tone_system
    refs = _corpus(tones, tmp_path / "test_set")
    rows = bench.run(system, tmp_path / "test_set", tmp_path / "work", [8000, 11025], max_utts=5, nj=1)
    first = sorted(refs)[:5]
    assert [r["rate"] for r in rows] == [f"{SR} (original)", "8000", "11025"]
    assert [r["utterances"] for r in rows] == [5, 5, 5]
    assert [r["words"] for r in rows] == [sum(len(refs[u]) for u in first)] * 3  # the same utterances each row
    assert [r["upsampled"] for r in rows] == [0, 5, 5]  # not the original's "downsampled" note
    assert rows[0]["wer"] == 0.0 and rows[0]["difference"] == 0.0  # the tone system reads its originals exactly
    assert all(r["difference"] == r["wer"] - rows[0]["wer"] for r in rows)
    for rate in (8000, 11025):
        copies = sorted((tmp_path / "work" / f"audio_{rate}").glob("*.flac"))
        assert [c.stem for c in copies] == first and {sf.info(c).samplerate for c in copies} == {rate}
        for c in copies:  # the same sound at the lower rate, not the same samples relabelled
            assert abs(sf.info(c).duration - sf.info(tmp_path / "test_set" / f"{c.stem}.wav").duration) < 1e-3
        notes = [
            line.split("\t")[3]
            for line in (tmp_path / "work" / f"decode_{rate}" / "files.tsv").read_text().splitlines()[1:]
        ]
        assert (
            notes
            == [f"upsampled from {rate} Hz to {SR} Hz (the band above the file's is missing: expect more errors)"] * 5
        )
    table = capsys.readouterr().out.splitlines()[-4:]
    assert "upsampled" in table[0] and table[2].split()[:2] == ["8000", "5"] and table[2].split()[-1] == "5"


def test_rates_at_or_above_the_models_are_refused(tone_system, tmp_path):  # noqa: F811
    system, tones = tone_system
    _corpus(tones, tmp_path / "test_set")
    with pytest.raises(ValueError, match=r"--rates \[16000\]: .* below the model's 16000 Hz"):
        bench.run(system, tmp_path / "test_set", tmp_path / "work", [8000, 16000], max_utts=None, nj=1)


def test_help_runs():
    out = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--model" in out and "--rates" in out and "--max-utts" in out
