"""The results figure: the table's groups, differences and kept share, and the learning curves, in one PNG.

Drawn by :func:`asrdistill.results.collect_results` from the figures it has just computed.
"""

from __future__ import annotations

import math
from pathlib import Path

from asrdistill.fileio import atomic_path
from asrdistill.plots import epoch_records
from asrdistill.results import COMBINED, DIFFERENCES, FROM_SPECIALISTS, INDEPENDENT, difference_label, kept_share

__all__ = ["plot_results", "plot_compression"]

COLORS = {
    "baseline": "tab:blue",
    "ensemble": "tab:green",
    "student": "tab:orange",
    INDEPENDENT: "tab:cyan",
    COMBINED: "tab:purple",
    FROM_SPECIALISTS: "tab:brown",
}


def plot_results(exp_dir: Path, groups: dict, summary: dict, comparison: dict, path: Path) -> None:
    """Six panels: test frame accuracy and WER per group (error bars: sd over seeds), the differences with their
    intervals, the kept share against the paper's, and the learning curves (dev accuracy, dev KL to the
    ensemble) of the first student and of the independent baseline (else the first baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(max(15, 0.6 * len(groups) + 10), 9))
    _plot_groups(axes[0, 0], axes[0, 1], groups, summary)
    _plot_differences(axes[0, 2], comparison)
    _plot_kept_share(axes[1, 0], comparison)
    _plot_curves(axes[1, 1], axes[1, 2], exp_dir, groups)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _plot_groups(acc_ax, wer_ax, groups: dict, summary: dict) -> None:
    """Bars per group; a group without a WER (e.g. the sweep) is left out of the WER panel, not drawn as 0."""
    for ax, key, label in (
        (acc_ax, "test_frame_acc", "test frame accuracy (%), higher is better"),
        (wer_ax, "test_wer", "test WER (%), lower is better"),
    ):
        names = [n for n in groups if not math.isnan(summary[n][key]["mean"])]
        means = [summary[n][key]["mean"] for n in names]
        sds = [summary[n][key]["std"] if summary[n][key]["n"] > 1 else 0.0 for n in names]
        ax.bar(range(len(names)), means, yerr=sds, capsize=3, color=[COLORS.get(n, "tab:gray") for n in names])
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(label)
        if means and key == "test_frame_acc":
            ax.set_ylim(max(0, min(means) - 5), min(100, max(means) + 2))


def _plot_differences(ax, comparison: dict) -> None:
    """Each difference as a point with its interval, one labelled row each (readable however many there are)."""
    shown = [
        (f"{prefix}_test_{metric}", system, f"{difference_label(prefix, comparison)}, {unit}")
        for metric, unit in (("frame_acc", "frame acc (> 0 better)"), ("wer", "WER (< 0 better)"))
        for prefix, system, _ in DIFFERENCES
        if f"{prefix}_test_{metric}" in comparison
    ]
    for i, (key, system, _) in enumerate(shown):
        iv = comparison[key]
        ax.errorbar(
            [iv["value"]],
            [i],
            xerr=[[iv["value"] - iv["ci_low"]], [iv["ci_high"] - iv["value"]]],
            fmt="o",
            capsize=4,
            color=COLORS.get(system, "tab:gray"),
        )
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(shown)), [label for _, _, label in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference on test, points (95% interval)")


def _plot_kept_share(ax, comparison: dict) -> None:
    """The student's kept share of the ensemble's gain (test with its interval, dev) beside the paper's."""
    paper = 100 * kept_share(58.9, 61.1, 60.8)
    test = comparison.get("kept_share_test_frame_acc")
    if test is not None and not math.isnan(test["value"]):
        ax.errorbar(
            [0],
            [100 * test["value"]],
            yerr=[[100 * (test["value"] - test["ci_low"])], [100 * (test["ci_high"] - test["value"])]],
            fmt="o",
            capsize=5,
            color=COLORS["student"],
        )
    dev = comparison.get("kept_share_dev_frame_acc", math.nan)
    if not math.isnan(dev):
        ax.plot([1], [100 * dev], "o", color=COLORS["student"], mfc="white")
    ax.axhline(paper, color="black", ls="--", lw=1, label=f"paper: {paper:.0f}%")
    ax.axhline(80, color="tab:red", ls=":", lw=1, label="goal: 80%")
    ax.set_xticks([0, 1], ["test (95% interval)", "dev"])
    ax.set_xlim(-0.7, 1.7)
    ax.set_ylabel("share of the ensemble's frame-acc gain kept (%)")
    ax.legend(fontsize=8)


