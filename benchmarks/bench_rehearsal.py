"""Real-size rehearsal: the recipe run one stage at a time, each stage's cost recorded, and from them an
estimate of every stage for train-clean-100 on a 16-core machine with one GPU.

    # the rehearsal (synthetic_large.yaml: about an hour on 2 idle cores); a fresh work folder
    PYTHONPATH=. nice -n 5 .venv/bin/python benchmarks/bench_rehearsal.py \\
        --config recipes/librispeech/conf/synthetic_large.yaml --work /tmp/rehearsal
    # the estimate again from a finished rehearsal, under other assumptions
    PYTHONPATH=. .venv/bin/python benchmarks/bench_rehearsal.py --work /tmp/rehearsal --estimate-only \\
        --gpu-train-fps 4e5

The work folder gets a copy of ``recipes/librispeech/run.sh`` and of the config (as a clone would have them:
``run.sh`` works in its own folder, so ``data/`` and ``exp/`` land there), and each stage runs as
``run.sh --config conf/<name> --stage N --stop-stage N --nj NJ`` with its output in ``rehearsal_logs/``;
the stages are read from run.sh and known by the name each logs (``ROLES``), not by their numbers.
Measured per stage (``rehearsal.json``, merged by stage, so a failed stage can be re-run alone):

- ``wall_s``; ``cpu_s``: user + system seconds of the stage's whole process tree (``RUSAGE_CHILDREN`` of a
  small launcher process: every descendant that was waited for, i.e. all of them in a clean run);
- ``max_rss_mb``: the peak RSS of the largest single process of the tree (Linux ``ru_maxrss`` of
  ``RUSAGE_CHILDREN``: a maximum over processes, not a sum: two workers of 1 GB each read 1 GB);
- ``sum_rss_mb``: the peak of the summed RSS of the tree's live processes, sampled every 0.5 s (pages
  shared by forked workers count once per process; short peaks between samples are missed);
- ``load_1min``: the machine's load average when the stage ended (other jobs inflate wall time, not CPU);
- ``sizes``: what drives the cost, read from the outputs so far (audio hours and frames per set,
  lexicon words, senones, n-grams, HCLG states and arcs, DNN frames trained, search real-time factor).

The estimate multiplies each stage's measured CPU seconds by explicit ratios (target size / rehearsal
size) and divides by the target's cores where the stage runs ``--nj`` processes; the DNN stages (and the
networks of the ensemble and the evaluation) run on the GPU, which this machine lacks, so they are
work / rate with the rate printed as an ASSUMPTION. Every ratio and assumption is printed in the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from asrdistill.aligner.triphone import TriConfig
from asrdistill.config import from_dict, read_yaml
from asrdistill.decoding.decode import DecodeConfig

REPO = Path(__file__).resolve().parents[1]
RUN_SH = REPO / "recipes" / "librispeech" / "run.sh"
TARGET_CONFIG = REPO / "recipes" / "librispeech" / "conf" / "librispeech_gpu.yaml"
# run.sh's stages by the name each begins with (their numbers have moved before): role -> name prefix
ROLES = {
    "corpus": "corpus",
    "lang": "Kaldi data dirs",
    "fbank": "fbank",
    "mono": "monophone",
    "tri": "decision tree",
    "graph": "language model",
    "baseline": "baseline DNN",
    "teachers": "baselines with seeds",
    "ensemble": "ensemble",
    "students": "students",
    "fraction": "section 6",
    "specialists": "specialists",
    "evaluate": "decode and score",
    "results": "results",
    "compression": "compression",
}
OPTIONAL = {"specialists", "compression"}  # stages a config turns on; not part of the estimate
FRAMES_PER_HOUR = 360_000  # 10 ms frame shift
SAMPLE_S = 0.5  # RSS sampling period
MEASURES = {
    "wall_s": "wall-clock seconds of run.sh --stage N --stop-stage N",
    "cpu_s": "user + system CPU seconds of the stage's process tree (RUSAGE_CHILDREN of a launcher: every "
    "waited-for descendant)",
    "max_rss_mb": "peak RSS of the largest single process of the tree (RUSAGE_CHILDREN ru_maxrss: a max, not a sum)",
    "sum_rss_mb": f"peak of the summed RSS of the tree's live processes, sampled every {SAMPLE_S} s (shared pages "
    "counted per process)",
    "load_1min": "1-minute load average when the stage ended",
}


# ----------------------------------------------------------------------------- measuring
@dataclass
class StageRun:
    """One stage's measured cost and the sizes its outputs show (see the module docstring)."""

    stage: int
    role: str  # a key of ROLES
    name: str
    rc: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    sum_rss_mb: float
    load_1min: float
    sizes: dict[str, float] = field(default_factory=dict)


