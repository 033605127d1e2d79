"""The results table: baseline vs ensemble vs distilled student, with seeds and intervals, beside the paper.

Each evaluated system leaves ``<exp>/<system>/metrics.json`` (see
:class:`SystemResult`) and ``frames_<set>.npz`` / ``decode_<set>/wer.json``
(per-utterance counts). :func:`collect_results` gathers them into
``results.json`` (strict JSON), ``results.md`` and ``results.png``:

* systems of one kind trained alike but for the seed (``baseline_seed1..N``,
  ``student_seed1..M``) form a group reported as mean and standard deviation
  over seeds;
* the differences ensemble - baseline and student - baseline (test frame
  accuracy and WER) and the share of the ensemble's gain the student keeps
  (the paper's headline: 86%) get 95% intervals from a paired bootstrap over
  test utterances (the groups' per-utterance counts averaged over seeds, all
  systems resampled together), so a difference can be told from test-set noise;
* with the specialists (the paper's section 5), the same intervals for
  generalist+specialists - its generalist, student_from_specialists - baseline
  and student_from_specialists - student, and the specialists' frame accuracy
  on their groups' frames vs the rest (``<specialists>/frame_accuracy.json``,
  the analogue of the paper's Table 4);
* the ensemble's soft-target fidelity per temperature (``ensemble/fidelity.json``).

Names a script can rely on in ``results.json``: ``fidelity`` (per temperature),
``std`` (seed spreads), ``ci_low``/``ci_high`` (interval bounds),
``comparison.kept_share_test_frame_acc``, ``comparison.<prefix>_test_<frame_acc|wer>``
for each prefix of :data:`DIFFERENCES`, ``specialists`` (the breakdown) and ``compression`` (the compression
stage's sizes, :mod:`asrdistill.results_compression`, which also draws ``compression.png``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asrdistill.fileio import write_json_atomic, write_text_atomic

__all__ = [
    "SystemResult",
    "PAPER",
    "GROUPED",
    "COMBINED",
    "FROM_SPECIALISTS",
    "DIFFERENCES",
    "kept_share",
    "best_student",
    "paired_bootstrap",
    "collect_results",
]

log = logging.getLogger(__name__)

# Hinton, Vinyals & Dean (2015), Table 1 (2,000 h, 14,000 senones, 8 x 2560 DNN).
PAPER = [
    {"system": "paper: baseline", "test_frame_acc": 58.9, "test_wer": 10.9},
    {"system": "paper: 10x ensemble", "test_frame_acc": 61.1, "test_wer": 10.7},
    {"system": "paper: distilled single model", "test_frame_acc": 60.8, "test_wer": 10.7},
]
GROUPED = ("baseline", "student")  # kinds trained with several seeds
COMBINED = "generalist+specialists"  # the kind (and row name) of a specialists folder's system
FROM_SPECIALISTS = "student_from_specialists"
# Differences on test with paired bootstrap intervals: (key prefix in results.json, system, reference). Each is a
# reported group, or "generalist": the one system the specialists were trained from.
DIFFERENCES = (
    ("ensemble_gain", "ensemble", "baseline"),
    ("student_gain", "student", "baseline"),
    ("specialists_gain", COMBINED, "generalist"),
    ("student_from_specialists_gain", FROM_SPECIALISTS, "baseline"),
    ("student_from_specialists_vs_student", FROM_SPECIALISTS, "student"),
)
BOOTSTRAP_SAMPLES = 2000
INDEPENDENT = "independent_baseline"  # a hard-label model with its own seed, not an ensemble member
INTERVAL = "95% paired bootstrap over test utterances and, within each seed group, over its seeds"


@dataclass
class SystemResult:
    """Figures for one system; accuracies and WERs in percent, NaN when not measured."""

    system: str  # its folder: "baseline_seed1", "ensemble", "student_seed2", "specialists", ...
    kind: str  # baseline | ensemble | student | sweep | fraction_hard | fraction_soft |
    # generalist+specialists | student_from_specialists
    params: int = 0  # parameters used at run time (ensemble: all members)
    dev_frame_acc: float = math.nan
    test_frame_acc: float = math.nan
    dev_wer: float = math.nan
    test_wer: float = math.nan
    nn_seconds_per_frame: float = math.nan  # network forward cost at decoding time
    decode_rtf: float = math.nan  # search only, one CPU core
    extra: dict = field(default_factory=dict)  # seed, epochs, temperature, members, inputs, ...

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, asdict(self))  # strict JSON: NaN as null

    @classmethod
    def load(cls, path: str | Path) -> "SystemResult":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{k: (math.nan if v is None else v) for k, v in data.items()})


def kept_share(baseline: float, ensemble: float, student: float) -> float:
    """Share of the ensemble's gain over the baseline that the student keeps (NaN if no gain)."""
    gain = ensemble - baseline
    return (student - baseline) / gain if gain > 0 else math.nan