def _plot_curves(acc_ax, kl_ax, exp_dir: Path, groups: dict) -> None:
    """Dev frame accuracy and dev KL to the ensemble per epoch, with the ensemble's dev accuracy as a line."""
    reference = INDEPENDENT if INDEPENDENT in groups else "baseline"
    for group, r in ((g, groups[g][0]) for g in (reference, "student") if groups.get(g)):
        rows = epoch_records(exp_dir / r.system)
        epochs = [row["epoch"] + 1 for row in rows]
        color = COLORS.get(group, "tab:gray")
        acc_ax.plot(epochs, [100 * row["dev_acc"] for row in rows], marker="o", ms=3, color=color, label=r.system)
        if any("dev_kl" in row for row in rows):
            kl_ax.plot(
                epochs, [row.get("dev_kl", math.nan) for row in rows], marker="o", ms=3, color=color, label=r.system
            )
    if "ensemble" in groups:
        acc_ax.axhline(groups["ensemble"][0].dev_frame_acc, color=COLORS["ensemble"], ls="--", label="ensemble")
    acc_ax.set(xlabel="epoch", ylabel="dev frame accuracy (%)")
    kl_ax.set(xlabel="epoch", ylabel="dev KL(ensemble || model) per frame, lower is closer")
    for ax in (acc_ax, kl_ax):
        if ax.lines:
            ax.legend(fontsize=8)


def plot_compression(figures: dict, front: list[int], path: Path) -> None:
    """Test frame accuracy (and WER, where decoded) against the network's cost per second of audio: each size's
    students and hard twins (error bars: sd over seeds), the ensemble and the full-size baseline marked, and the
    Pareto front of the single models (``front``: indices into the sizes' (student, twin) points, in order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, refs = figures["sizes"], figures["references"]
    metrics = [("test_frame_acc", "test frame accuracy (%), higher is better")]
    if any(not math.isnan(s["student_test_wer"]["mean"]) for s in sizes):
        metrics.append(("test_wer", "test WER (%), lower is better"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(7.5 * len(metrics), 5.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        for who, marker, color in (("student", "o", COLORS["student"]), ("hard", "s", COLORS["baseline"])):
            stats = [s[f"{who}_{key}"] for s in sizes]
            ax.errorbar(
                [s["nn_ms_per_s"] for s in sizes],
                [st["mean"] for st in stats],
                yerr=[st["std"] if st["n"] > 1 else 0.0 for st in stats],
                fmt=marker,
                capsize=3,
                color=color,
                label="distilled students" if who == "student" else "hard-label twins",
            )
        for s in sizes:
            ax.annotate(
                s["size"] + (" (full)" if s["full_size"] else ""),
                (s["nn_ms_per_s"], s[f"student_{key}"]["mean"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
        for name, marker, size in (("ensemble", "*", 14), ("baseline", "X", 10)):
            if name in refs:
                ref = refs[name]
                ax.plot(
                    [ref["nn_ms_per_s"]],
                    [ref[key]["mean"]],
                    marker,
                    ms=size,
                    color=COLORS[name],
                    ls="none",
                    label=f"{ref['system']} ({ref['params']:,} params)",
                )
        if key == "test_frame_acc" and front:
            pts = sorted(
                (sizes[i // 2]["nn_ms_per_s"], sizes[i // 2][f"{'student' if i % 2 == 0 else 'hard'}_{key}"]["mean"])
                for i in front
            )
            ax.step([c for c, _ in pts], [a for _, a in pts], where="post", color="gray", ls=":", label="Pareto front")
        ax.set_xscale("log")
        ax.set(xlabel="network ms per second of audio (log scale)", ylabel=label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
