"""Issue 27's ablation: which lever lets a distilled student keep more of the ensemble's gain.

Run it in a finished README run (stages 0-13 of recipes/librispeech/run.sh done with the default config):

    python benchmarks/ablation_student.py --recipe-dir CLONE/recipes/librispeech [--rows newbob T5] [--jobs 2] [--wer]

Every row is one student that differs from the README's ``exp/student_seed1`` (seed 101, the config's schedule,
T and hard weight) in one thing, trained into ``exp/ablation/<row>`` by the recipe's own ``asrdistill train`` and
scored by ``asrdistill evaluate`` (frame accuracy; ``--wer`` also decodes through exp/graph). The README student
itself is the ``adopted`` row. Each row is compared with the README's baselines and ensemble (the same data,
alignments, members and soft targets) by :func:`asrdistill.results.compare_groups`: kept share of the ensemble's
test frame-accuracy gain and agreement with the ensemble, with 95% paired bootstrap intervals over test
utterances (one seed per row: training randomness is only in the adopted row's 3-seed figure, which the README's
results.md gives). Rows are chosen on dev; test is reported, never used to choose. Finished rows are not
retrained (``asrdistill train`` and ``evaluate`` skip finished work), so a rerun only adds missing rows.

Writes ``exp/ablation/ablation.md`` and ``ablation.json``. Prints progress with each training's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from asrdistill.fileio import write_json_atomic, write_text_atomic
from asrdistill.nnet.ensemble import read_members
from asrdistill.results import (
    INDEPENDENT,
    SystemResult,
    compare_groups,
    format_interval,
    training_summary,
)


@dataclass
class Row:
    """One ablation row: a student trained like exp/student_seed1 except for ``args``."""

    name: str
    lever: str  # the table's group: schedule, temperature, hard weight, epochs, transfer, augmentation
    change: str  # what differs from the adopted student, in words
    args: list[str] = field(default_factory=list)  # replaces/extends the adopted student's train arguments
    temperature: float | None = None  # soft targets at another T (cached in exp/ablation/ensemble)
    hard_weight: float | None = None
    online: bool = False  # the teachers run on each (augmented) batch instead of the cached soft targets
    transfer: bool = False  # train on train + the unlabelled transfer audio the teachers label


TRANSFER_HOURS = 1.2  # about the training set's 1.17 h
NEWBOB = ["--set", "train.schedule=newbob", "--set", "train.newbob_threshold=0.005"]
ROWS = [
    Row("adopted", "schedule", "the README student: cosine over 20 epochs, best dev epoch, no early stop"),
    Row(
        "newbob",
        "schedule",
        "newbob halving + stop and patience 2 (the old rule), cap 30 epochs",
        [*NEWBOB, "--set", "train.stop_threshold=0.001", "--set", "train.patience=2", "--set", "train.epochs=30"],
    ),
    Row(
        "cosine_patience2",
        "schedule",
        "cosine over 20 epochs, early stop after 2 epochs without a dev gain",
        ["--set", "train.patience=2"],
    ),
    Row("epochs30", "epochs", "cosine over 30 epochs", ["--set", "train.epochs=30"]),
    Row("epochs40", "epochs", "cosine over 40 epochs", ["--set", "train.epochs=40"]),
    Row("T1", "temperature", "T = 1", temperature=1.0),
    Row("T5", "temperature", "T = 5", temperature=5.0),
    Row("T10", "temperature", "T = 10", temperature=10.0),
    Row("hw0.333", "hard weight", "hard weight 0.333 (the paper's soft 1 : hard 0.5)", hard_weight=0.333),
    Row("hw0.5", "hard weight", "hard weight 0.5", hard_weight=0.5),
    Row(
        "mixup",
        "augmentation",
        "consistent mixup of input windows (alpha 0.4, per frame): the teachers run online on the student's input",
        ["--set", "train.distill.augment.mixup_alpha=0.4"],
        online=True,
    ),
    Row(
        "unlabelled",
        "transfer set",
        f"+{TRANSFER_HOURS:g} h of unlabelled audio by new training-only talkers, labelled by the teachers "
        "(an epoch holds both sets: twice the updates)",
        transfer=True,
    ),
]


def sh(cmd: list[str], log: Path) -> float:
    """Run one asrdistill command (its output to ``log``); return its wall time. Fails loudly with the log's tail."""
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log.read_text(encoding="utf-8").splitlines()[-20:]
        raise RuntimeError(f"{shlex.join(cmd)} failed (rc {rc}); {log}:\n" + "\n".join(tail))
    return time.perf_counter() - t0


