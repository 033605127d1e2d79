"""The compression sweep in the results: what each student size costs and keeps, as a table and a Pareto plot.

``recipes/librispeech/compression.sh`` trains, for each size (hidden layers x
width) and seed, a student distilled from the ensemble (kind
``compression_student``) and a hard-label twin of the same size and seed
(``compression_hard``). :func:`asrdistill.results.collect_results` hands their
rows here; per size this gives the parameters, the network's time per second
of test audio (as evaluation timed it; compression.sh evaluates with one torch
thread), test frame accuracy and WER over seeds, and, with 95% paired bootstrap
intervals over test utterances and seeds (:func:`asrdistill.results.paired_bootstrap`,
all systems resampled together):

* the share of the ensemble's gain the size keeps, ``(student - baseline) /
  (ensemble - baseline)`` in test frame accuracy, the baseline being the
  recipe's full-size hard-label models (the ensemble's members);
* what distillation adds over its twin, ``student - hard twin`` (frame accuracy, WER).

The recipe's own students and baselines are the full-size row, so whether small
students gain more from distillation than full-size ones is read off the last column.
``compression.png`` plots test frame accuracy against cost with the ensemble and
the full-size baseline marked, and the Pareto front of the single models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from asrdistill.results import (
    INTERVAL,
    SystemResult,
    _fmt,
    _interval,
    _mean_sd,
    _per_utt,
    _pm,
    format_interval,
    kept_share,
    paired_bootstrap,
)

__all__ = ["KINDS", "STUDENT", "HARD", "compression_results", "compression_markdown", "pareto_front"]

STUDENT, HARD = KINDS = ("compression_student", "compression_hard")
METRICS = {"frame_acc": ("correct", "labelled"), "wer": ("errors", "words")}  # metric -> per-utterance (num, den)


def _size(exp_dir: Path, r: SystemResult) -> str:
    """``LxW`` from the run's ``train_config.json`` (hidden layers x width); its parameter count if it has none."""
    path = exp_dir / r.system / "train_config.json"
    model = json.loads(path.read_text(encoding="utf-8")).get("model", {}) if path.is_file() else {}
    if model.get("hidden_layers") and model.get("hidden_dim"):
        return f"{model['hidden_layers']}x{model['hidden_dim']}"
    return f"{r.params:,} params"


def _entries(exp_dir: Path, rows: list[SystemResult], groups: dict[str, list[SystemResult]]) -> list[dict]:
    """One entry per size, smallest first: its students and hard twins; then the recipe's students and baselines
    as the full-size entry (``full``), where both groups are there."""
    sizes: dict[str, dict[str, list[SystemResult]]] = {}
    for r in rows:
        sizes.setdefault(_size(exp_dir, r), {STUDENT: [], HARD: []})[r.kind].append(r)
    entries = [
        {"size": size, "students": by[STUDENT], "hards": by[HARD], "full": False}
        for size, by in sorted(sizes.items(), key=lambda kv: min(r.params for rs in kv[1].values() for r in rs))
    ]
    if groups.get("student") and groups.get("baseline"):
        full = _size(exp_dir, groups["baseline"][0])
        entries.append({"size": full, "students": groups["student"], "hards": groups["baseline"], "full": True})
    return entries


def _stats(exp_dir: Path, named: dict[str, list[SystemResult]], test_set: str) -> dict[str, dict] | None:
    """``metric -> {name: (num (seeds, utts), den (utts,))}`` over the test utterances every system has; None when
    a system has no per-utterance counts. A metric is left out unless every system has it (WER: decoded)."""
    per = {name: [_per_utt(exp_dir, r.system, test_set) for r in rs] for name, rs in named.items()}
    if any(x is None for xs in per.values() for x in xs):
        return None
    utts = sorted(set.intersection(*(set(x) for xs in per.values() for x in xs)))
    if not utts:
        return None
    out = {}
    for metric, (num, den) in METRICS.items():
        if all(num in x[utts[0]] for xs in per.values() for x in xs):
            out[metric] = {
                name: (
                    np.array([[x[u][num] for u in utts] for x in xs], dtype=np.float64),
                    np.array([xs[0][u][den] for u in utts], dtype=np.float64),
                )
                for name, xs in per.items()
            }
    return out


