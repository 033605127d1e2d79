"""Boundary scoring of benchmarks/bench_aligner.py on a handmade truth ctm and phone alignment."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from asrdistill.data.shards import ShardManifest, write_shard

_spec = importlib.util.spec_from_file_location(
    "bench_aligner", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_aligner.py"
)
bench = sys.modules["bench_aligner"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(bench)

PHONES = ["<eps>", "SIL", "SPN", "AA", "T", "L"]


def _alignment(segments: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    """Per-frame phone ids and 3-state left-to-right states for ``[(phone, frames)]``."""
    phone = np.concatenate([np.full(n, PHONES.index(p)) for p, n in segments]).astype(np.int32)
    state = np.concatenate([np.minimum(np.arange(n) * 3 // n, 2) for _, n in segments]).astype(np.int32)
    return {"phone": phone, "state": state}


def test_clean_and_all_condition_scores(tmp_path, capsys):
    subset = tmp_path / "LibriSpeech" / "dev"
    (subset / "1" / "2").mkdir(parents=True)
    truth = [("SIL", 0.0, 0.1), ("t", 0.1, 0.1), ("A:", 0.2, 0.15), ("l", 0.35, 0.1), ("SIL", 0.45, 0.15)]
    (subset / "1" / "2" / "1-2.phones.ctm").write_text(
        "".join(f"{u} 1 {s:.3f} {d:.3f} {p}\n" for u in ("1-2-0000", "1-2-0001", "1-2-0002") for p, s, d in truth)
    )
    (subset / "conditions.tsv").write_text("utt_id\tcondition\n1-2-0000\tclean\n1-2-0001\tnoise\n1-2-0002\tclean\n")
    ali = tmp_path / "ali"
    ali.mkdir()
    samples = [
        # frame t ends at t*10 ms + 7.5 ms: errors 7.5, 7.5, 27.5 (A:|l), 7.5 (l|SIL) ms
        ("1-2-0000", _alignment([("SIL", 10), ("T", 10), ("AA", 17), ("L", 8), ("SIL", 15)])),
        # every boundary 5 frames late: 57.5, 57.5, 77.5, 57.5 ms
        ("1-2-0001", _alignment([("SIL", 15), ("T", 10), ("AA", 17), ("L", 8), ("SIL", 10)])),
        ("1-2-0002", {"phone": np.zeros(0, np.int32), "state": np.zeros(0, np.int32)}),  # skipped by the aligner
        ("9-9-0000", _alignment([("SIL", 20)])),  # no truth
    ]
    ShardManifest(ali, "ali", [write_shard(ali / "ali-000000.tar", samples)]).save()

    ref, clean = bench.read_truth(subset)
    assert clean == {"1-2-0000", "1-2-0002"}
    boundaries = bench.alignment_boundaries(ali, ref, PHONES)
    assert sorted(boundaries) == ["1-2-0000", "1-2-0001"]

    c = bench.BoundaryScore.of(boundaries, clean)
    assert (c.utterances, c.matched, c.total_ref) == (1, 4, 4)
    assert c.within_20ms == pytest.approx(0.75) and c.mean_abs_ms == pytest.approx(12.5)
    assert c.within_20ms_no_approx == pytest.approx(1.0) and c.mean_abs_ms_no_approx == pytest.approx(7.5)

    a = bench.BoundaryScore.of(boundaries)
    assert (a.utterances, a.matched, a.total_ref) == (2, 8, 8)
    assert a.within_20ms == pytest.approx(3 / 8) and a.mean_abs_ms == pytest.approx(37.5)
    assert a.within_20ms_no_approx == pytest.approx(0.5) and a.mean_abs_ms_no_approx == pytest.approx(32.5)

    bench.print_boundary_tables(tmp_path / "LibriSpeech", PHONES, [("dev", "tri", ali)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("dev ")]
    assert [r[:4] for r in rows] == [["dev", "tri", "75.0%", "12.5"], ["dev", "tri", "37.5%", "37.5"]]
