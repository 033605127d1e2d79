"""Results table: seed groups, paired bootstrap intervals, strict JSON, the plot."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from asrdistill.fileio import write_json_atomic
from asrdistill.results import SystemResult, collect_results, kept_share, paired_bootstrap


def _strict_load(path: Path):
    def no_constant(name):
        raise ValueError(f"{path}: non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=no_constant)


def test_kept_share():
    assert math.isclose(kept_share(58.9, 61.1, 60.8), 1.9 / 2.2)
    assert math.isnan(kept_share(60.0, 59.0, 61.0))  # no ensemble gain: share undefined


def test_paired_bootstrap_is_paired_and_covers_the_truth():
    rng = np.random.default_rng(0)
    den = rng.integers(50, 150, 500).astype(float)
    a = rng.binomial(den.astype(int), 0.6).astype(float)
    draws = paired_bootstrap({"a": (a, den), "b": (a, den)}, samples=500)
    assert np.all(draws["a"] == draws["b"])  # same utterances for every system
    spread = np.percentile(draws["a"], [2.5, 97.5])
    assert spread[0] < 100 * a.sum() / den.sum() < spread[1] and spread[1] - spread[0] < 2.0
    with pytest.raises(ValueError, match="same non-empty utterance list"):
        paired_bootstrap({"a": (a, den), "b": (a[:-1], den[:-1])})


def _system(
    root: Path,
    name: str,
    kind: str,
    acc: float,
    wer: float,
    rng: np.random.Generator,
    seed=None,
    dev_acc=None,
    utts: int = 300,
    extra: dict | None = None,
) -> None:
    """A system with per-utterance frame and word counts drawn at the given rates."""
    ids = [f"u{i:04d}" for i in range(utts)]
    lengths = np.full(utts, 100)
    correct = rng.binomial(100, acc / 100, utts)
    truth = np.zeros(100 * utts, dtype=np.int32)
    preds = np.where(rng.random(100 * utts) < acc / 100, truth, 1).astype(np.int32)
    (root / name).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        root / name / "frames_test.npz",
        utts=np.array(ids),
        lengths=lengths,
        preds=preds,
        correct=correct,
        labelled=lengths,
    )
    errors = rng.binomial(10, wer / 100, utts)
    write_json_atomic(
        root / name / "decode_test" / "wer.json", {"per_utt": {u: [int(e), 10] for u, e in zip(ids, errors)}}
    )
    SystemResult(
        name,
        kind,
        100,
        dev_acc if dev_acc is not None else acc,
        100 * correct.sum() / lengths.sum(),
        wer,
        100 * errors.sum() / (10 * utts),
        extra={"seed": seed, "epochs": 8, "max_epochs": 12, "best_epoch": 6, "test_set": "test", **(extra or {})},
    ).save(root / name / "metrics.json")


def test_collect_results_groups_seeds_gives_intervals_and_strict_json(tmp_path):
    rng = np.random.default_rng(1)
    names = []
    for seed, acc in zip((1, 2, 3), (60.0, 60.4, 59.6)):
        _system(tmp_path, f"baseline_seed{seed}", "baseline", acc, 14.0, rng, seed)
        names.append(f"baseline_seed{seed}")
    _system(tmp_path, "ensemble", "ensemble", 64.0, 12.0, rng)
    for seed, acc in zip((1, 2, 3), (63.0, 63.2, 62.8)):
        _system(tmp_path, f"student_seed{seed}", "student", acc, 12.5, rng, seed)
        names.append(f"student_seed{seed}")
    SystemResult("fraction_hard", "fraction_hard", 100, 20.0, 21.0).save(tmp_path / "fraction_hard/metrics.json")
    names += ["ensemble", "fraction_hard", "not_run"]
    write_json_atomic(tmp_path / "ensemble/fidelity.json", {"2": {"k": 0, "fidelity": 0.9999, "candidates": {}}})
    out = collect_results(tmp_path, names)
    assert (
        out["groups"]["baseline"]["test_frame_acc"]["n"] == 3 and out["groups"]["baseline"]["test_frame_acc"]["std"] > 0
    )
    comp = out["comparison"]
    gain = comp["ensemble_gain_test_frame_acc"]
    assert gain["ci_low"] > 0 and gain["ci_low"] < gain["value"] < gain["ci_high"]
    share = comp["kept_share_test_frame_acc"]
    assert 0.6 < share["value"] < 0.9 and share["ci_low"] < share["value"] < share["ci_high"]
    agree = comp["agreement_with_ensemble_test"]
    assert agree["groups"]["student"]["value"] > agree["groups"]["baseline"]["value"]
    assert agree["groups"]["student"]["seeds"] == 3 and set(agree["systems"]) == set(names) - {
        "fraction_hard",
        "ensemble",
        "not_run",
    }
    assert comp["ensemble_gain_test_wer"]["value"] < 0  # fewer errors
    data = _strict_load(tmp_path / "results.json")  # NaN written as null
    assert data["fidelity"]["2"]["fidelity"] == 0.9999 and data["goal"]["ensemble_gain_ci_excludes_zero"]
    assert data["comparison"]["kept_share_test_frame_acc"]["ci_high"] == share["ci_high"]
    assert any(s["dev_wer"] is None for s in data["systems"])
    md = (tmp_path / "results.md").read_text()
    assert "| baseline | 3 |" in md and "±" in md and "95% paired bootstrap" in md and "dense fp16" in md
    assert "paper: 10x ensemble" in md
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("swept", [False, True])
def test_the_table_says_whether_the_students_setting_was_swept_or_fixed_by_the_config(tmp_path, swept):
    rng = np.random.default_rng(2)
    setting = {"temperature": 2.0, "hard_weight": 0.0}
    names = ["baseline_seed1", "baseline_seed2", "ensemble", "student_seed1", "student_seed2"]
    for i, name in enumerate(names):
        kind = name.split("_")[0]
        _system(tmp_path, name, kind, 60.0 + i, 14.0, rng, seed=i, extra=setting if kind == "student" else None)
    if swept:
        _system(tmp_path, "sweep_T2_hw0", "sweep", 62.0, 13.0, rng, seed=100, extra=setting)
        names.append("sweep_T2_hw0")
    collect_results(tmp_path, names)
    md = (tmp_path / "results.md").read_text()
    assert "Students: T = 2, hard weight 0 " in md
    assert ("swept settings" in md) == swept and ("fixed by the recipe config" in md) == (not swept)


def test_identical_systems_have_a_zero_width_difference(tmp_path):
    for name, kind in (("baseline_seed1", "baseline"), ("ensemble", "ensemble"), ("student_seed1", "student")):
        _system(tmp_path, name, kind, 60.0, 14.0, np.random.default_rng(7))
    comp = collect_results(tmp_path, ["baseline_seed1", "ensemble", "student_seed1"])["comparison"]
    iv = comp["ensemble_gain_test_frame_acc"]
    assert iv["value"] == iv["ci_low"] == iv["ci_high"] == 0.0
    assert math.isnan(comp["kept_share_test_frame_acc"]["value"])  # no gain: no share


def test_specialists_rows_get_intervals_and_their_groups_breakdown(tmp_path):
    """generalist+specialists (exp/specialists) and student_from_specialists are rows like the others, with paired
    intervals against the generalist, the baselines and the ensemble-distilled students, and the specialists'
    frame accuracy on their groups' frames vs the rest (specialists-eval's frame_accuracy.json)."""
    from asrdistill.results import COMBINED, DIFFERENCES

    rng = np.random.default_rng(2)
    names = []
    for seed, acc in zip((1, 2), (60.0, 60.4)):
        _system(tmp_path, f"baseline_seed{seed}", "baseline", acc, 14.0, rng, seed)
        names.append(f"baseline_seed{seed}")
    _system(tmp_path, "ensemble", "ensemble", 64.0, 12.0, rng)
    for seed in (1, 2):
        _system(tmp_path, f"student_seed{seed}", "student", 62.0, 13.0, rng, seed)
        names.append(f"student_seed{seed}")
    _system(tmp_path, "specialists", COMBINED, 63.0, 12.5, rng)
    _system(tmp_path, "student_from_specialists", "student_from_specialists", 61.0, 13.5, rng, 101)
    r = SystemResult.load(tmp_path / "specialists/metrics.json")
    r.extra = {"test_set": "test", "generalist": "baseline_seed1", "specialists": 3}  # as evaluate writes it
    r.save(tmp_path / "specialists/metrics.json")
    part = {
        "acc": 0.6,
        "frames": 1000,
        "acc_in_groups": 0.5,
        "frames_in_groups": 400,
        "acc_outside": 0.667,
        "frames_outside": 600,
    }
    write_json_atomic(
        tmp_path / "specialists/frame_accuracy.json",
        {
            "specialists": 3,
            "top_classes": 1,
            "combine_steps": 10,
            "sets": {"test": {"generalist": part, COMBINED: {**part, "acc": 0.62, "acc_in_groups": 0.55}}},
        },
    )
    out = collect_results(tmp_path, [*names, "ensemble", "specialists", "student_from_specialists"])
    comp = out["comparison"]
    assert comp["generalist"] == "baseline_seed1"
    for prefix, _, _ in DIFFERENCES:
        for metric in ("frame_acc", "wer"):
            iv = comp[f"{prefix}_test_{metric}"]
            assert iv["ci_low"] < iv["value"] < iv["ci_high"], (prefix, metric, iv)
    # against its own generalist (baseline_seed1), not the mean of the baselines
    point = {
        n: SystemResult.load(tmp_path / n / "metrics.json").test_frame_acc for n in ("specialists", "baseline_seed1")
    }
    assert comp["specialists_gain_test_frame_acc"]["value"] == pytest.approx(
        point["specialists"] - point["baseline_seed1"]
    )
    assert (
        comp["student_from_specialists_vs_student_test_frame_acc"]["value"]
        < 0
        < comp["specialists_gain_test_frame_acc"]["ci_low"]
    )
    assert (
        set(out["groups"]) >= {COMBINED, "student_from_specialists"} and out["groups"]["student"]["test_wer"]["n"] == 2
    )
    md = (tmp_path / "results.md").read_text()
    for row in (
        "| generalist+specialists | - |",
        "| student_from_specialists | 101 |",  # systems
        "| generalist+specialists | 1 |",
        "| student_from_specialists | 1 |",  # groups
        "| generalist+specialists - baseline_seed1 (its generalist), frame acc (points; higher is better) |",
        "| student_from_specialists - student, WER (points; lower is better) |",
        "| test, in groups | 400 | 40.0 | 50.00 | 55.00 | +5.00 |",
        "| test, all | 1,000 |",
    ):
        assert row in md, row
    assert _strict_load(tmp_path / "results.json")["specialists"]["sets"]["test"][COMBINED]["acc"] == 0.62
    # without the specialists the table is what it was
    out = collect_results(tmp_path, [*names, "ensemble"])
    assert not any(k.startswith(("specialists", "student_from")) for k in out["comparison"])
    assert "Specialists" not in (tmp_path / "results.md").read_text()


def test_seed_groups_are_resampled_so_training_randomness_widens_the_interval():
    """Three seeds that differ by several points: resampling them (beside the utterances) gives a wider interval
    than averaging them first, and seeds that agree give the same width as one system."""
    rng = np.random.default_rng(3)
    den = rng.integers(50, 150, 400).astype(float)
    seeds = np.stack([rng.binomial(den.astype(int), p).astype(float) for p in (0.55, 0.60, 0.65)])
    width = {}
    for name, num in (
        ("seeds", seeds),
        ("averaged", seeds.mean(0)),
        ("alike", np.stack([seeds[1]] * 3)),
        ("one", seeds[1]),
    ):
        low, high = np.percentile(paired_bootstrap({name: (num, den)}, samples=1000)[name], [2.5, 97.5])
        width[name] = high - low
    assert width["seeds"] > 2 * width["averaged"]
    assert width["alike"] == pytest.approx(width["one"], rel=0.05)


def test_agreement_with_the_ensemble_on_a_known_case(tmp_path):
    """Frame decisions built to agree with the ensemble's on exactly 70% (baselines), 75% (independent) and 90%
    (students) of the frames: the table reports those shares, per system and per seed group, and the goal's
    agreement clause holds only when the students agree more than every single model."""
    utts, frames = 50, 100
    ensemble = np.arange(utts * frames, dtype=np.int32) % 7

    def write(name: str, kind: str, share: float, seed=None) -> None:
        preds = ensemble.copy()
        differ = np.arange(preds.size) % frames >= round(share * frames)  # the same count in every utterance
        preds[differ] = (preds[differ] + 1) % 7
        (tmp_path / name).mkdir()
        np.savez_compressed(
            tmp_path / name / "frames_test.npz",
            utts=np.array([f"u{i:03d}" for i in range(utts)]),
            lengths=np.full(utts, frames),
            preds=preds,
            correct=np.full(utts, 50),
            labelled=np.full(utts, frames),
        )
        SystemResult(name, kind, 1, 50.0, 50.0 + share, extra={"seed": seed, "test_set": "test"}).save(
            tmp_path / name / "metrics.json"
        )

    write("ensemble", "ensemble", 1.0)
    for seed in (1, 2):
        write(f"baseline_seed{seed}", "baseline", 0.70, seed)
    write("independent_baseline", "independent_baseline", 0.75, 3)
    for seed in (1, 2):
        write(f"student_seed{seed}", "student", 0.90, seed)
    out = collect_results(
        tmp_path,
        ["baseline_seed1", "baseline_seed2", "ensemble", "independent_baseline", "student_seed1", "student_seed2"],
    )
    agree = out["comparison"]["agreement_with_ensemble_test"]
    assert agree["systems"]["baseline_seed1"]["value"] == pytest.approx(70.0)
    assert agree["systems"]["independent_baseline"]["value"] == pytest.approx(75.0)
    assert agree["groups"]["student"] == {
        "value": pytest.approx(90.0),
        "ci_low": pytest.approx(90.0),
        "ci_high": pytest.approx(90.0),
        "seeds": 2,
    }
    assert out["goal"]["student_agrees_most"]
    md = (tmp_path / "results.md").read_text()
    assert "| independent_baseline | 3 |" in md and "75.00 [75.00, 75.00]" in md
