"""End to end: the LibriSpeech recipe on a minutes-long synthetic corpus with the tiny config, then its optional
specialists stage on top of the finished run."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "librispeech"


def _run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's `asrdistill`
    return subprocess.run(
        ["bash", str(workdir / "run.sh"), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=1500
    )


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("recipe")
    shutil.copy(RECIPE / "run.sh", work / "run.sh")
    shutil.copytree(RECIPE / "conf", work / "conf")
    proc = _run(work, "--config", "conf/tiny.yaml", "--nj", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work, proc


def test_every_stage_leaves_its_outputs(recipe_run):
    work, proc = recipe_run
    for n in range(14):
        assert f"Stage {n}:" in proc.stdout
    assert "Stage 11: specialists skipped (specialists.enabled is not true" in proc.stdout  # tiny.yaml: off
    expected = [
        "data/corpus/LibriSpeech/train",
        "data/train/wav.scp",
        "data/lang/phones.txt",
        "data/fbank/train/feats.manifest.json",
        "data/fbank/train/cmvn.json",
        "exp/mono/final.pt",
        "exp/mono/ali/ali.manifest.json",
        "exp/tri/tree.json",
        "exp/tri/topo.json",
        "exp/tri_ali/train/pdf.manifest.json",
        "exp/tri_ali/dev/pdf.manifest.json",
        "exp/tri_ali/test/pdf.manifest.json",
        "exp/lm/lm.json",
        "exp/graph/HCLG.fst",
        "exp/baseline_seed1/best.pt",
        "exp/baseline_seed2/best.pt",
        "exp/ensemble/members.txt",
        "exp/ensemble/fidelity.json",
        "exp/ensemble/soft_T1/soft.manifest.json",
        "exp/ensemble/soft_T2/soft.manifest.json",
        "exp/sweep_T1_hw0.333/best.pt",
        "exp/sweep_T2_hw0.333/best.pt",
        "exp/student_seed1/best.pt",
        "exp/student_seed2/best.pt",
        "exp/fraction_hard/best.pt",
        "exp/fraction_soft/best.pt",
        "exp/student_seed1/frames_test.npz",
        "exp/student_seed1/decode_test/wer.json",
        "exp/results.md",
        "exp/results.json",
        "exp/results.png",
    ]
    missing = [p for p in expected if not (work / p).exists()]
    assert not missing


def test_results_table_has_every_system_with_finite_numbers(recipe_run):
    work, _ = recipe_run
    data = json.loads((work / "exp/results.json").read_text(), parse_constant=lambda c: pytest.fail(f"JSON {c}"))
    systems = {s["system"]: s for s in data["systems"]}
    decoded = {
        "baseline_seed1",
        "baseline_seed2",
        "ensemble",
        "student_seed1",
        "student_seed2",
        "fraction_hard",
        "fraction_soft",
    }
    assert decoded <= set(systems) and {s for s in systems if s.startswith("sweep_T")} >= {
        "sweep_T1_hw0.333",
        "sweep_T2_hw0.333",
    }
    for name in decoded:
        for key in ("dev_frame_acc", "test_frame_acc", "dev_wer", "test_wer"):
            assert math.isfinite(systems[name][key]), (name, key)
        assert 0 <= systems[name]["test_frame_acc"] <= 100 and systems[name]["params"] > 0
    assert systems["ensemble"]["params"] == 2 * systems["baseline_seed1"]["params"]
    assert data["groups"]["baseline"]["test_frame_acc"]["n"] == 2 and "std" in data["groups"]["student"]["test_wer"]
    for key in ("ensemble_gain_test_frame_acc", "kept_share_test_frame_acc", "student_gain_test_wer"):
        assert {"value", "ci_low", "ci_high"} <= set(data["comparison"][key]), key
    assert set(data["fidelity"]) == {"1", "2"}
    assert all(r["fidelity"] >= 0.97 for r in data["fidelity"].values())  # auto k or dense: the student sees T
    assert "paper: 10x ensemble" in (work / "exp/results.md").read_text()


def test_soft_targets_beat_hard_labels_on_a_fraction_of_the_data(recipe_run):
    """The science, end to end (the paper's section 6): with a fraction of the training labels, a model
    trained on the ensemble's soft targets beats the same model trained on the hard labels. This is the
    effect large enough to show on the tiny corpus; it fails if the soft targets reach the student
    wrong (misaligned, wrong temperature, truncated to nothing)."""
    work, _ = recipe_run
    data = json.loads((work / "exp/results.json").read_text())
    assert data["fraction"]["soft"] > data["fraction"]["hard"] + 2.0, data["fraction"]


def test_rerun_skips_finished_stages_and_bad_options_fail(recipe_run):
    work, _ = recipe_run
    before = (work / "exp/baseline_seed1/best.pt").stat().st_mtime_ns
    proc = _run(work, "--config", "conf/tiny.yaml", "--stage", "6", "--stop-stage", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "exp/baseline_seed1/best.pt").stat().st_mtime_ns == before  # finished run: a no-op
    bad = _run(work, "--no-such-option")
    assert bad.returncode != 0 and "unknown option" in bad.stderr


def test_bundles_decode_new_audio_as_evaluation_did(recipe_run, tmp_path):
    """A folder of the test set's FLAC files (no transcripts) decoded with the ensemble's bundle gives
    evaluation's test hypotheses; the LibriSpeech folder itself also gets a %WER report."""
    work, _ = recipe_run
    decoded = {p.parent.name for p in (work / "exp").glob("*/decode_test")} - {"specialists"}  # no bundle: below
    assert "ensemble" in decoded and decoded == {
        p.parent.parent.name for p in (work / "exp").glob("*/bundle/manifest.json")
    }
    mine = tmp_path / "mine"
    mine.mkdir()
    for flac in (work / "data/corpus/LibriSpeech/test").rglob("*.flac"):
        shutil.copy(flac, mine / flac.name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for corpus, out in ((mine, tmp_path / "dec"), (work / "data/corpus/LibriSpeech/test", tmp_path / "dec_ref")):
        proc = subprocess.run(
            [
                "asrdistill",
                "decode",
                "--model",
                str(work / "exp/ensemble/bundle"),
                "--corpus",
                str(corpus),
                "--out",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    hyp = (work / "exp/ensemble/decode_test/hyp.txt").read_text().splitlines()
    assert sorted((tmp_path / "dec/text").read_text().splitlines()) == sorted(hyp)
    assert (tmp_path / "dec/ctm").is_file() and not (tmp_path / "dec/report.txt").exists()
    wer = json.loads((work / "exp/ensemble/metrics.json").read_text())["test_wer"]
    assert (tmp_path / "dec_ref/report.txt").read_text().startswith(f"%WER {wer:.2f} ")


# --------------------------------------------------------------------------- the optional specialists stage

SPECIALISTS = "specialists:\n  enabled: true\n  num_groups: 4\n  max_group_size: 10\n  epochs: 1\n"


@pytest.fixture(scope="module")
def specialists_run(recipe_run):
    """The finished tiny run again from stage 11 with specialists enabled (as conf/synthetic_specialists.yaml on
    the README run): stage 11 trains them and their student, stages 12-13 add the two systems."""
    work, _ = recipe_run
    (work / "conf/tiny_specialists.yaml").write_text((work / "conf/tiny.yaml").read_text() + SPECIALISTS)
    before = {s: (work / f"exp/{s}/metrics.json").stat().st_mtime_ns for s in ("baseline_seed1", "ensemble")}
    proc = _run(work, "--config", "conf/tiny_specialists.yaml", "--stage", "11", "--nj", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work, proc, before


def test_specialists_stage_runs_before_decoding_and_adds_two_systems(specialists_run):
    work, proc, before = specialists_run
    starts = [
        proc.stdout.index(f"Stage {n}: {what}")
        for n, what in ((11, "specialists for confusable senones"), (12, "decode and score"), (13, "results"))
    ]
    assert starts == sorted(starts)
    jobs = {name: (work / f"exp/jobs/stage12_{name}.txt").read_text().splitlines() for name in ("evaluate", "bundle")}
    evaluated = {line.split(" --threads")[0].split()[-1] for line in jobs["evaluate"]}
    assert {"exp/specialists", "exp/student_from_specialists", "exp/baseline_seed1"} <= evaluated
    bundled = {t.removesuffix("/bundle") for line in jobs["bundle"] for t in line.split() if t.endswith("/bundle")}
    assert "exp/student_from_specialists" in bundled and "exp/specialists" not in bundled  # a bundle holds DNNs
    # the other systems' evaluations are reused: their inputs did not change
    assert before == {s: (work / f"exp/{s}/metrics.json").stat().st_mtime_ns for s in before}


def test_specialists_rows_are_in_the_results_with_intervals(specialists_run):
    work, _, _ = specialists_run
    data = json.loads((work / "exp/results.json").read_text(), parse_constant=lambda c: pytest.fail(f"JSON {c}"))
    systems = {s["system"]: s for s in data["systems"]}
    assert systems["specialists"]["kind"] == "generalist+specialists"
    assert systems["student_from_specialists"]["kind"] == "student_from_specialists"
    assert systems["specialists"]["extra"]["generalist"] == "baseline_seed1"
    for name in ("specialists", "student_from_specialists"):
        for key in ("dev_frame_acc", "test_frame_acc", "dev_wer", "test_wer"):
            assert math.isfinite(systems[name][key]), (name, key)
    for key in ("specialists_gain", "student_from_specialists_gain", "student_from_specialists_vs_student"):
        for metric in ("frame_acc", "wer"):
            assert {"value", "ci_low", "ci_high"} <= set(data["comparison"][f"{key}_test_{metric}"]), key
    assert set(data["specialists"]["sets"]) == {"dev", "test"}
    md = (work / "exp/results.md").read_text()
    assert "| generalist+specialists |" in md and "| student_from_specialists |" in md
    assert "| test, in groups |" in md
    # the same combination through evaluate and through specialists-eval: one frame accuracy
    test = data["specialists"]["sets"]["test"]["generalist+specialists"]["acc"]
    assert systems["specialists"]["test_frame_acc"] == pytest.approx(100 * test, abs=1e-6)


def test_specialists_conf_is_the_readme_conf_with_specialists_on():
    import yaml

    main = yaml.safe_load((RECIPE / "conf/synthetic_cpu.yaml").read_text())
    spec = yaml.safe_load((RECIPE / "conf/synthetic_specialists.yaml").read_text())
    assert main["specialists"]["enabled"] is False and spec["specialists"]["enabled"] is True
    spec["specialists"]["enabled"] = False
    assert spec == main