def adopted_setting(recipe: Path, config: str) -> tuple[float, float]:
    """(T, hard weight) of the README students, from exp/student_seed1's training config."""
    distill = json.loads((recipe / "exp/student_seed1/train_config.json").read_text(encoding="utf-8"))["distill"]
    return float(distill["temperature"]), float(distill["hard_weight"])


def train_row(row: Row, recipe: Path, config: str, threads: int, wer: bool) -> float:
    """Train and evaluate one row in exp/ablation/<row>; the wall time of both (0 for the adopted row)."""
    if row.name == "adopted":
        return 0.0
    t, hw = adopted_setting(recipe, config)
    t = row.temperature or t
    hw = hw if row.hard_weight is None else row.hard_weight
    soft = "exp/ensemble/soft_T" if row.temperature is None else "exp/ablation/ensemble/soft_T"
    out = f"exp/ablation/{row.name}"
    data = ["--feats", "data/fbank", "--labels", "exp/tri_ali", "--train-set", "train", "--dev-set", "dev"]
    common = ["--config", config, "--device", "cpu", *data]
    targets = ["--online", "exp/ensemble"] if row.online else ["--soft", f"{soft}{t:g}"]
    targets += ["--transfer", "exp/ablation/transfer"] if row.transfer else []
    train = ["asrdistill", "train", *common, "--role", "student", "--seed", "101", *targets]
    train += ["--temperature", f"{t:g}", "--hard-weight", f"{hw:g}", *row.args, "--threads", str(threads)]
    evaluate = ["asrdistill", "evaluate", *common, "--test-set", "test", "--data", "data", "--threads", str(threads)]
    evaluate += ["--graph", "exp/graph", "--nj", "1"] if wer else []
    log = recipe / out / "ablation.log"
    return sh([*train, "--out", out], log) + sh([*evaluate, out], log)


def extra_temperatures(rows: list[Row], recipe: Path, config: str) -> None:
    """Soft targets of the README ensemble's members at the rows' other temperatures (one inference pass)."""
    temps = sorted({r.temperature for r in rows if r.temperature is not None})
    if not temps:
        return
    members = [str(m.resolve().parent) for m in read_members(recipe / "exp/ensemble")]  # system folders
    data = ["--feats", "data/fbank", "--labels", "exp/tri_ali", "--train-set", "train", "--dev-set", "dev"]
    cmd = ["asrdistill", "ensemble", "--config", config, "--device", "cpu", *data, "--out", "exp/ablation/ensemble"]
    cmd += ["--temperatures", *[f"{t:g}" for t in temps], "--members", *members]
    sh(cmd, recipe / "exp/ablation/ensemble.log")


def transfer_set(rows: list[Row], recipe: Path, config: str) -> None:
    """The transfer rows' unlabelled audio: synthesized beside the corpus (new talkers, no dev/test voice),
    featurised, and labelled by the README ensemble at the students' temperature."""
    if not any(r.transfer for r in rows):
        return
    from data_prep.transfer import synthesize_transfer

    synthesize_transfer(recipe / "data/corpus", TRANSFER_HOURS)
    log = recipe / "exp/ablation/transfer.log"
    sh(["asrdistill", "prepare", "--corpus", "data/corpus", "--subsets", "transfer", "--out", "data"], log)
    sh(["asrdistill", "features", "--config", config, "--nj", "2", "data/transfer", "data/fbank/transfer"], log)
    t, _ = adopted_setting(recipe, config)
    data = ["--feats", "data/fbank", "--labels", "exp/tri_ali", "--train-set", "train", "--dev-set", "dev"]
    sh(
        ["asrdistill", "label-transfer", "--config", config, "--device", "cpu", *data, "--ensemble", "exp/ensemble"]
        + ["--transfer-set", "transfer", "--temperatures", f"{t:g}", "--out", "exp/ablation/transfer"],
        log,
    )


def best_epoch_record(system_dir: Path, best_epoch: int) -> dict:
    """The per-epoch record (dev KL, agreement) of the epoch whose weights the system keeps."""
    records = [json.loads(line) for line in (system_dir / "log" / "metrics.jsonl").read_text().splitlines() if line]
    epochs = [r for r in records if "dev_acc" in r and r.get("epoch") == best_epoch]
    return epochs[-1] if epochs else {}


