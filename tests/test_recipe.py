"""End to end: the LibriSpeech recipe on a minutes-long synthetic corpus with the tiny config."""

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
    return subprocess.run(["bash", str(workdir / "run.sh"), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=1500)


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
    for n in range(13):
        assert f"Stage {n}:" in proc.stdout
    expected = [
        "data/corpus/LibriSpeech/train", "data/train/wav.scp", "data/lang/phones.txt",
        "data/fbank/train/feats.manifest.json", "data/fbank/train/cmvn.json",
        "exp/mono/final.pt", "exp/mono/ali/ali.manifest.json", "exp/tri/tree.json", "exp/tri/topo.json",
        "exp/tri_ali/train/pdf.manifest.json", "exp/tri_ali/dev/pdf.manifest.json", "exp/tri_ali/test/pdf.manifest.json",
        "exp/lm/lm.json", "exp/graph/HCLG.fst", "exp/baseline/best.pt", "exp/teacher_2/best.pt",
        "exp/ensemble/members.txt", "exp/ensemble/soft_T1/soft.manifest.json", "exp/ensemble/soft_T2/soft.manifest.json",
        "exp/student_T1/best.pt", "exp/student_T2/best.pt", "exp/student/best.pt", "exp/fraction_hard/best.pt", "exp/fraction_soft/best.pt",
        "exp/results.md", "exp/results.json", "exp/results.png",
    ]
    missing = [p for p in expected if not (work / p).exists()]
    assert not missing


def test_results_table_has_every_system_with_finite_numbers(recipe_run):
    work, _ = recipe_run
    data = json.loads((work / "exp/results.json").read_text())
    systems = {s["system"]: s for s in data["systems"]}
    assert set(systems) == {"baseline", "teacher_2", "ensemble", "student_T1", "student_T2", "student",
                            "fraction_hard", "fraction_soft"}
    for s in systems.values():
        for key in ("dev_frame_acc", "test_frame_acc", "dev_wer", "test_wer"):
            assert math.isfinite(s[key]), (s["system"], key)
        assert 0 <= s["test_frame_acc"] <= 100 and s["params"] > 0
    assert systems["ensemble"]["params"] == 2 * systems["baseline"]["params"]
    assert "paper: 10x ensemble" in (work / "exp/results.md").read_text()


def test_rerun_skips_finished_stages_and_bad_options_fail(recipe_run):
    work, _ = recipe_run
    before = (work / "exp/baseline/best.pt").stat().st_mtime_ns
    proc = _run(work, "--config", "conf/tiny.yaml", "--stage", "6", "--stop-stage", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "exp/baseline/best.pt").stat().st_mtime_ns == before  # finished run: a no-op
    bad = _run(work, "--no-such-option")
    assert bad.returncode != 0 and "unknown option" in bad.stderr


def test_bundles_decode_new_audio_as_evaluation_did(recipe_run, tmp_path):
    """A folder of the test set's FLAC files (no transcripts) decoded with the ensemble's bundle gives
    evaluation's test hypotheses; the LibriSpeech folder itself also gets a %WER report."""
    work, _ = recipe_run
    decoded = {p.parent.name for p in (work / "exp").glob("*/decode_test")}
    assert "ensemble" in decoded and decoded == {p.parent.parent.name for p in (work / "exp").glob("*/bundle/manifest.json")}
    mine = tmp_path / "mine"
    mine.mkdir()
    for flac in (work / "data/corpus/LibriSpeech/test").rglob("*.flac"):
        shutil.copy(flac, mine / flac.name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for corpus, out in ((mine, tmp_path / "dec"), (work / "data/corpus/LibriSpeech/test", tmp_path / "dec_ref")):
        proc = subprocess.run(["asrdistill", "decode", "--model", str(work / "exp/ensemble/bundle"), "--corpus",
                               str(corpus), "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    hyp = (work / "exp/ensemble/decode_test/hyp.txt").read_text().splitlines()
    assert sorted((tmp_path / "dec/text").read_text().splitlines()) == sorted(hyp)
    assert (tmp_path / "dec/ctm").is_file() and not (tmp_path / "dec/report.txt").exists()
    wer = json.loads((work / "exp/ensemble/metrics.json").read_text())["test_wer"]
    assert (tmp_path / "dec_ref/report.txt").read_text().startswith(f"%WER {wer:.2f} ")