def best_student(student_dirs: list[str | Path]) -> dict:
    """The distillation settings (temperature, hard weight) of the swept student with the best dev frame accuracy.

    Model selection on dev, never test: reads each folder's ``train_result.json``
    (best dev frame accuracy) and ``train_config.json`` (its distillation settings).
    """
    scores = []
    for d in student_dirs:
        result = Path(d) / "train_result.json"
        if not result.is_file():
            raise FileNotFoundError(f"{result}: student not trained")
        distill = json.loads((Path(d) / "train_config.json").read_text(encoding="utf-8")).get("distill")
        if not distill:
            raise ValueError(f"{d}: not a distilled student (no distill section in train_config.json)")
        acc = json.loads(result.read_text(encoding="utf-8"))["best_dev_acc"]
        scores.append(
            {
                "dir": str(d),
                "temperature": float(distill["temperature"]),
                "hard_weight": float(distill["hard_weight"]),
                "dev_acc": acc,
            }
        )
    if not scores:
        raise ValueError("best_student: no student folders given")
    best = max(scores, key=lambda r: r["dev_acc"])
    log.info(
        "dev frame accuracy by (T, hard weight): %s -> T=%g, hard weight %g",
        {f"T={r['temperature']:g},w={r['hard_weight']:g}": round(r["dev_acc"], 4) for r in scores},
        best["temperature"],
        best["hard_weight"],
    )
    return best


