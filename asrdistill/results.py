"""The results table: baseline vs ensemble vs distilled student, beside the paper.

Each evaluated system leaves ``<exp>/<system>/metrics.json`` (see
:class:`SystemResult`); :func:`collect_results` gathers them into
``results.json``, ``results.md`` and a PNG plot of frame accuracy and WER per
system, and states the share of the ensemble's frame-accuracy gain over the
baseline that the distilled student keeps (the paper's headline: > 80%).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asrdistill.fileio import atomic_path, write_json_atomic, write_text_atomic

__all__ = ["SystemResult", "PAPER", "kept_share", "best_temperature", "collect_results"]

log = logging.getLogger(__name__)

# Hinton, Vinyals & Dean (2015), Table 1 (2,000 h, 14,000 senones, 8 x 2560 DNN).
PAPER = [
    {"system": "paper: baseline", "test_frame_acc": 58.9, "test_wer": 10.9},
    {"system": "paper: 10x ensemble", "test_frame_acc": 61.1, "test_wer": 10.7},
    {"system": "paper: distilled single model", "test_frame_acc": 60.8, "test_wer": 10.7},
]


@dataclass
class SystemResult:
    """Figures for one system; accuracies and WERs in percent, NaN when not measured."""

    system: str                     # e.g. "baseline", "teacher_3", "ensemble", "student_T2"
    kind: str                       # baseline | teacher | ensemble | student | fraction_hard | fraction_soft
    params: int = 0                 # parameters used at run time (ensemble: all members)
    dev_frame_acc: float = math.nan
    test_frame_acc: float = math.nan
    dev_wer: float = math.nan
    test_wer: float = math.nan
    nn_seconds_per_frame: float = math.nan  # network forward cost at decoding time
    decode_rtf: float = math.nan            # search only, one CPU core
    extra: dict = field(default_factory=dict)  # e.g. temperature, members, data fraction

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "SystemResult":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{k: (math.nan if v is None else v) for k, v in data.items()})


def kept_share(baseline: float, ensemble: float, student: float) -> float:
    """Share of the ensemble's gain over the baseline that the student keeps (NaN if no gain)."""
    gain = ensemble - baseline
    return (student - baseline) / gain if gain > 0 else math.nan


def best_temperature(student_dirs: list[str | Path]) -> float:
    """The temperature of the student with the best dev frame accuracy (model selection on dev, never test)."""
    scores = {}
    for d in student_dirs:
        result = Path(d) / "train_result.json"
        if not result.is_file():
            raise FileNotFoundError(f"{result}: student not trained")
        cfg = json.loads((Path(d) / "train_config.json").read_text(encoding="utf-8"))
        scores[float(cfg["distill"]["temperature"])] = json.loads(result.read_text(encoding="utf-8"))["best_dev_acc"]
    if not scores:
        raise ValueError("best_temperature: no student folders given")
    best = max(scores, key=scores.get)
    log.info("dev frame accuracy by temperature: %s -> T=%g", {f"{t:g}": round(a, 4) for t, a in scores.items()}, best)
    return best


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _best_student(rows: list[SystemResult], kind: str = "student") -> SystemResult | None:
    students = [r for r in rows if r.kind == kind and not math.isnan(r.dev_frame_acc)]
    return max(students, key=lambda r: r.dev_frame_acc) if students else None


