import json
import math

from asrdistill.results import SystemResult, collect_results, kept_share


def test_kept_share():
    assert math.isclose(kept_share(58.9, 61.1, 60.8), 1.9 / 2.2)
    assert math.isnan(kept_share(60.0, 59.0, 61.0))  # no ensemble gain: share undefined


def test_collect_results_table_plot_and_share(tmp_path):
    systems = [
        SystemResult("baseline", "baseline", 100, 70.0, 70.0, 20.0, 21.0),
        SystemResult("teacher_1", "teacher", 100, 70.5, 70.2, 19.0, 20.0),
        SystemResult("ensemble", "ensemble", 400, 74.0, 74.0, 17.0, 18.0),
        SystemResult("student_T1", "student", 100, 71.0, 71.0, 19.0, 19.5, extra={"temperature": 1}),
        SystemResult("student_T2", "student", 100, 73.0, 73.5, 18.0, 18.5, extra={"temperature": 2}),
    ]
    for s in systems:
        s.save(tmp_path / s.system / "metrics.json")
    out = collect_results(tmp_path, [s.system for s in systems] + ["not_run"])
    summary = out["summary"]
    assert summary["best_student"] == "student_T2"  # chosen on dev, not test
    assert math.isclose(summary["kept_share_test_frame_acc"], 3.5 / 4.0)
    md = (tmp_path / "results.md").read_text()
    assert "| student_T2 | 100 | 73.00 | 73.50 |" in md and "paper: 10x ensemble" in md and "keeps 88%" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert [s["system"] for s in data["systems"]] == [s.system for s in systems]
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