def _intervals(exp_dir: Path, entries: list[dict], groups: dict, test_set: str) -> dict:
    """Per entry, kept share (test frame accuracy) and gains over the twin (frame accuracy, WER) with intervals,
    all systems paired in one bootstrap; {} without the baseline and ensemble or their per-utterance counts."""
    if not (groups.get("baseline") and groups.get("ensemble")):
        return {}
    named = {"baseline": groups["baseline"], "ensemble": groups["ensemble"]}
    for i, e in enumerate(entries):
        if e["students"] and e["hards"]:  # a size missing one side (not evaluated yet) has no comparison
            named.update({f"student{i}": e["students"], f"hard{i}": e["hards"]})
    stats = _stats(exp_dir, named, test_set)
    if stats is None:
        return {}
    out: dict = {"test_utterances": len(next(iter(stats.values()))["baseline"][1])}
    for metric, st in stats.items():
        draws = paired_bootstrap(st)
        point = {n: 100.0 * num.mean(0).sum() / max(den.sum(), 1e-12) for n, (num, den) in st.items()}
        for i in (i for i in range(len(entries)) if f"student{i}" in st):
            s, h = f"student{i}", f"hard{i}"
            out.setdefault(i, {})[f"twin_gain_test_{metric}"] = _interval(point[s] - point[h], draws[s] - draws[h])
            if metric == "frame_acc":
                out[i]["kept_share_test_frame_acc"] = _kept(point, draws, s)
    return out


def _kept(point: dict[str, float], draws: dict[str, np.ndarray], student: str) -> dict:
    """``(student - baseline) / (ensemble - baseline)`` with its interval; NaN where the ensemble gains nothing."""
    b, e = "baseline", "ensemble"
    value = kept_share(point[b], point[e], point[student])
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = (draws[student] - draws[b]) / (draws[e] - draws[b])
    return _interval(value, np.where(draws[e] > draws[b], shares, np.nan))


