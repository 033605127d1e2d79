"""The compression sweep (issue 26): compression.sh's trainings (sizes, kinds, seeds, the students' T and hard
weight), and the results' "Compression" table and plot: kept share and gain over the hard twin on a known case,
then a whole table from synthetic systems."""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_results import _system

from asrdistill import cli
from asrdistill.fileio import write_json_atomic
from asrdistill.nnet.targets import train_config
from asrdistill.results import SystemResult, collect_results
from asrdistill.results_compression import pareto_front

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "librispeech"


def _trained(root: Path, name: str, layers: int, width: int) -> None:
    """The ``train_config.json`` evaluation leaves beside a trained system: its architecture."""
    write_json_atomic(root / name / "train_config.json", {"model": {"hidden_layers": layers, "hidden_dim": width}})


def _fixed(root: Path, name: str, kind: str, acc: int, errors: int, params: int, ms: float, utts: int = 20) -> None:
    """A system whose every test utterance has ``acc`` of 100 frames right and ``errors`` of 10 words wrong: its
    bootstrap draws are all equal, so intervals collapse onto the values."""
    ids = [f"u{i:03d}" for i in range(utts)]
    (root / name).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        root / name / "frames_test.npz",
        utts=np.array(ids),
        lengths=np.full(utts, 100),
        preds=np.zeros(100 * utts, dtype=np.int32),
        correct=np.full(utts, acc),
        labelled=np.full(utts, 100),
    )
    write_json_atomic(root / name / "decode_test" / "wer.json", {"per_utt": {u: [errors, 10] for u in ids}})
    SystemResult(
        name, kind, params, acc, acc, 10 * errors, 10 * errors, ms / 1e5, extra={"test_set": "test", "epochs": 5}
    ).save(root / name / "metrics.json")


def test_kept_share_and_gain_over_the_twin_on_a_known_case(tmp_path):
    """Baselines 60%, ensemble 64%: a 2x32 student at 63% keeps (63 - 60) / (64 - 60) = 75% and gains 2 points over
    its 61% twin; the full-size student (62%) keeps 50% and gains 2 over the baselines. WER: 20% vs 30%."""
    systems = {
        "baseline_seed1": ("baseline", 60, 3, 552_280, 2.7),
        "baseline_seed2": ("baseline", 60, 3, 552_280, 2.7),
        "ensemble": ("ensemble", 64, 2, 4 * 552_280, 10.8),
        "student_seed1": ("student", 62, 3, 552_280, 2.7),
        "compress_2x32_student_seed1": ("compression_student", 63, 2, 54_168, 0.3),
        "compress_2x32_student_seed2": ("compression_student", 63, 2, 54_168, 0.3),
        "compress_2x32_hard_seed1": ("compression_hard", 61, 3, 54_168, 0.3),
        "compress_2x32_hard_seed2": ("compression_hard", 61, 3, 54_168, 0.3),
    }
    for name, args in systems.items():
        _fixed(tmp_path, name, *args)
        _trained(tmp_path, name, *((2, 32) if name.startswith("compress") else (3, 256)))
    sizes = collect_results(tmp_path, list(systems))["compression"]["sizes"]
    small, full = sizes
    assert (small["size"], full["size"], full["full_size"]) == ("2x32", "3x256", True)
    for entry, share, acc_gain, wer_gain in ((small, 0.75, 2.0, -10.0), (full, 0.5, 2.0, 0.0)):
        for key, value in (
            ("kept_share_test_frame_acc", share),
            ("twin_gain_test_frame_acc", acc_gain),
            ("twin_gain_test_wer", wer_gain),
        ):
            iv = entry[key]
            assert iv["value"] == pytest.approx(value) and iv["ci_low"] == pytest.approx(value), key
            assert iv["ci_high"] == pytest.approx(value), key
    assert small["params_share_of_teacher"] == pytest.approx(54_168 / 552_280)
    assert small["nn_ms_per_s"] == pytest.approx(0.3) and full["nn_ms_per_s"] == pytest.approx(2.7)
    assert small["student_on_pareto_front"] and not full["student_on_pareto_front"]  # 63% for a ninth of the cost