# Runs the command in a small fresh interpreter and reports that one's RUSAGE_CHILDREN: a child's ru_maxrss
# starts at its parent's RSS (Linux keeps the high-water mark across fork and exec), and this process holds
# torch, so measured from here every stage would weigh at least as much as the benchmark itself.
_LAUNCHER = """
import json, resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "cpu_s": u.ru_utime + u.ru_stime, "max_rss_mb": u.ru_maxrss / 1024}, f)
"""


def _sample_tree_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    """Keep ``peak[0]`` at the largest summed RSS (MB) of ``pid``'s descendants until ``stop``."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.wait(SAMPLE_S):
        total = 0
        try:
            procs = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak[0] = max(peak[0], total / 2**20)


def measure(cmd: list[str], cwd: Path, log_path: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd`` to completion with its output in ``log_path``; its rc, wall, CPU and memory figures."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = log_path.with_suffix(".rusage.json")
    usage_path.unlink(missing_ok=True)
    peak = [0.0]
    stop = threading.Event()
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _LAUNCHER, str(usage_path), *cmd],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, stop, peak), daemon=True)
        sampler.start()
        proc.wait()
        stop.set()
        sampler.join()
    if not usage_path.is_file():
        raise RuntimeError(f"{cmd[:3]}...: the launcher ended (rc {proc.returncode}) without its usage record")
    return json.loads(usage_path.read_text()) | {
        "wall_s": time.monotonic() - t0,
        "sum_rss_mb": peak[0],
        "load_1min": os.getloadavg()[0],
    }


def prepare_work(work: Path, config: Path) -> Path:
    """Copy run.sh and the config into ``work`` (a fresh clone's layout); the config's path there."""
    (work / "conf").mkdir(parents=True, exist_ok=True)
    shutil.copy2(RUN_SH, work / "run.sh")
    dest = work / "conf" / config.name
    if dest.resolve() != config.resolve():
        shutil.copy2(config, dest)
    return dest


def stage_roles(run_sh: Path) -> dict[int, str]:
    """run.sh's stage numbers -> roles, from its ``begin N "name"`` lines; an unknown name is an error."""
    roles = {}
    for number, name in re.findall(r'begin (\d+) "([^"]*)"', run_sh.read_text()):
        role = next((r for r, prefix in ROLES.items() if name.startswith(prefix)), None)
        if role is None:
            raise ValueError(
                f"{run_sh}: stage {number} ({name!r}) is unknown to this benchmark: add it to ROLES and to the estimate"
            )
        roles[int(number)] = role
    return roles


def _stage_name(log_path: Path, stage: int) -> str:
    m = re.search(rf"run\.sh: Stage {stage}: (.*)", log_path.read_text(errors="replace"))
    return m.group(1).strip() if m else "?"


def run_stage(work: Path, config: Path, stage: int, role: str, nj: int) -> StageRun:
    """``run.sh --stage N --stop-stage N`` in ``work``, with ``asrdistill`` from this interpreter's folder."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log_path = work / "rehearsal_logs" / f"stage{stage}.log"
    cmd = [
        "bash",
        "run.sh",
        "--config",
        str(config.relative_to(work)),
        "--stage",
        str(stage),
        "--stop-stage",
        str(stage),
        "--nj",
        str(nj),
    ]
    m = measure(cmd, work, log_path, env)
    return StageRun(stage=stage, role=role, name=_stage_name(log_path, stage), sizes=read_sizes(work, config), **m)


# ----------------------------------------------------------------------------- sizes from the outputs
def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _frames(feats_dir: Path) -> int:
    manifest = _json(feats_dir / "feats.manifest.json")
    return sum(s["num_frames"] for s in manifest.get("shards", []))


def _dnn_frames(exp: Path, patterns: list[str]) -> tuple[int, int]:
    """(models, frames trained summed over their epochs) of the exp/ folders matching ``patterns``."""
    results = [_json(p / "train_result.json") for pat in patterns for p in sorted(exp.glob(pat))]
    results = [r for r in results if r]
    return len(results), sum(int(r.get("train_frames", 0)) for r in results)


# role -> the exp/ folders its trainings write
TRAINED = {
    "baseline": ["baseline_seed1"],
    "teachers": ["baseline_seed[2-9]", "baseline_seed[1-9][0-9]"],
    "students": ["sweep_T*", "student_seed*"],
    "fraction": ["fraction_*"],
}


def read_sizes(work: Path, config: Path) -> dict[str, float]:
    """The cost drivers the outputs in ``work`` show so far (absent outputs give no entry)."""
    recipe = read_yaml(config)["recipe"]
    sets = {"train": recipe["train_set"], "dev": recipe["dev_set"], "test": recipe["test_set"]}
    data, exp = work / "data", work / "exp"
    sizes: dict[str, float] = {}
    speakers = data / "corpus" / "LibriSpeech" / "SPEAKERS.TXT"
    if speakers.is_file():  # minutes per speaker: the synthetic corpus lists only its own talkers
        rows = [line.split("|") for line in speakers.read_text().splitlines() if not line.startswith(";")]
        sizes["corpus_hours"] = round(sum(float(r[3]) for r in rows if len(r) > 3) / 60, 3)
    for role, name in sets.items():
        frames = _frames(data / "fbank" / name)
        if frames:
            sizes[f"frames_{role}"] = frames
            sizes[f"hours_{role}"] = round(frames / FRAMES_PER_HOUR, 3)
        spk2utt = data / name / "spk2utt"
        if spk2utt.is_file():
            lines = spk2utt.read_text().splitlines()
            sizes[f"speakers_{role}"] = len(lines)
            sizes[f"utterances_{role}"] = sum(len(line.split()) - 1 for line in lines)
    lexicon = data / "lang" / "lexicon.txt"
    if lexicon.is_file():
        entries = [line.split(maxsplit=1)[0] for line in lexicon.read_text().splitlines() if line.strip()]
        sizes["lexicon_words"], sizes["pronunciations"] = len(set(entries)), len(entries)
    if tree := _json(exp / "tri" / "tree_info.json"):
        sizes["senones"] = tree["num_pdfs"]
    if lm := _json(exp / "lm" / "lm.json"):
        sizes["lm_words"], sizes["ngrams"] = lm["ngram_counts"][0], sum(lm["ngram_counts"])
    if graph := _json(exp / "graph" / "graph.json"):
        sizes |= {
            "hclg_states": graph["HCLG_states"],
            "hclg_arcs": graph["HCLG_arcs"],
            "graph_cpu_s": graph["build_cpu_seconds"],
            "graph_peak_rss_mb": graph["peak_rss_mb"],
        }
    for role, patterns in TRAINED.items():
        models, frames = _dnn_frames(exp, patterns)
        if models:
            sizes[f"models_{role}"], sizes[f"dnn_frames_{role}"] = models, frames
    rtfs = [m["decode_rtf"] for p in sorted(exp.glob("*/metrics.json")) if (m := _json(p)).get("decode_rtf")]
    if rtfs:
        sizes["search_rtf_per_core"] = round(sum(rtfs) / len(rtfs), 5)
    return sizes


# ----------------------------------------------------------------------------- the estimate
def recipe_counts(config: dict) -> dict[str, int]:
    """How many trainings, networks and searches a config's recipe runs (run.sh's loops, counted)."""
    r, train = config["recipe"], config["train"]
    teachers, seeds = int(r["num_teachers"]), int(r["student_seeds"])
    temps, hws = len(r["temperatures"]), len(r["hard_weights"])
    sweep = 0 if temps == hws == 1 else temps + hws - 1  # one (T, hard weight): fixed by the config, no sweep
    systems = teachers + 1 + 1 + seeds + 2  # baselines, ensemble, independent baseline, students, fraction hard/soft
    return {
        "models_baseline": 1,
        "models_teachers": teachers - 1,
        "models_students": sweep + seeds + 1,  # and the independent baseline, trained in the students' stage
        "models_fraction": 2,
        "ensemble_members": teachers,
        "max_epochs": int(train["epochs"]),
        "decoded_systems": systems,
        "network_passes": 2 * teachers + 1 + seeds + 2,  # the ensemble runs every member
        "sweep_networks": sweep,  # frame accuracy only
        "dev_scales": len(from_dict(DecodeConfig, config.get("decode") or {}).sweep_scales),
    }


@dataclass(frozen=True)
class Target:
    """train-clean-100 on one machine; the fields marked ASSUMED are not measured in this repository."""

    hours: dict[str, float] = field(default_factory=lambda: {"train": 100.6, "dev": 5.4, "test": 5.4})
    lexicon_words: int = 200_000  # librispeech-lexicon.txt (OpenSLR 11), ~200k words
    ngrams: float = 3.5e6  # ASSUMED: tgsmall (3-gram.pruned.3e-7): the header of the ARPA gives it
    cores: int = 16
    gpu_train_fps: float = 2.5e5  # ASSUMED: paper DNN (8 x 2560), bf16, batch 1024, frames/s trained
    gpu_infer_fps: float = 7.5e5  # ASSUMED: the same network's forward pass alone, ~3x training
    download_gb: float = 7.0  # train-clean-100 6.3 GB + dev/test-clean 0.7 GB + tgsmall and lexicon
    download_mb_s: float = 50.0  # ASSUMED network + md5 + untar rate

    @property
    def frames(self) -> dict[str, float]:
        return {k: h * FRAMES_PER_HOUR for k, h in self.hours.items()}


@dataclass(frozen=True)
class Factor:
    """One ratio of a scaling rule: the size that drives the stage, in the rehearsal (here) and the target."""

    name: str
    here: float
    there: float

    @property
    def ratio(self) -> float:
        return self.there / self.here


@dataclass(frozen=True)
class Estimate:
    """``base_s`` x the factors' ratios / ``divisor``: one row of the estimate table."""

    stage: str
    basis: str  # what base_s is, in words
    base_s: float
    factors: tuple[Factor, ...] = ()
    divisor: float = 1.0  # cores the stage's processes spread over in the target (1: one process)
    note: str = ""

    @property
    def seconds(self) -> float:
        return self.base_s * math.prod(f.ratio for f in self.factors) / self.divisor

    @property
    def rule(self) -> str:
        parts = [f"{self.basis} ({self.base_s:,.0f} s)"]
        parts += [f"x {f.name} {_fmt_n(f.there)}/{_fmt_n(f.here)} (x{f.ratio:,.3g})" for f in self.factors]
        if self.divisor != 1:
            parts.append(f"/ {self.divisor:g} cores")
        return " ".join(parts)