def collect_results(exp_dir: str | Path, order: list[str], title: str = "Results") -> dict:
    """Write ``results.json``, ``results.md`` and ``results.png`` in ``exp_dir`` from the systems' metrics."""
    exp_dir = Path(exp_dir)
    rows = [SystemResult.load(exp_dir / name / "metrics.json") for name in order
            if (exp_dir / name / "metrics.json").is_file()]
    if not rows:
        raise FileNotFoundError(f"{exp_dir}: no <system>/metrics.json found for {order}")
    by_kind = {r.kind: r for r in rows if r.kind in ("baseline", "ensemble")}
    summary: dict = {}
    base, ens, stu = by_kind.get("baseline"), by_kind.get("ensemble"), _best_student(rows)
    if base and ens and stu:
        summary = {
            "best_student": stu.system,
            "kept_share_test_frame_acc": kept_share(base.test_frame_acc, ens.test_frame_acc, stu.test_frame_acc),
            "kept_share_dev_frame_acc": kept_share(base.dev_frame_acc, ens.dev_frame_acc, stu.dev_frame_acc),
            "ensemble_gain_test_frame_acc": ens.test_frame_acc - base.test_frame_acc,
            "student_gain_test_frame_acc": stu.test_frame_acc - base.test_frame_acc,
        }
    hard, soft = _best_student(rows, "fraction_hard"), _best_student(rows, "fraction_soft")
    if hard and soft:
        summary["fraction"] = {"hard": hard.system, "soft": soft.system,
                               "hard_test_frame_acc": hard.test_frame_acc, "soft_test_frame_acc": soft.test_frame_acc}

    write_json_atomic(exp_dir / "results.json", {"systems": [asdict(r) for r in rows], "summary": summary, "paper": PAPER})
    lines = [f"# {title}", "",
             "| system | params | dev frame acc % | test frame acc % | dev WER % | test WER % | NN ms / s of audio | search RTF |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        nn_ms = r.nn_seconds_per_frame * 100 * 1000  # 100 frames per second of audio
        lines.append(f"| {r.system} | {r.params:,} | {_fmt(r.dev_frame_acc)} | {_fmt(r.test_frame_acc)} | "
                     f"{_fmt(r.dev_wer)} | {_fmt(r.test_wer)} | {_fmt(nn_ms, 1)} | {_fmt(r.decode_rtf, 3)} |")
    for p in PAPER:
        lines.append(f"| {p['system']} | 85M per model | - | {p['test_frame_acc']:.1f} | - | {p['test_wer']:.1f} | - | - |")
    lines.append("")
    if "kept_share_test_frame_acc" in summary:
        lines.append(
            f"The ensemble gains {summary['ensemble_gain_test_frame_acc']:+.2f} points of test frame accuracy over the "
            f"baseline; the best student on dev ({summary['best_student']}) gains "
            f"{summary['student_gain_test_frame_acc']:+.2f}, i.e. it keeps "
            f"{_fmt(100 * summary['kept_share_test_frame_acc'], 0)}% of the ensemble's gain "
            f"(dev: {_fmt(100 * summary['kept_share_dev_frame_acc'], 0)}%). The paper's student kept "
            f"{100 * kept_share(58.9, 61.1, 60.8):.0f}%.")
    if "fraction" in summary:
        f = summary["fraction"]
        lines.append(f"Trained on a fraction of the data (the paper's section 6): hard labels {_fmt(f['hard_test_frame_acc'])}% "
                     f"vs soft targets {_fmt(f['soft_test_frame_acc'])}% test frame accuracy (paper, 3% of 2,000 h: 44.5% vs 57.0%).")
    write_text_atomic(exp_dir / "results.md", "\n".join(lines) + "\n")
    _plot(rows, exp_dir / "results.png")
    return {"systems": rows, "summary": summary}


def _plot(rows: list[SystemResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.system for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.7 * len(rows) + 4), 4))
    for ax, key, label in ((axes[0], "test_frame_acc", "test frame accuracy (%)"), (axes[1], "test_wer", "test WER (%)")):
        values = [getattr(r, key) for r in rows]
        colors = ["tab:gray" if r.kind == "teacher" else "tab:blue" if r.kind == "baseline" else
                  "tab:green" if r.kind == "ensemble" else "tab:orange" for r in rows]
        ax.bar(range(len(rows)), [0 if math.isnan(v) else v for v in values], color=colors)
        ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(label)
        finite = [v for v in values if not math.isnan(v)]
        if finite and key == "test_frame_acc":
            ax.set_ylim(max(0, min(finite) - 5), min(100, max(finite) + 2))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