def test_no_ensemble_gain_means_no_kept_share(tmp_path):
    systems = {
        "baseline_seed1": ("baseline", 60, 3, 100, 1.0),
        "ensemble": ("ensemble", 60, 3, 200, 2.0),
        "compress_1x8_student_seed1": ("compression_student", 59, 3, 10, 0.1),
        "compress_1x8_hard_seed1": ("compression_hard", 58, 3, 10, 0.1),
    }
    for name, args in systems.items():
        _fixed(tmp_path, name, *args)
    (entry,) = collect_results(tmp_path, list(systems))["compression"]["sizes"]
    assert math.isnan(entry["kept_share_test_frame_acc"]["value"]) and entry["size"] == "10 params"
    assert entry["twin_gain_test_frame_acc"]["value"] == pytest.approx(1.0)


def test_a_size_without_its_twins_is_listed_without_a_comparison(tmp_path):
    systems = {
        "baseline_seed1": ("baseline", 60, 3, 100, 1.0),
        "ensemble": ("ensemble", 64, 3, 200, 2.0),
        "compress_1x8_student_seed1": ("compression_student", 63, 3, 10, 0.1),
    }
    for name, args in systems.items():
        _fixed(tmp_path, name, *args)
    (entry,) = collect_results(tmp_path, list(systems))["compression"]["sizes"]
    assert entry["student_test_frame_acc"]["mean"] == 63 and "kept_share_test_frame_acc" not in entry
    assert "| 10 params | 10 (10%) |" in (tmp_path / "results.md").read_text()


def test_pareto_front():
    points = [(1.0, 50.0), (2.0, 55.0), (2.0, 54.0), (3.0, 53.0), (0.5, math.nan), (4.0, 60.0), (1.0, 50.0)]
    assert pareto_front(points) == [0, 1, 5, 6]  # equal points do not beat each other


