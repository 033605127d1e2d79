"""Search speed on a trained system's real posteriors: real-time factor and WER per beam and max_active.

``bench_decode.py`` times the search on synthetic noisy posteriors, which keep
more tokens alive than a trained network's. This benchmark runs a system of a
finished recipe (e.g. ``exp/student_seed1``) over the first ``--utts`` test
utterances once, keeps the log-likelihoods, and decodes them with one process
at every ``--beams`` x ``--max-active`` setting at the system's dev-chosen
acoustic scale (from its ``metrics.json``), so every row searches the same
input. Search RTF is decoder CPU seconds per second of audio, network excluded.

Run: ``python benchmarks/bench_search.py --recipe-dir recipes/librispeech --system exp/student_seed1
[--beams 13 10 8] [--max-active 7000 3000 1000] [--utts 300]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from asrdistill.config import from_dict
from asrdistill.data.datadir import DataDir
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest
from asrdistill.decoding.decode import FRAME_RATE, DecodeConfig, compute_priors, decode
from asrdistill.decoding.hclg import load_graph_info
from asrdistill.decoding.scoring import wer_report
from asrdistill.evaluate import EvalConfig, load_eval_system
from asrdistill.nnet.specialists import SpecialistConfig


def test_posteriors(
    recipe: Path, system: Path, inputs: dict, train_set: str, test_set: str, utts: int
) -> list[tuple[str, np.ndarray]]:
    """Log posteriors of the system on the first ``utts`` utterances of the test set (one network pass), run by
    evaluation's own loader with the settings its ``metrics.json`` was computed under (``inputs``)."""
    frames = from_dict(FrameConfig, inputs["frames"], f"{system}/metrics.json frames")
    combination = from_dict(SpecialistConfig, inputs.get("combination", {}), f"{system}/metrics.json combination")
    evaluation = from_dict(EvalConfig, inputs["evaluate"], f"{system}/metrics.json evaluate")
    cmvn = Cmvn.load(recipe / "data" / "fbank" / train_set / "cmvn.json")
    run = load_eval_system(system, cmvn, frames, evaluation, combination, "cpu")
    stream = run.stream(ShardManifest.load(recipe / "data" / "fbank" / test_set, FEATS_PREFIX), None)
    return [(utt, logp.numpy()) for utt, logp, _ in itertools.islice(stream, utts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe-dir", type=Path, default=Path(__file__).resolve().parents[1] / "recipes" / "librispeech")
    ap.add_argument("--system", type=Path, default=Path("exp/student_seed1"), help="relative to --recipe-dir")
    ap.add_argument("--graph", type=Path, default=Path("exp/graph"), help="relative to --recipe-dir")
    ap.add_argument("--train-set", default="train")
    ap.add_argument("--test-set", default="test")
    ap.add_argument("--utts", type=int, default=300, help="test utterances to decode")
    ap.add_argument("--beams", type=float, nargs="+", default=[13.0, 10.0, 8.0])
    ap.add_argument("--max-active", type=int, nargs="+", default=[7000, 3000, 1000])
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe = args.recipe_dir
    system, graph = recipe / args.system, recipe / args.graph

    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    info = load_graph_info(graph)
    metrics = json.loads((system / "metrics.json").read_text())
    scale = float(metrics["extra"]["acoustic_scale"])
    print(
        f"graph {graph}: {info['HCLG_states']:,} states, {info['HCLG_arcs']:,} arcs, {info['num_pdfs']} senones; "
        f"system {system.name} (dev-chosen acoustic scale {scale:g})"
    )

    t0 = time.perf_counter()
    posts = test_posteriors(recipe, system, metrics["extra"]["inputs"], args.train_set, args.test_set, args.utts)
    seconds = sum(len(p) for _, p in posts) / FRAME_RATE
    print(f"network: {len(posts)} utterances, {seconds:.0f} s of audio ({time.perf_counter() - t0:.0f} s)")
    priors = compute_priors(
        [ShardManifest.load(recipe / "exp" / "tri_ali" / args.train_set, PDF_PREFIX)], int(info["num_pdfs"]), floor=1e-5
    )
    refs = DataDir.load(recipe / "data" / args.test_set).text
    refs = {u: refs[u] for u, _ in posts}

    print(f"\n{'beam':>5} {'max_active':>10} {'search RTF/core':>16} {'WER %':>7} {'partial':>7}")
    for beam, max_active in itertools.product(args.beams, args.max_active):
        config = DecodeConfig(beam=beam, max_active=max_active, acoustic_scale=scale, nj=1)
        result = decode(graph, posts, priors, config)
        wer = wer_report(refs, {u: " ".join(w) for u, w in result.hyps.items()}).wer
        print(f"{beam:5g} {max_active:10d} {result.rtf:16.4f} {wer:7.2f} {len(result.partial):7d}", flush=True)


if __name__ == "__main__":
    main()