def paired_bootstrap(
    stats: dict[str, tuple[np.ndarray, np.ndarray]], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> dict[str, np.ndarray]:
    """Rates ``100 * sum(num) / sum(den)`` of each system or seed group over ``samples`` resamplings.

    ``stats[name] = (num, den)``: ``den`` has one entry per test utterance, in the
    same order for every name (e.g. labelled frames, or reference words);
    ``num`` is ``(utterances,)`` for one system or ``(seeds, utterances)`` for a
    group trained alike but for the seed (its rate is the mean over seeds).
    Every draw resamples the same utterances for all names, so differences are
    paired; a group's seeds are resampled too (with replacement, independently
    per group), so its interval holds the training randomness (which seeds it
    happened to get) as well as the test set's. Returns ``name -> (samples,)``.
    """
    sizes = {np.shape(num)[-1] for num, _ in stats.values()} | {len(den) for _, den in stats.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"paired_bootstrap: systems must share the same non-empty utterance list, got sizes {sizes}")
    (n,) = sizes
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(np.float64)  # (samples, utterances)
    out = {}
    for name, (num, den) in stats.items():
        per_seed = counts @ np.atleast_2d(num).T  # (samples, seeds)
        k = per_seed.shape[1]
        weights = rng.multinomial(k, np.full(k, 1.0 / k), size=samples) / k if k > 1 else np.ones((samples, 1))
        out[name] = 100.0 * (per_seed * weights).sum(1) / np.maximum(counts @ den, 1e-12)
    return out


def _interval(point: float, draws: np.ndarray) -> dict:
    finite = draws[np.isfinite(draws)]
    low, high = np.percentile(finite, [2.5, 97.5]) if finite.size else (math.nan, math.nan)
    return {"value": point, "ci_low": float(low), "ci_high": float(high)}


def _per_utt(exp_dir: Path, system: str, test_set: str) -> dict[str, dict[str, np.ndarray]] | None:
    """Per-utterance test counts of one system: frames (correct, labelled, decisions) and words (errors, words)."""
    frames = exp_dir / system / f"frames_{test_set}.npz"
    if not frames.is_file():
        return None
    z = np.load(frames, allow_pickle=False)
    utts = [str(u) for u in z["utts"]]
    preds = np.split(z["preds"], np.cumsum(z["lengths"])[:-1]) if utts else []
    out = {
        u: {"correct": int(c), "labelled": int(n), "preds": p}
        for u, c, n, p in zip(utts, z["correct"], z["labelled"], preds)
    }
    wer = exp_dir / system / f"decode_{test_set}" / "wer.json"
    if wer.is_file():
        for u, (errors, words) in json.loads(wer.read_text(encoding="utf-8")).get("per_utt", {}).items():
            if u in out:
                out[u].update(errors=errors, words=words)
    return out


def _mean_sd(values: list[float]) -> dict:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    return {
        "mean": float(v.mean()) if v.size else math.nan,
        "std": float(v.std(ddof=1)) if v.size > 1 else math.nan,
        "n": int(v.size),
    }


def _label(r: SystemResult) -> str:
    """The name a system is reported under: its folder, but a specialists folder as generalist+specialists."""
    return COMBINED if r.kind == COMBINED else r.system


def _groups(rows: list[SystemResult]) -> dict[str, list[SystemResult]]:
    """Rows by reported group: the seeded kinds together, every other system on its own."""
    groups: dict[str, list[SystemResult]] = {}
    for r in rows:
        groups.setdefault(r.kind if r.kind in (*GROUPED, INDEPENDENT) else _label(r), []).append(r)
    return groups


def compare_groups(exp_dir: Path, groups: dict[str, list[SystemResult]], test_set: str) -> dict:
    """Bootstrap intervals (test utterances and seeds, all systems paired) of the :data:`DIFFERENCES`, the kept
    share and every system's agreement with the ensemble."""
    need = ("baseline", "ensemble", "student")
    if not all(g in groups for g in need):
        return {}
    members = {g: groups[g] for g in (*need, INDEPENDENT, COMBINED, FROM_SPECIALISTS) if g in groups}
    generalist = members[COMBINED][0].extra.get("generalist") if COMBINED in members else None
    systems = {r.system: r for g in groups.values() for r in g}
    if generalist in systems:
        members["generalist"] = [systems[generalist]]
    elif generalist is not None:
        log.warning(
            "results: the specialists' generalist %s is not among the systems; no interval against it", generalist
        )
    per = {g: [_per_utt(exp_dir, r.system, test_set) for r in rs] for g, rs in members.items()}
    if any(x is None for g in need for x in per[g]):
        log.warning("results: per-utterance counts missing for some system; no intervals")
        return {}
    for g in [g for g in per if any(x is None for x in per[g])]:
        log.warning("results: per-utterance counts of %s missing; no intervals for it", g)
        del per[g]
    utts = sorted(set.intersection(*(set(x) for xs in per.values() for x in xs)))
    out: dict = {
        "test_utterances": len(utts),
        "interval": INTERVAL,
        **({"generalist": generalist} if "generalist" in per else {}),
    }
    for metric, (num, den) in {"frame_acc": ("correct", "labelled"), "wer": ("errors", "words")}.items():
        if not all(num in x[utts[0]] for g in need for x in per[g]):
            continue
        have = [g for g in per if all(num in x[utts[0]] for x in per[g])]
        stats = {
            g: (
                np.array([[x[u][num] for u in utts] for x in per[g]], dtype=np.float64),
                np.array([per[g][0][u][den] for u in utts], dtype=np.float64),
            )
            for g in have
        }
        draws = paired_bootstrap(stats)
        point = {g: 100.0 * stats[g][0].mean(0).sum() / max(stats[g][1].sum(), 1e-12) for g in have}
        for prefix, system, reference in DIFFERENCES:
            if system in stats and reference in stats:
                out[f"{prefix}_test_{metric}"] = _interval(
                    point[system] - point[reference], draws[system] - draws[reference]
                )
        if metric == "frame_acc":
            with np.errstate(divide="ignore", invalid="ignore"):
                shares = (draws["student"] - draws["baseline"]) / (draws["ensemble"] - draws["baseline"])
            out["kept_share_test_frame_acc"] = _interval(
                kept_share(point["baseline"], point["ensemble"], point["student"]), shares
            )
    out["agreement_with_ensemble_test"] = _agreement(members, per, utts)
    dev = {g: _mean_sd([r.dev_frame_acc for r in groups[g]])["mean"] for g in need}
    out["kept_share_dev_frame_acc"] = kept_share(dev["baseline"], dev["ensemble"], dev["student"])
    return out


def _agreement(members: dict[str, list[SystemResult]], per: dict[str, list[dict]], utts: list[str]) -> dict:
    """Share of test frames where a system's best senone is the ensemble's, with intervals: every system on its
    own (``systems``) and each group over its seeds (``groups``). Members of the ensemble agree with it partly
    because they are in it; the independent baseline is the fair single-model reference."""
    ensemble = per["ensemble"][0]
    frames = np.array([len(ensemble[u]["preds"]) for u in utts], dtype=np.float64)

    def agreeing(x: dict) -> np.ndarray:
        return np.array([int((x[u]["preds"] == ensemble[u]["preds"]).sum()) for u in utts], dtype=np.float64)

    counts = {g: [agreeing(x) for x in per[g]] for g in per if g not in ("ensemble", "generalist")}
    names = {r.system: counts[g][i] for g in counts for i, r in enumerate(members[g])}
    stats = {
        **{f"system:{n}": (a, frames) for n, a in names.items()},
        **{f"group:{g}": (np.stack(a), frames) for g, a in counts.items()},
    }
    draws = paired_bootstrap(stats)
    point = {k: 100.0 * np.atleast_2d(num).mean(0).sum() / frames.sum() for k, (num, _) in stats.items()}
    return {
        "systems": {n: _interval(point[f"system:{n}"], draws[f"system:{n}"]) for n in names},
        "groups": {g: {**_interval(point[f"group:{g}"], draws[f"group:{g}"]), "seeds": len(counts[g])} for g in counts},
    }


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(stat: dict, digits: int = 2) -> str:
    if stat["n"] > 1:
        return f"{_fmt(stat['mean'], digits)} ± {_fmt(stat['std'], digits)}"
    return _fmt(stat["mean"], digits)


def format_interval(iv: dict, digits: int = 2, scale: float = 1.0) -> str:
    return (
        f"{_fmt(scale * iv['value'], digits)} [{_fmt(scale * iv['ci_low'], digits)}, "
        f"{_fmt(scale * iv['ci_high'], digits)}]"
    )


def collect_results(
    exp_dir: str | Path,
    order: list[str],
    title: str = "Results",
    test_set: str | None = None,
    goal_kept_share: float = 0.8,
) -> dict:
    """Write ``results.json``, ``results.md`` and ``results.png`` in ``exp_dir`` from the systems' metrics."""
    from asrdistill.results_compression import KINDS, compression_markdown, compression_results

    exp_dir = Path(exp_dir)
    rows = _load_rows(exp_dir, order)
    test_set = test_set or rows[0].extra.get("test_set", "test")
    sized, rows = [r for r in rows if r.kind in KINDS], [r for r in rows if r.kind not in KINDS]
    groups = _groups(rows)
    summary = {
        name: {
            "members": [r.system for r in g],
            "seeds": [r.extra.get("seed") for r in g],
            "epochs": [r.extra.get("epochs") for r in g],
            **{
                key: _mean_sd([getattr(r, key) for r in g])
                for key in ("dev_frame_acc", "test_frame_acc", "dev_wer", "test_wer")
            },
        }
        for name, g in groups.items()
    }
    comparison = compare_groups(exp_dir, groups, test_set)
    compression = compression_results(exp_dir, sized, groups, test_set)  # {} without the compression stage's rows
    fidelity_path = exp_dir / "ensemble" / "fidelity.json"
    fidelity = json.loads(fidelity_path.read_text(encoding="utf-8")) if fidelity_path.is_file() else {}
    goal = _goal(comparison, groups, goal_kept_share)
    fraction = {}
    if "fraction_hard" in groups and "fraction_soft" in groups:
        fraction = {k: groups[f"fraction_{k}"][0].test_frame_acc for k in ("hard", "soft")}
    specialists = {}
    if COMBINED in groups:  # written by specialists-eval
        path = exp_dir / groups[COMBINED][0].system / "frame_accuracy.json"
        specialists = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    write_json_atomic(
        exp_dir / "results.json",
        {
            "systems": [asdict(r) for r in rows],
            "groups": summary,
            "comparison": comparison,
            "goal": goal,
            "fidelity": fidelity,
            "fraction": fraction,
            "specialists": specialists,
            "compression": compression,
            "paper": PAPER,
        },
    )
    write_text_atomic(
        exp_dir / "results.md",
        _markdown(title, rows, groups, summary, comparison, fidelity, goal, fraction, specialists)
        + "".join(line + "\n" for line in compression_markdown(compression)),
    )
    from asrdistill.results_plot import plot_results  # matplotlib only when drawing

    plot_results(exp_dir, groups, summary, comparison, exp_dir / "results.png")
    return {
        "systems": rows,
        "groups": summary,
        "comparison": comparison,
        "goal": goal,
        "fidelity": fidelity,
        "specialists": specialists,
        "compression": compression,
    }


def _load_rows(exp_dir: Path, order: list[str]) -> list[SystemResult]:
    """The systems of ``order`` that have a ``metrics.json``, sweep runs last and sorted numerically by (T, hard
    weight): T = 2 before T = 10."""
    rows = [
        SystemResult.load(exp_dir / name / "metrics.json")
        for name in order
        if (exp_dir / name / "metrics.json").is_file()
    ]
    if not rows:
        raise FileNotFoundError(f"{exp_dir}: no <system>/metrics.json found for {order}")
    sweep = sorted(
        (r for r in rows if r.kind == "sweep"),
        key=lambda r: (r.extra.get("temperature") or 0, r.extra.get("hard_weight") or 0),
    )
    return [r for r in rows if r.kind != "sweep"] + sweep


def _goal(comparison: dict, groups: dict[str, list[SystemResult]], goal_kept_share: float) -> dict:
    """Whether the students keep ``goal_kept_share`` of a resolved ensemble gain and agree with the ensemble more
    than any single model (baselines, the independent one) does; {} without a comparison."""
    if "kept_share_test_frame_acc" not in comparison:
        return {}
    share, gain = comparison["kept_share_test_frame_acc"], comparison["ensemble_gain_test_frame_acc"]
    agree = comparison["agreement_with_ensemble_test"]
    students = {r.system for r in groups["student"]}
    singles = [a["value"] for name, a in agree["systems"].items() if name not in students]
    return {
        "kept_share_at_least": goal_kept_share,
        "kept_share_met": share["value"] >= goal_kept_share,
        "ensemble_gain_ci_excludes_zero": gain["ci_low"] > 0,
        "student_agrees_most": agree["groups"]["student"]["value"] > max(singles, default=math.inf),
    }


def difference_label(prefix: str, comparison: dict) -> str:
    system, reference = next((a, b) for p, a, b in DIFFERENCES if p == prefix)
    return f"{system} - {comparison['generalist'] + ' (its generalist)' if reference == 'generalist' else reference}"


def training_summary(r: SystemResult) -> str:
    """``epochs run/budget (best epoch), what ended it``, flagged when it was cut off while still improving."""
    epochs = r.extra.get("epochs")
    if epochs is None:
        return "-"
    text = f"{epochs}/{r.extra.get('max_epochs')} ({r.extra.get('best_epoch', 0) + 1})"
    if r.extra.get("end_reason"):
        text += f", {r.extra['end_reason']}"
    return text + (", STILL RISING" if r.extra.get("still_improving") else "")


def _markdown(title, rows, groups, summary, comparison, fidelity, goal, fraction, specialists) -> str:
    agree = comparison.get("agreement_with_ensemble_test", {"systems": {}, "groups": {}})
    lines = [f"# {title}", "", *_systems_table(rows, agree), "", *_groups_table(groups, summary, agree)]
    chosen = _chosen_distillation(groups)
    if chosen:
        lines += [
            "",
            f"Students: T = {chosen[0]:g}, hard weight {chosen[1]:g} "
            + (
                "(the best dev frame accuracy of the swept settings)."
                if any(r.kind == "sweep" for rs in groups.values() for r in rs)
                else "(fixed by the recipe config; no sweep in this run)."
            ),
        ]
    if comparison:
        lines += ["", *_differences(comparison)]
    if goal:
        lines.append(
            f"Goal (kept share >= {100 * goal['kept_share_at_least']:.0f}% with the ensemble's gain interval "
            f"excluding zero, and the students agreeing with the ensemble more than any single model): kept "
            f"share {'met' if goal['kept_share_met'] else 'NOT met'}; the ensemble's gain interval "
            f"{'excludes' if goal['ensemble_gain_ci_excludes_zero'] else 'does NOT exclude'} zero; "
            f"agreement {'met' if goal.get('student_agrees_most') else 'NOT met'}."
        )
    if fidelity:
        lines += [
            "",
            "## Soft targets: share of the exact soft loss the cache keeps (dev)",
            "",
            "| T | stored | fidelity % |",
            "|---:|---|---:|",
        ]
        for t, r in sorted(fidelity.items(), key=lambda item: float(item[0])):
            lines.append(
                f"| {t} | {'top-' + str(r['k']) if r['k'] else 'dense fp16'} | {_fmt(100 * r['fidelity'], 1)} |"
            )
    if fraction:
        lines += [
            "",
            f"Trained on a fraction of the data (the paper's section 6): hard labels {_fmt(fraction['hard'])}% "
            f"vs soft targets {_fmt(fraction['soft'])}% test frame accuracy (paper, 3% of 2,000 h: 44.5% vs 57.0%).",
        ]
    if specialists:
        lines += _specialists_markdown(specialists)
    return "\n".join(lines) + "\n"


def _systems_table(rows: list[SystemResult], agree: dict) -> list[str]:
    """One row per system: its budget and end, size, accuracies, WERs, agreement with the ensemble, costs."""
    lines = [
        "## Systems",
        "",
        "Epochs: run / budget (best dev epoch), what ended training. Agreement: test frames where the system's "
        "best senone is the ensemble's.",
        "",
        "| system | seed | epochs | params | dev frame acc % | test frame acc % | dev WER % | test WER % "
        "| agrees with ensemble % | NN ms / s of audio | search RTF |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        nn_ms = r.nn_seconds_per_frame * 100 * 1000  # 100 frames per second of audio
        a = agree["systems"].get(r.system)
        lines.append(
            f"| {_label(r)} | {r.extra.get('seed', '-')} | {training_summary(r)} | {r.params:,} | "
            f"{_fmt(r.dev_frame_acc)} | {_fmt(r.test_frame_acc)} | {_fmt(r.dev_wer)} | {_fmt(r.test_wer)} | "
            f"{format_interval(a) if a else '-'} | {_fmt(nn_ms, 1)} | {_fmt(r.decode_rtf, 3)} |"
        )
    return lines


def _groups_table(groups: dict, summary: dict, agree: dict) -> list[str]:
    """The reported groups over their seeds, beside the paper's rows."""
    lines = [
        "## Over seeds (mean ± sd)",
        "",
        "| group | seeds | dev frame acc % | test frame acc % | dev WER % | test WER % | agrees with ensemble % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in groups:
        g = summary[name]
        if name in (*GROUPED, "ensemble", INDEPENDENT, COMBINED, FROM_SPECIALISTS):
            a = agree["groups"].get(name)
            lines.append(
                f"| {name} | {len(g['members'])} | {_pm(g['dev_frame_acc'])} | {_pm(g['test_frame_acc'])} | "
                f"{_pm(g['dev_wer'])} | {_pm(g['test_wer'])} | {format_interval(a) if a else '-'} |"
            )
    for p in PAPER:
        lines.append(f"| {p['system']} | - | - | {p['test_frame_acc']:.1f} | - | {p['test_wer']:.1f} | - |")
    return lines


def _differences(comparison: dict) -> list[str]:
    """The differences on test with their intervals, and the kept share on test and dev beside the paper's."""
    lines = [
        f"## Differences on test, 95% intervals over {comparison['test_utterances']} utterances",
        "",
        f"Intervals: {comparison['interval']}.",
        "",
        "| figure | value [95% interval] |",
        "|---|---:|",
    ]
    for metric, unit, better in (("frame_acc", "frame acc", "higher"), ("wer", "WER", "lower")):
        for prefix, _, _ in DIFFERENCES:
            if f"{prefix}_test_{metric}" in comparison:
                lines.append(
                    f"| {difference_label(prefix, comparison)}, {unit} (points; {better} is better) | "
                    f"{format_interval(comparison[f'{prefix}_test_{metric}'])} |"
                )
    if "kept_share_test_frame_acc" in comparison:
        lines.append(
            f"| share of the ensemble's frame-acc gain the student keeps, test (%) | "
            f"{format_interval(comparison['kept_share_test_frame_acc'], 0, 100)} |"
        )
    lines.append(
        f"| share of the ensemble's frame-acc gain the student keeps, dev (%) | "
        f"{_fmt(100 * comparison['kept_share_dev_frame_acc'], 0)} |"
    )
    return lines + ["", f"The paper's student kept {100 * kept_share(58.9, 61.1, 60.8):.0f}%."]


def _chosen_distillation(groups: dict[str, list[SystemResult]]) -> tuple[float, float] | None:
    """The (T, hard weight) the final students were trained with, if they share one."""
    settings = {(r.extra.get("temperature"), r.extra.get("hard_weight")) for r in groups.get("student", [])}
    if len(settings) != 1 or None in next(iter(settings)):
        return None
    return next(iter(settings))


def _specialists_markdown(breakdown: dict) -> list[str]:
    """Frame accuracy on the frames labelled with a senone of a specialist's group vs the rest, per set."""
    lines = [
        "",
        "## Specialists: frame accuracy on their groups' frames vs the rest (the paper's Table 4)",
        "",
        f"{breakdown['specialists']} specialists; the generalist's top {breakdown['top_classes']} class(es) "
        "activate them; a frame counts as in the groups when its label is a senone of a group.",
        "",
        "| set | frames | frames % | generalist % | generalist+specialists % | change (points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in breakdown["sets"].items():
        gen, comb = r["generalist"], r[COMBINED]
        for part, acc, frames in (
            ("in groups", "acc_in_groups", "frames_in_groups"),
            ("outside", "acc_outside", "frames_outside"),
            ("all", "acc", "frames"),
        ):
            lines.append(
                f"| {name}, {part} | {gen[frames]:,} | {_fmt(100 * gen[frames] / gen['frames'], 1)} | "
                f"{_fmt(100 * gen[acc])} | {_fmt(100 * comb[acc])} | {100 * (comb[acc] - gen[acc]):+.2f} |"
            )
    return lines