def test_compression_table_and_plot_from_synthetic_systems(tmp_path):
    rng = np.random.default_rng(3)
    names = []
    for kind, acc, seeds in (("baseline", 60.0, 2), ("student", 63.0, 2)):
        for seed in range(1, seeds + 1):
            names.append(f"{kind}_seed{seed}")
            _system(tmp_path, names[-1], kind, acc, 14.0, rng, seed)
            _trained(tmp_path, names[-1], 3, 256)
    _system(tmp_path, "ensemble", "ensemble", 64.0, 12.0, rng)
    names.append("ensemble")
    for width, student, hard in ((32, 61.5, 57.0), (128, 62.5, 59.5)):
        for seed in (1, 2):
            for kind, acc in (("student", student), ("hard", hard)):
                names.append(f"compress_2x{width}_{kind}_seed{seed}")
                _system(tmp_path, names[-1], f"compression_{kind}", acc, 14.0, rng, seed)
                _trained(tmp_path, names[-1], 2, width)
    out = collect_results(tmp_path, names)
    assert not any(n.startswith("compress") for n in out["groups"])  # their own table, not the main one's groups
    agree = out["comparison"]["agreement_with_ensemble_test"]["systems"]
    assert not any(n.startswith("compress") for n in agree)
    sizes = out["compression"]["sizes"]
    assert [s["size"] for s in sizes] == ["2x32", "2x128", "3x256"]
    assert [len(s["students"]) for s in sizes] == [2, 2, 2]
    for s, gain in zip(sizes, (4.5, 3.0, 3.0)):
        iv = s["twin_gain_test_frame_acc"]
        assert iv["ci_low"] < iv["value"] < iv["ci_high"] and abs(iv["value"] - gain) < 1.0
        share = s["kept_share_test_frame_acc"]
        assert share["ci_low"] < share["value"] < share["ci_high"]
    assert set(out["compression"]["references"]) == {"ensemble", "baseline"}
    md = (tmp_path / "results.md").read_text()
    section = md[md.index("## Compression: what each size costs and keeps") :]
    assert "| 2x32 |" in section and "| 3x256 (full size) |" in section and "ensemble: " in section
    assert "compress_2x32" not in md[: md.index("## Compression")]  # not in the systems table either
    assert (tmp_path / "compression.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "results.json").read_text().count('"twin_gain_test_wer"') == 3


def _bash(script: str) -> subprocess.CompletedProcess:
    """``script`` after sourcing compression.sh with run.sh's names stubbed (``get`` reads ``$config``)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    stub = (
        'get() { python -m asrdistill.cli config-get --config "$config" "$1"; }\n'
        "set -euo pipefail\n"
        f"source {shlex.quote(str(RECIPE / 'compression.sh'))}\n"
    )
    return subprocess.run(["bash", "-c", stub + script], cwd=RECIPE, env=env, capture_output=True, text=True)


def _train_cfg(line: str):
    args = cli.build_parser().parse_args(shlex.split(line))
    flags = {"seed": args.seed, "distill.temperature": args.temperature, "distill.hard_weight": args.hard_weight}
    cfg = train_config(
        args.config,
        args.role,
        args.set,
        feats=args.feats,
        labels=args.labels,
        train_set=args.train_set,
        dev_set=args.dev_set,
        soft=args.soft,
        flags=flags,
    )
    return args, cfg


def test_compression_sh_trains_every_size_and_seed_with_its_twin():
    """The dry run's lines, parsed by the real CLI into the TrainConfig each training would run under."""
    conf = RECIPE / "conf" / "synthetic_compression.yaml"
    proc = _bash(
        f"config={shlex.quote(str(conf))} common='--config {conf} --device cpu' "
        "data='--feats data/fbank --labels exp/tri_ali --train-set train --dev-set dev' force=\n"
        "compression_train_lines 5 0.333; echo ---; compression_systems"
    )
    assert proc.returncode == 0, proc.stderr
    lines, systems = proc.stdout.split("---\n")
    data = yaml.safe_load(conf.read_text())
    section, rule = data["compression"], data["train"]
    runs = {}
    for line in lines.splitlines():
        args, cfg = _train_cfg(line)
        runs[args.out.name] = cfg
        assert (cfg.epochs, cfg.schedule, cfg.patience) == (rule["epochs"], rule["schedule"], rule["patience"])
    assert sorted(runs) == sorted(systems.split())
    sizes = [tuple(map(int, s.split("x"))) for s in section["sizes"]]
    assert len(runs) == 2 * len(sizes) * section["seeds"]
    for (layers, width), seed in ((s, i) for s in sizes for i in range(1, section["seeds"] + 1)):
        student, hard = (runs[f"compress_{layers}x{width}_{k}_seed{seed}"] for k in ("student", "hard"))
        for cfg in (student, hard):
            assert (cfg.model.hidden_layers, cfg.model.hidden_dim, cfg.seed) == (layers, width, 300 + seed)
        assert (student.kind, hard.kind) == ("compression_student", "compression_hard")
        assert (student.distill.temperature, student.distill.hard_weight) == (5.0, 0.333) and hard.distill is None
        assert student.distill.soft_targets == "exp/ensemble/soft_T5"


@pytest.mark.parametrize("key,value", [("sizes", "[2x32, 2*64]"), ("seeds", "0")])
def test_compression_sh_names_a_bad_size_or_seed_count(tmp_path, key, value):
    conf = tmp_path / "c.yaml"
    conf.write_text(f"compression: {{sizes: [2x32], seeds: 1, {key}: {value}}}\n")
    proc = _bash(f"config={conf} compression_systems")
    assert proc.returncode == 2 and f"{conf}: compression.{key}:" in proc.stderr, proc.stderr


def test_compression_conf_is_the_readme_conf_with_the_sweep_on():
    main = yaml.safe_load((RECIPE / "conf/synthetic_cpu.yaml").read_text())
    spec = yaml.safe_load((RECIPE / "conf/synthetic_compression.yaml").read_text())
    assert "compression" not in main and spec.pop("compression")["enabled"] is True
    assert spec == main
