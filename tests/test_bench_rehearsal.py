"""benchmarks/bench_rehearsal.py: what a stage measurement means, the sizes read from outputs, the estimate's
arithmetic (checked against figures worked out by hand) and the rehearsal config's sizes."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from asrdistill.config import read_yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_rehearsal", ROOT / "benchmarks" / "bench_rehearsal.py")
bench = sys.modules["bench_rehearsal"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(bench)

CONF = ROOT / "recipes" / "librispeech" / "conf"

# two children of ~120 MB alive at once, each burning ~0.3 s of CPU: a max of 120 MB, a sum of 240 MB
_TWO_WORKERS = """
import subprocess, sys
child = ("import time; b = b'x' * (120 * 2**20); t = time.process_time()\\n"
         "while time.process_time() - t < 0.3: pass\\ntime.sleep(1.2)")
procs = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(2)]
sys.exit(sum(p.wait() for p in procs) + int(sys.argv[1]))
"""


def test_measure_takes_the_largest_process_the_sum_and_the_tree_cpu(tmp_path):
    m = bench.measure([sys.executable, "-c", _TWO_WORKERS, "0"], tmp_path, tmp_path / "log" / "a.log")
    assert m["rc"] == 0 and m["wall_s"] >= 1.2
    assert m["cpu_s"] >= 0.55  # both grandchildren's CPU, reaped through their parent
    assert 120 <= m["max_rss_mb"] < 200  # the largest single process, not the two together
    assert m["sum_rss_mb"] >= 235  # sampled while both were alive
    failed = bench.measure([sys.executable, "-c", _TWO_WORKERS, "3"], tmp_path, tmp_path / "log" / "b.log")
    assert failed["rc"] == 3


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_sizes_are_read_from_the_stage_outputs(tmp_path):
    conf = tmp_path / "conf" / "c.yaml"
    _write(conf, "recipe: {train_set: tr, dev_set: dv, test_set: ts}\n")
    _write(
        tmp_path / "data/fbank/tr/feats.manifest.json", {"shards": [{"num_frames": 500_000}, {"num_frames": 220_000}]}
    )
    _write(tmp_path / "data/tr/spk2utt", "s1 u1 u2\ns2 u3\n")
    _write(tmp_path / "data/lang/lexicon.txt", "<UNK> SPN\nA AH\nA EY\nB B IY\n")
    _write(tmp_path / "exp/tri/tree_info.json", {"num_pdfs": 2345})
    _write(tmp_path / "exp/lm/lm.json", {"ngram_counts": [100, 2000, 3000]})
    _write(
        tmp_path / "exp/graph/graph.json",
        {"HCLG_states": 7, "HCLG_arcs": 9, "build_cpu_seconds": 12.5, "peak_rss_mb": 800.0},
    )
    for name, frames in (
        ("baseline_seed1", 1000),
        ("baseline_seed2", 3000),
        ("baseline_seed3", 5000),
        ("sweep_T2_hw0.333", 7000),
        ("student_seed1", 11000),
    ):
        _write(tmp_path / "exp" / name / "train_result.json", {"train_frames": frames})
    _write(tmp_path / "exp/baseline_seed1/metrics.json", {"decode_rtf": 0.02})
    _write(tmp_path / "exp/ensemble/metrics.json", {"decode_rtf": 0.04})
    sizes = bench.read_sizes(tmp_path, conf)
    assert sizes["frames_train"] == 720_000 and sizes["hours_train"] == 2.0 and "frames_dev" not in sizes
    assert (sizes["speakers_train"], sizes["utterances_train"]) == (2, 3)
    assert (sizes["lexicon_words"], sizes["pronunciations"]) == (3, 4)
    assert (sizes["senones"], sizes["lm_words"], sizes["ngrams"]) == (2345, 100, 5100)
    assert (sizes["hclg_arcs"], sizes["graph_cpu_s"]) == (9, 12.5)
    assert (sizes["models_baseline"], sizes["dnn_frames_baseline"]) == (1, 1000)
    assert (sizes["models_teachers"], sizes["dnn_frames_teachers"]) == (2, 8000)
    assert (sizes["models_students"], sizes["dnn_frames_students"]) == (2, 18000)
    assert sizes["search_rtf_per_core"] == pytest.approx(0.03)


def test_recipe_counts_follow_run_sh_loops():
    gpu = bench.recipe_counts(read_yaml(CONF / "librispeech_gpu.yaml"))  # 10 teachers, 3 seeds, 4 T, 2 hw
    assert (gpu["models_teachers"], gpu["models_students"], gpu["models_fraction"]) == (9, 4 + 1 + 3 + 1, 2)
    assert (gpu["decoded_systems"], gpu["network_passes"], gpu["dev_scales"]) == (17, 26, 4)
    cpu = bench.recipe_counts(read_yaml(CONF / "synthetic_cpu.yaml"))  # one (T, hard weight): no sweep
    assert (cpu["models_students"], cpu["sweep_networks"], cpu["decoded_systems"]) == (3 + 1, 0, 4 + 1 + 1 + 3 + 2)
    large = bench.recipe_counts(read_yaml(CONF / "synthetic_large.yaml"))
    assert all(large[f"models_{role}"] >= 1 for role in bench.TRAINED)  # every stage has work to time


def test_every_run_sh_stage_has_a_role(tmp_path):
    roles = bench.stage_roles(ROOT / "recipes" / "librispeech" / "run.sh")
    assert sorted(roles.values()) == sorted(bench.ROLES)  # each once, whatever their numbers
    (tmp_path / "run.sh").write_text('if want 0; then begin 0 "corpus ($corpus)"\nif want 1; then begin 1 "pruning"\n')
    with pytest.raises(ValueError, match="stage 1 .'pruning'. is unknown"):
        bench.stage_roles(tmp_path / "run.sh")


def test_rehearsal_config_is_real_size():
    r = read_yaml(CONF / "synthetic_large.yaml")
    assert r["recipe"]["hours"] >= 5 and r["recipe"]["num_speakers"] >= 150
    assert r["recipe"]["vocab_size"] >= 20_000 and r["tree"]["num_leaves"] >= 2000
    gpu = read_yaml(CONF / "librispeech_gpu.yaml")
    assert (r["decode"]["beam"], r["decode"]["max_active"]) == (gpu["decode"]["beam"], gpu["decode"]["max_active"])


def _runs() -> dict:
    """A rehearsal of 1 h train + 0.1 h dev + 0.1 h test with round numbers; stage k is the k-th role."""
    sizes = {
        "frames_train": 360_000,
        "frames_dev": 36_000,
        "frames_test": 36_000,
        "hours_train": 1.0,
        "hours_dev": 0.1,
        "hours_test": 0.1,
        "lexicon_words": 20_000,
        "ngrams": 500_000,
        "graph_cpu_s": 100.0,
        "graph_peak_rss_mb": 1024.0,
        "search_rtf_per_core": 0.05,
    }
    cpu = {
        "corpus": 5,
        "lang": 20,
        "fbank": 12,
        "mono": 80,
        "tri": 300,
        "graph": 160,
        "baseline": 50,
        "teachers": 50,
        "ensemble": 10,
        "students": 100,
        "fraction": 100,
        "evaluate": 400,
        "results": 2,
    }
    return {
        role: bench.StageRun(k, role, role, 0, c, c, 100, 100, 1.0, sizes if role == "results" else {})
        for k, (role, c) in enumerate(cpu.items())
    }


def _configs() -> tuple[dict, dict]:
    recipe = {"num_teachers": 2, "student_seeds": 1, "temperatures": [2], "hard_weights": [0.333]}
    here = {
        "recipe": recipe,
        "train": {"epochs": 2},
        "tri": {"realign_iters": [10, 15], "max_gaussians": 10000},
        "decode": {"sweep_scales": [0.1, 0.12]},
    }
    there = {
        "recipe": recipe
        | {"num_teachers": 10, "student_seeds": 3, "temperatures": [1, 2, 5, 10], "hard_weights": [0.333, 0.5]},
        "train": {"epochs": 20},
        "tri": {"realign_iters": [10, 20, 30], "max_gaussians": 40000},
        "decode": {"sweep_scales": [0.06, 0.08, 0.1, 0.12]},
    }
    return here, there


def test_estimate_matches_hand_worked_figures():
    """Each figure below is worked out by hand from _runs() and the target; a wrong ratio turns one red."""
    here, there = _configs()
    target = bench.Target(ngrams=2e6, cores=16, gpu_train_fps=2e5, gpu_infer_fps=6e5)
    rows = {r.stage: r for r in bench.estimate(_runs(), here, there, target)}
    assert rows["0 corpus"].seconds == pytest.approx(7000 / 50)  # 7 GB at 50 MB/s
    assert rows["1 data dirs, lang"].seconds == pytest.approx(20 * 200_000 / 20_000)  # lexicon words x10, one process
    assert rows["2 fbank"].seconds == pytest.approx(12 * 111.4 / 1.2 / 16)  # audio hours, over 16 cores
    assert rows["3 mono"].seconds == pytest.approx(80 * 100.6 / 16)  # train frames
    assert rows["4 tri + labels"].seconds == pytest.approx(
        300 * 100.6 * (4 / 3) * 4 / 16
    )  # frames, passes 4/3, Gaussians x4
    assert rows["5 LM"].seconds == pytest.approx(60 * 4)  # (160 - 100 graph) s x n-grams x4
    assert rows["5 HCLG"].seconds == pytest.approx(100 * 4)
    assert "~4.0 GB there" in rows["5 HCLG"].note
    train_frames = 100.6 * 360_000
    assert rows["6 baseline (GPU)"].seconds == pytest.approx(train_frames * 20 / 2e5)  # 1 model x 20 epochs
    assert rows["7 teachers (GPU)"].seconds == pytest.approx(train_frames * 9 * 20 / 2e5)
    assert rows["9 students (GPU)"].seconds == pytest.approx(train_frames * 9 * 20 / 2e5)  # 4 T 1 hw 3 seeds 1 indep.
    assert rows["8 ensemble (GPU)"].seconds == pytest.approx((100.6 + 5.4) * 360_000 * 10 / 6e5)
    decoded_s = 17 * (5.4 * 4 + 5.4) * 3600  # 17 systems, dev x 4 scales + test
    assert rows["11 search (CPU)"].seconds == pytest.approx(0.05 * decoded_s / 16)
    assert rows["11 networks (GPU)"].seconds == pytest.approx(10.8 * 360_000 * (26 + 5) / 6e5)
    assert rows["12 results"].seconds == 2
    table = bench.estimate_table(list(rows.values()))
    total = sum(r.seconds for r in rows.values())
    assert f"**{bench._fmt_s(total)}**" in table
    assert "ASSUMED" in rows["6 baseline (GPU)"].rule and "x train frames 36.2M/360k (x101)" in rows["3 mono"].rule
    assert math.isclose(sum(float(line.split("|")[4].strip(" %")) for line in table.splitlines()[2:-3]), 100, abs_tol=3)


def test_estimate_grows_with_the_target_and_shrinks_with_cores():
    here, there = _configs()
    base = {r.stage: r.seconds for r in bench.estimate(_runs(), here, there, bench.Target())}
    big = bench.Target(hours={"train": 201.2, "dev": 5.4, "test": 5.4}, cores=32)
    bigger = {r.stage: r.seconds for r in bench.estimate(_runs(), here, there, big)}
    assert bigger["3 mono"] == pytest.approx(base["3 mono"])  # twice the frames on twice the cores
    assert bigger["6 baseline (GPU)"] == pytest.approx(2 * base["6 baseline (GPU)"])
    assert bigger["5 HCLG"] == pytest.approx(base["5 HCLG"])  # the graph does not see the audio
