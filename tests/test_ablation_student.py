"""benchmarks/ablation_student.py: each row is compared with the README run's baselines, ensemble and independent
baseline, its best epoch's dev KL is the one it keeps, and the table marks the dev-best row of each lever."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from test_results import _system

from asrdistill.results import INDEPENDENT

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ablation_student", ROOT / "benchmarks" / "ablation_student.py")
ablation = sys.modules["ablation_student"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(ablation)


def _epochs(system_dir: Path, kls: list[float]) -> None:
    lines = [{"step": 1, "loss": 1.0}] + [{"epoch": e, "dev_acc": 0.5, "dev_kl": kl} for e, kl in enumerate(kls)]
    (system_dir / "log").mkdir()
    (system_dir / "log" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_rows_are_compared_with_the_readme_systems_and_the_dev_best_row_is_marked(tmp_path):
    exp = tmp_path / "exp"
    rng = np.random.default_rng(0)
    for seed in (1, 2):
        _system(exp, f"baseline_seed{seed}", "baseline", 50.0, 20.0, rng, seed)
    _system(exp, "ensemble", "ensemble", 60.0, 18.0, rng)
    _system(exp, INDEPENDENT, INDEPENDENT, 50.0, 20.0, rng, 3)
    _system(exp, "student_seed1", "student", 55.0, 19.0, rng, 101, dev_acc=55.0)
    _system(exp, "ablation/T5", "student", 58.0, 19.0, rng, 101, dev_acc=54.0)
    for name, kls in (("student_seed1", [0.9, 0.5, 0.7]), ("ablation/T5", [0.8, 0.6, 0.4])):
        _epochs(exp / name, kls)  # _system's best epoch is 6: absent here, so no KL; set one that exists
        metrics = json.loads((exp / name / "metrics.json").read_text())
        metrics["extra"]["best_epoch"] = 1
        metrics["system"] = Path(name).name  # as evaluate writes it: the folder's own name
        (exp / name / "metrics.json").write_text(json.dumps(metrics))
    rows = [ablation.compare_row(tmp_path, r) for r in ablation.ROWS if r.name in ("adopted", "T5")]
    adopted, t5 = rows
    assert adopted["dev_kl_best_epoch"] == 0.5 and t5["dev_kl_best_epoch"] == 0.6  # the epoch it keeps
    assert 0.3 < adopted["kept_share_test"]["value"] < 0.7 < t5["kept_share_test"]["value"] < 0.95
    assert adopted["kept_share_dev"] == 0.5  # (55 - 50) / (60 - 50) on dev
    md = ablation.markdown(rows, "# t")  # T5 is alone in its lever, judged against the adopted row
    assert "| T5 | T = 5 |" in md and "(dev-best)" not in md  # not chosen on dev though it is better on test
    assert "| -1.00 |" in md  # T5's dev accuracy against the adopted row's (54 - 55)
    rows[1]["dev_frame_acc"] = 56.0
    md = ablation.markdown(rows, "# t")
    assert "| T5 (dev-best) | T = 5 |" in md and "| +1.00 |" in md
    assert "independent baseline" in md