def _nn_ms(rows: list[SystemResult]) -> float:
    """Mean network milliseconds per second of test audio (100 frames) over ``rows``."""
    return _mean_sd([1e5 * r.nn_seconds_per_frame for r in rows])["mean"]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the ``(cost, accuracy)`` points no other point beats: none as cheap or cheaper and as accurate or
    more, better in one of the two. NaN points are never on it."""
    finite = [i for i, (c, a) in enumerate(points) if not (math.isnan(c) or math.isnan(a))]
    return [
        i
        for i in finite
        if not any(
            points[j][0] <= points[i][0] and points[j][1] >= points[i][1] and points[j] != points[i] for j in finite
        )
    ]


def _threads(rows: list[SystemResult]) -> list:
    return sorted({r.extra.get("torch_threads", "?") for r in rows}, key=str)


def _reference(name: str, rows: list[SystemResult]) -> dict:
    return {
        "system": name,
        "params": rows[0].params,
        "nn_ms_per_s": _nn_ms(rows),
        "torch_threads": _threads(rows),
        "test_frame_acc": _mean_sd([r.test_frame_acc for r in rows]),
        "test_wer": _mean_sd([r.test_wer for r in rows]),
    }


def compression_results(
    exp_dir: Path, rows: list[SystemResult], groups: dict[str, list[SystemResult]], test_set: str
) -> dict:
    """The compression figures (for ``results.json``) of the ``compression_*`` rows, and ``compression.png``; {}
    without such rows. ``groups``: the other systems by reported group (baseline, ensemble, student)."""
    if not rows:
        return {}
    entries = _entries(exp_dir, rows, groups)
    intervals = _intervals(exp_dir, entries, groups, test_set)
    teacher = groups["baseline"][0].params if groups.get("baseline") else math.nan
    sizes = []
    for i, e in enumerate(entries):
        students, hards = e["students"], e["hards"]
        sizes.append(
            {
                "size": e["size"],
                "full_size": e["full"],
                "params": students[0].params if students else hards[0].params,
                "params_share_of_teacher": (students or hards)[0].params / teacher,
                "nn_ms_per_s": _nn_ms(students + hards),
                "torch_threads": _threads(students + hards),
                "students": [r.system for r in students],
                "hard_twins": [r.system for r in hards],
                "epochs": {
                    k: [r.extra.get("epochs") for r in rs] for k, rs in (("students", students), ("hard", hards))
                },
                **{
                    f"{who}_{key}": _mean_sd([getattr(r, key) for r in rs])
                    for who, rs in (("student", students), ("hard", hards))
                    for key in ("test_frame_acc", "test_wer")
                },
                **intervals.get(i, {}),
            }
        )
    points = [(s["nn_ms_per_s"], s[f"{who}_test_frame_acc"]["mean"]) for s in sizes for who in ("student", "hard")]
    front = pareto_front(points)
    for i, s in enumerate(sizes):
        s["student_on_pareto_front"] = 2 * i in front
    out = {
        "sizes": sizes,
        "references": {
            g: _reference(label, groups[g])
            for g, label in (("ensemble", "ensemble"), ("baseline", "full-size baseline (hard labels)"))
            if groups.get(g)
        },
        "interval": INTERVAL,
        "test_utterances": intervals.get("test_utterances", 0),
    }
    from asrdistill.results_plot import plot_compression  # matplotlib only when drawing

    plot_compression(out, front, exp_dir / "compression.png")
    return out


def compression_markdown(figures: dict) -> list[str]:
    """The "Compression" section of ``results.md`` (nothing without compression figures)."""
    if not figures:
        return []
    lines = [
        "",
        "## Compression: what each size costs and keeps",
        "",
        "Students distilled from the ensemble at the students' (T, hard weight), each beside a hard-label twin of its "
        "size (same seeds, same stopping rule); the last row is the recipe's own students and baselines. Accuracy "
        "and WER on test, mean ± sd over seeds. Cost: the network's milliseconds per second of test audio as "
        "evaluation timed it, on the torch threads named. Kept share: (student - baseline) / (ensemble - baseline) "
        "in frame accuracy, the baseline being the full-size hard-label models. Gain over twin: student - its "
        f"hard twin (points). [95% intervals: {figures['interval']}; {figures['test_utterances']} utterances.]",
        "",
        "| size (layers x width) | params (% of a teacher) | NN ms / s of audio (threads) | student frame acc % "
        "| twin frame acc % | student WER % | twin WER % | kept share of the ensemble's gain % "
        "| gain over twin, frame acc | gain over twin, WER | epochs students; twins | on the Pareto front |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in figures["sizes"]:
        blank = {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}
        epochs = "; ".join(", ".join(str(x) for x in s["epochs"][k]) for k in ("students", "hard"))
        lines.append(
            f"| {s['size']}{' (full size)' if s['full_size'] else ''} | {s['params']:,} "
            f"({_fmt(100 * s['params_share_of_teacher'], 0)}%) | {_fmt(s['nn_ms_per_s'], 2)} "
            f"({', '.join(map(str, s['torch_threads']))}) | {_pm(s['student_test_frame_acc'])} | "
            f"{_pm(s['hard_test_frame_acc'])} | {_pm(s['student_test_wer'])} | {_pm(s['hard_test_wer'])} | "
            f"{format_interval(s.get('kept_share_test_frame_acc', blank), 0, 100)} | "
            f"{format_interval(s.get('twin_gain_test_frame_acc', blank))} | "
            f"{format_interval(s.get('twin_gain_test_wer', blank))} | "
            f"{epochs} | {'yes' if s['student_on_pareto_front'] else 'no'} |"
        )
    for ref in figures["references"].values():
        lines.append(
            f"\n{ref['system']}: {ref['params']:,} params, {_fmt(ref['nn_ms_per_s'], 2)} NN ms / s of audio "
            f"({', '.join(map(str, ref['torch_threads']))} thread(s)), test frame acc {_pm(ref['test_frame_acc'])}%, "
            f"test WER {_pm(ref['test_wer'])}%."
        )
    return lines