def compare_row(recipe: Path, row: Row) -> dict:
    """The row's figures against the README's baselines, ensemble and independent baseline."""
    exp = recipe / "exp"
    system = "student_seed1" if row.name == "adopted" else f"ablation/{row.name}"
    student = SystemResult.load(exp / system / "metrics.json")
    student.system = system  # evaluate names a system by its folder's name; compare_groups reads exp/<system>/
    baselines = sorted(p.parent.name for p in exp.glob("baseline_seed*/metrics.json"))
    groups = {
        "baseline": [SystemResult.load(exp / b / "metrics.json") for b in baselines],
        "ensemble": [SystemResult.load(exp / "ensemble/metrics.json")],
        "student": [student],
        INDEPENDENT: [SystemResult.load(exp / INDEPENDENT / "metrics.json")],
    }
    comparison = compare_groups(exp, groups, "test")
    epoch = best_epoch_record(exp / system, int(student.extra.get("best_epoch", -1)))
    return {
        "row": row.name,
        "lever": row.lever,
        "change": row.change,
        "trained": training_summary(student),
        "dev_frame_acc": student.dev_frame_acc,
        "test_frame_acc": student.test_frame_acc,
        "test_wer": student.test_wer,
        "kept_share_dev": comparison["kept_share_dev_frame_acc"],
        "kept_share_test": comparison["kept_share_test_frame_acc"],
        "agreement_test": comparison["agreement_with_ensemble_test"]["systems"][student.system],
        "independent_agreement_test": comparison["agreement_with_ensemble_test"]["groups"][INDEPENDENT],
        "dev_kl_best_epoch": epoch.get("dev_kl"),
        "train_agree_best_epoch": epoch.get("train_agree"),
        "train_frames_per_sec": student.extra.get("train_frames_per_sec"),
    }


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(rows: list[dict], header: str) -> str:
    """The ablation table, one group of rows per lever. Every lever is one change from the adopted student, so each
    group is judged against it: "dev vs adopted", and the dev-best of the group with the adopted row included."""
    adopted = next((r for r in rows if r["row"] == "adopted"), None)
    lines = [
        header,
        "",
        "| lever | row | what differs | epochs run/budget (best), end | dev acc % | dev vs adopted | test acc % | "
        "kept share test % [95%] (dev) | agrees with ensemble, test % [95%] | dev KL at best epoch | "
        "test WER % |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lever in dict.fromkeys(r["lever"] for r in rows):
        group = [r for r in rows if r["lever"] == lever]
        candidates = group + ([adopted] if adopted and adopted not in group else [])
        best = max(candidates, key=lambda r: r["dev_frame_acc"])["row"] if len(candidates) > 1 else None
        for r in group:
            mark = " (dev-best)" if r["row"] == best else ""
            versus = r["dev_frame_acc"] - adopted["dev_frame_acc"] if adopted else math.nan
            lines.append(
                f"| {lever} | {r['row']}{mark} | {r['change']} | {r['trained']} | {_f(r['dev_frame_acc'])} | "
                f"{versus:+.2f} | {_f(r['test_frame_acc'])} | {format_interval(r['kept_share_test'], 0, 100)} "
                f"({_f(100 * r['kept_share_dev'], 0)}) | {format_interval(r['agreement_test'])} | "
                f"{_f(r['dev_kl_best_epoch'], 3)} | {_f(r['test_wer'])} |"
            )
    ind = rows[0]["independent_agreement_test"]
    lines += [
        "",
        f"The independent baseline (seed N+1, no ensemble member) agrees with the ensemble on "
        f"{format_interval(ind)} % of test frames.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe-dir", type=Path, required=True, help="a finished README run (holds exp/ and data/)")
    p.add_argument(
        "--config",
        default="conf/synthetic_cpu.yaml",
        help="its config, relative to --recipe-dir (default: %(default)s)",
    )
    p.add_argument("--rows", nargs="+", default=[r.name for r in ROWS], help="rows to run (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training (default: %(default)s)")
    p.add_argument("--wer", action="store_true", help="also decode every row through exp/graph (default: off)")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="only remake the table from the rows' finished evaluations, whatever options made them (default: off)",
    )
    args = p.parse_args()
    recipe = args.recipe_dir.resolve()
    known = {r.name: r for r in ROWS}
    unknown = [r for r in args.rows if r not in known]
    if unknown:
        p.error(f"unknown row(s) {unknown}; known: {list(known)}")
    rows = [known[r] for r in args.rows]
    os.chdir(recipe)
    if not args.table_only:
        extra_temperatures(rows, recipe, args.config)
        transfer_set(rows, recipe, args.config)
        t0 = time.perf_counter()

        def one(row: Row) -> None:
            wall = train_row(row, recipe, args.config, args.threads, args.wer)
            print(f"[{time.perf_counter() - t0:7.0f} s] {row.name}: trained and evaluated in {wall:.0f} s", flush=True)

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, rows))
    results = [compare_row(recipe, r) for r in rows]
    out = recipe / "exp/ablation"
    write_json_atomic(out / "ablation.json", {"rows": results})
    write_text_atomic(out / "ablation.md", markdown(results, "# Student ablation (one seed per row, seed 101)"))
    print((out / "ablation.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