def _fmt_n(x: float) -> str:
    return f"{x / 1e6:.3g}M" if x >= 1e6 else f"{x / 1e3:.3g}k" if x >= 1e4 else f"{x:,.4g}"


def _gpu_work(what: str, frames: float, times: int, rate: float, kind: str) -> Estimate:
    return Estimate(
        what, f"{frames / 1e6:,.1f}M frames x {times} / {rate:,.0f} frames/s ({kind}, ASSUMED)", frames * times / rate
    )


def estimate(runs: dict[str, StageRun], here_cfg: dict, there_cfg: dict, target: Target) -> list[Estimate]:
    """Every stage of the target run (``runs`` by role), from the rehearsal's measurements and explicit ratios.

    The optional stages (specialists, compression) are left out: off in the default configs and the rehearsal.
    """
    sizes: dict[str, float] = {}
    for run in sorted(runs.values(), key=lambda r: r.stage):
        sizes |= run.sizes
    cpu = {role: r.cpu_s for role, r in runs.items()}
    n = recipe_counts(there_cfg)
    frames, cores = target.frames, target.cores
    hours_here = sum(sizes[f"hours_{k}"] for k in ("train", "dev", "test"))
    train_f = Factor("train frames", sizes["frames_train"], frames["train"])
    ngrams = Factor("n-grams", sizes["ngrams"], target.ngrams)
    tri_here, tri_there = (from_dict(TriConfig, cfg.get("tri") or {}) for cfg in (here_cfg, there_cfg))
    dec_here, dec_there = (from_dict(DecodeConfig, cfg.get("decode") or {}) for cfg in (here_cfg, there_cfg))
    graph_gb = sizes["graph_peak_rss_mb"] * ngrams.ratio / 1024

    def label(role: str, what: str) -> str:
        return f"{runs[role].stage} {what}"

    rows = [
        Estimate(
            label("corpus", "corpus"),
            f"download {target.download_gb:g} GB at {target.download_mb_s:g} MB/s (ASSUMED)",
            target.download_gb * 1000 / target.download_mb_s,
            note="here: synthesis, not comparable",
        ),
        Estimate(
            label("lang", "data dirs, lang"),
            "CPU s here",
            cpu["lang"],
            (Factor("lexicon words", sizes["lexicon_words"], target.lexicon_words),),
            note="one process over the lexicon; data dirs are a few seconds",
        ),
        Estimate(
            label("fbank", "fbank"),
            "CPU s here",
            cpu["fbank"],
            (Factor("audio hours", hours_here, sum(target.hours.values())),),
            cores,
        ),
        Estimate(
            label("mono", "mono"),
            "CPU s here",
            cpu["mono"],
            (train_f,),
            cores,
            note="the flat start on mono.subset_utts utterances does not grow with the frames",
        ),
        Estimate(
            label("tri", "tri + labels"),
            "CPU s here",
            cpu["tri"],
            (
                train_f,
                Factor("alignment passes", len(tri_here.realign_iters) + 1, len(tri_there.realign_iters) + 1),
                Factor("Gaussians", tri_here.max_gaussians, tri_there.max_gaussians),
            ),
            cores,
            note=f"passes: realignments + the label pass; {tri_here.feature_transform} here, "
            f"{tri_there.feature_transform} there; upper bound: as if every Gaussian were scored",
        ),
        Estimate(
            label("graph", "LM"),
            "CPU s here",
            cpu["graph"] - sizes["graph_cpu_s"],
            (ngrams,),
            note="here: trained (kaldingram); there: the official ARPA read and checked",
        ),
        Estimate(
            label("graph", "HCLG"),
            "graph CPU s here",
            sizes["graph_cpu_s"],
            (ngrams,),
            note=f"one process; peak RSS {sizes['graph_peak_rss_mb']:,.0f} MB here, ~{graph_gb:,.1f} GB there "
            "(linear in n-grams: BENCHMARKS measured x1.75-1.86 per doubling at dd8ec89)",
        ),
    ]

    def training(role: str) -> Estimate:
        models = n[f"models_{role}"]
        row = _gpu_work(
            label(role, f"{role} (GPU)"),
            frames["train"],
            models * n["max_epochs"],
            target.gpu_train_fps,
            f"{models} model(s) x {n['max_epochs']} epochs at most",
        )
        return dataclasses.replace(row, note=_cpu_rate_note(sizes, role, cpu[role]))

    rows += [
        training("baseline"),
        training("teachers"),
        _gpu_work(
            label("ensemble", "ensemble (GPU)"),
            frames["train"] + frames["dev"],
            n["ensemble_members"],
            target.gpu_infer_fps,
            f"{n['ensemble_members']} members' forward",
        ),
        training("students"),
        training("fraction"),
    ]
    decoded_s = n["decoded_systems"] * (frames["dev"] * n["dev_scales"] + frames["test"]) / 100
    rows.append(
        Estimate(
            label("evaluate", "search (CPU)"),
            "search RTF per core here x decoded audio s there",
            sizes["search_rtf_per_core"] * decoded_s,
            divisor=cores,
            note=f"{n['decoded_systems']} systems x (dev x {n['dev_scales']} scales + test); "
            f"beam {dec_here.beam:g} / max_active {dec_here.max_active} here, "
            f"{dec_there.beam:g} / {dec_there.max_active} there",
        )
    )
    passes = n["network_passes"] + n["sweep_networks"]
    rows.append(
        _gpu_work(
            label("evaluate", "networks (GPU)"),
            frames["dev"] + frames["test"],
            passes,
            target.gpu_infer_fps,
            f"{passes} network passes",
        )
    )
    rows.append(Estimate(label("results", "results"), "CPU s here", cpu["results"]))
    return rows


