"""run.sh stage 7 hands its trainings to `asrdistill run-jobs` (--nj at a time, --threads each, a jobs file in
exp/jobs/), reruns as a no-op, fails naming the failing command; under torchrun (--gpus 2) they run serially."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_ddp import RECIPE, data  # noqa: F401 - the module-scoped frame set (fixture)

ROOT = Path(__file__).resolve().parents[1]


def _recipe(data: Path, work: Path) -> Path:
    """run.sh with stage 4's labels and stage 2's features in place, and three teachers (stage 7: seeds 2 and 3)."""
    shutil.copy(RECIPE / "run.sh", work / "run.sh")
    shutil.copytree(RECIPE / "conf", work / "conf")
    tiny = (work / "conf/tiny.yaml").read_text()
    assert "num_teachers: 2" in tiny
    (work / "conf/tiny.yaml").write_text(tiny.replace("num_teachers: 2", "num_teachers: 3"))
    for name in ("train", "dev"):
        shutil.copytree(data / name / "feats", work / "data/fbank" / name)
        shutil.copytree(data / name / "labels", work / "exp/tri_ali" / name)
    shutil.copy(data / "cmvn.json", work / "data/fbank/train/cmvn.json")
    return work


def _run(work: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        ["bash", "run.sh", "--config", "conf/tiny.yaml", "--stage", "7", "--stop-stage", "7", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_stage_7_runs_its_trainings_through_run_jobs(data, tmp_path):  # noqa: F811
    work = _recipe(data, tmp_path)
    proc = _run(work, "--nj", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = (work / "exp/jobs/stage7.txt").read_text().splitlines()
    assert [j.split("--out ")[1].split()[0] for j in jobs] == ["exp/baseline_seed2", "exp/baseline_seed3"]
    threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) // 2)
    assert all(j.startswith("train ") and j.endswith(f"--threads {threads}") for j in jobs)
    assert "2 job(s) in exp/jobs/stage7.txt, 2 at a time" in proc.stdout
    done = {s: (work / f"exp/baseline_seed{s}/best.pt").stat().st_mtime_ns for s in (2, 3)}
    assert _run(work, "--nj", "2").returncode == 0  # finished jobs: no-ops
    assert done == {s: (work / f"exp/baseline_seed{s}/best.pt").stat().st_mtime_ns for s in (2, 3)}
    shutil.rmtree(work / "exp/baseline_seed3")
    (work / "exp/baseline_seed3").write_text("not a folder")  # this job fails; seed 2's is a no-op
    proc = _run(work, "--nj", "2")
    assert proc.returncode != 0 and "FAILED in stage 7" in proc.stdout
    assert "1 of 2 job(s) failed: train " in proc.stderr and "--out exp/baseline_seed3" in proc.stderr


def test_stage_7_under_torchrun_runs_the_jobs_file_serially(data, tmp_path):  # noqa: F811
    work = _recipe(data, tmp_path)
    proc = _run(work, "--gpus", "2", ASRDISTILL_DEVICE="cpu")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len((work / "exp/jobs/stage7.txt").read_text().splitlines()) == 2
    for seed in (2, 3):
        ckpt = torch.load(work / f"exp/baseline_seed{seed}/last.pt", map_location="cpu", weights_only=True)
        assert ckpt["world_size"] == 2


def _stub_asrdistill(bin_dir: Path) -> None:
    """An `asrdistill` that answers config-get for real and accepts every other command without running it."""
    bin_dir.mkdir()
    stub = bin_dir / "asrdistill"
    stub.write_text(
        f'#!/usr/bin/env bash\nif [ "$1" = config-get ]; then exec {sys.executable} -m asrdistill.cli "$@"; fi\n'
        'if [ "$1" = best-student ]; then echo "5 0.5"; fi\nexit 0\n'
    )
    stub.chmod(0o755)


@pytest.mark.parametrize("fixed", [True, False])
def test_stage_9_trains_no_sweep_when_the_config_fixes_one_setting(tmp_path, fixed):
    shutil.copy(RECIPE / "run.sh", tmp_path / "run.sh")
    shutil.copytree(RECIPE / "conf", tmp_path / "conf")
    conf = yaml.safe_load((tmp_path / "conf/tiny.yaml").read_text())
    if fixed:
        conf["recipe"].update(temperatures=[2], hard_weights=[0.0])
    (tmp_path / "conf/tiny.yaml").write_text(yaml.safe_dump(conf))
    _stub_asrdistill(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["bash", "run.sh", "--config", "conf/tiny.yaml", "--stage", "9", "--stop-stage", "10"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {p.stem: p.read_text() for p in (tmp_path / "exp/jobs").glob("*.txt")}
    students = [j for j in jobs["stage9_students"].splitlines() if "--role student" in j]
    assert len(students) == conf["recipe"]["student_seeds"]
    setting = "--temperature 2 --hard-weight 0.0" if fixed else "--temperature 5 --hard-weight 0.5"
    assert all(setting in line for line in students + jobs["stage10"].splitlines()[1:])
    assert ("stage9_sweep_T" in jobs) == (not fixed) and "--out exp/independent_baseline" in "".join(jobs.values())