def _cpu_rate_note(sizes: dict[str, float], role: str, cpu_s: float) -> str:
    frames = sizes.get(f"dnn_frames_{role}")
    if not frames or not cpu_s:
        return ""
    return f"here on CPU: {frames / cpu_s:,.0f} frames per CPU-s over {sizes[f'models_{role}']:.0f} model(s)"


# ----------------------------------------------------------------------------- tables
def _fmt_s(s: float) -> str:
    return f"{s:,.0f} s" if s < 120 else f"{s / 60:,.1f} min" if s < 7200 else f"{s / 3600:,.1f} h"


def stage_row(run: StageRun) -> str:
    driver = ", ".join(f"{k} {v:,.6g}" for k, v in run.sizes.items() if k in _DRIVERS.get(run.role, ()))
    return (
        f"| {run.stage} | {run.name} | {run.rc} | {_fmt_s(run.wall_s)} | {_fmt_s(run.cpu_s)} | "
        f"{run.max_rss_mb:,.0f} | {run.sum_rss_mb:,.0f} | {run.load_1min:.1f} | {driver} |"
    )


_DRIVERS = {
    "corpus": ("corpus_hours",),
    "lang": ("lexicon_words", "pronunciations", "utterances_train"),
    "fbank": ("frames_train", "frames_dev", "frames_test"),
    "mono": ("frames_train",),
    "tri": ("senones", "frames_train"),
    "graph": ("lm_words", "ngrams", "hclg_states", "hclg_arcs"),
    **{role: (f"models_{role}", f"dnn_frames_{role}") for role in TRAINED},
    "evaluate": ("search_rtf_per_core",),
}
STAGE_HEADER = (
    "| stage | name | rc | wall | CPU | largest process MB | sum of processes MB | load | drivers |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|---|"
)


def estimate_table(rows: list[Estimate]) -> str:
    total = sum(r.seconds for r in rows)
    lines = ["| stage | rule | estimate | share | note |", "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.stage} | {r.rule} | {_fmt_s(r.seconds)} | {100 * r.seconds / total:.0f}% | {r.note} |")
    lines.append(f"| **total** | stages one after another | **{_fmt_s(total)}** | 100% | |")
    top = sorted(rows, key=lambda r: -r.seconds)[:3]
    lines.append("\nDominant: " + "; ".join(f"{r.stage} {100 * r.seconds / total:.0f}%" for r in top))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def _load_record(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", type=Path, help="recipe config to rehearse (copied into --work)")
    ap.add_argument("--work", type=Path, required=True, help="the rehearsal's folder (rehearsal.json lands here)")
    ap.add_argument("--stages", type=int, nargs="+", help="stage numbers to run (default: every stage of run.sh)")
    ap.add_argument("--nj", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--estimate-only", action="store_true", help="no stage run: the estimate from rehearsal.json")
    ap.add_argument("--target-config", type=Path, default=TARGET_CONFIG)
    t = Target()
    ap.add_argument("--target-ngrams", type=float, default=t.ngrams)
    ap.add_argument("--gpu-train-fps", type=float, default=t.gpu_train_fps)
    ap.add_argument("--gpu-infer-fps", type=float, default=t.gpu_infer_fps)
    ap.add_argument("--cores", type=int, default=t.cores)
    args = ap.parse_args()

    work = args.work.resolve()
    record_path = work / "rehearsal.json"
    record = _load_record(record_path)
    if not args.estimate_only:
        if args.config is None:
            ap.error("--config is needed unless --estimate-only")
        config = prepare_work(work, args.config.resolve())
        roles = stage_roles(work / "run.sh")
        record |= {
            "config": str(config.relative_to(work)),
            "commit": _commit(),
            "measures": MEASURES,
            "machine": {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        }
        print(STAGE_HEADER, flush=True)
        for stage in args.stages or sorted(roles):
            run = run_stage(work, config, stage, roles[stage], args.nj)
            record["stages"][str(stage)] = dataclasses.asdict(run) | {
                "ended": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            }
            record_path.write_text(json.dumps(record, indent=1) + "\n")
            print(stage_row(run), flush=True)
            if run.rc != 0:
                sys.exit(f"stage {stage} failed (rc {run.rc}): see {work / 'rehearsal_logs' / f'stage{stage}.log'}")
    runs = {
        v["role"]: StageRun(**{f.name: v[f.name] for f in dataclasses.fields(StageRun)})
        for v in record["stages"].values()
    }
    missing = sorted(set(ROLES) - OPTIONAL - set(runs))
    if missing:
        sys.exit(f"{record_path}: no measurement for the stage(s) of {missing}: no estimate")
    target = dataclasses.replace(
        t,
        ngrams=args.target_ngrams,
        gpu_train_fps=args.gpu_train_fps,
        gpu_infer_fps=args.gpu_infer_fps,
        cores=args.cores,
    )
    rows = estimate(runs, read_yaml(work / record["config"]), read_yaml(args.target_config), target)
    print(
        f"\nEstimate for train-clean-100 ({sum(target.hours.values()):g} h with dev and test), "
        f"{target.cores} cores and one GPU, {args.target_config.name}; ASSUMED figures are not measured here:\n"
    )
    print(estimate_table(rows))
    record["estimate"] = {
        "target": dataclasses.asdict(target),
        "rows": [dataclasses.asdict(r) | {"seconds": r.seconds, "rule": r.rule} for r in rows],
    }
    record_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
