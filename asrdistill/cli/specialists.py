"""Specialist commands (the paper's section 5): confusable senone groups, one specialist per group, their frame
accuracy, and the soft targets of generalist + specialists for ``asrdistill train --soft``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from asrdistill.cli.common import FORCE, Arg, Work, command, section

# what every specialists-* command reads: the frame data, the generalist, and the folder it writes
SHARED = (
    Arg("--feats", type=Path, required=True, exists="folder", help="data/fbank (holds <set>/feats.manifest.json)"),
    Arg("--labels", type=Path, required=True, exists="folder", help="exp/tri_ali (holds <set>/pdf.manifest.json)"),
    Arg("--train-set", required=True, help="name of the training set under --feats and --labels"),
    Arg("--dev-set", required=True, help="name of the dev set under --feats and --labels"),
    Arg("--device", help="cpu or cuda (default: cpu)"),
    Arg("--generalist", type=Path, required=True, exists="folder",
        help="exp/<system> with best.pt (e.g. exp/baseline_seed1)"),
    Arg("--out", type=Path, required=True, help="e.g. exp/specialists (groups.json, spec_NN/)"),
)


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    """What every specialists-* command shares: config, frames (``train.frames``), CMVN, device, the generalist."""
    from asrdistill.config import from_dict, role_section
    from asrdistill.data.features import Cmvn
    from asrdistill.data.frames import FrameConfig
    from asrdistill.nnet.specialists import SpecialistConfig

    frames = from_dict(FrameConfig, role_section(args.config, "train", None, args.set).get("frames") or {},
                       f"{args.config}:train.frames")
    return {"config": section(args, "specialists", SpecialistConfig), "frames": frames,
            "cmvn": Cmvn.load(Path(args.feats) / args.train_set / "cmvn.json"), "device": args.device or "cpu",
            "generalist": Path(args.generalist) / "best.pt"}


def _labelled_set(args: argparse.Namespace, subset: str) -> tuple:
    from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest

    return (ShardManifest.load(Path(args.feats) / subset, FEATS_PREFIX),
            ShardManifest.load(Path(args.labels) / subset, PDF_PREFIX))


@command("specialists-groups", "confusable senone groups from the generalist's dev predictions (groups.json)",
         log_dir="out", config=True, threads=True, args=[
    *SHARED,
    Arg("--tree", type=Path, exists="file", help="exp/tri/tree.json, for the senones' centre phones (default: none)"),
    Arg("--lang", type=Path, exists="folder", help="data/lang, for the phone names (default: none)"),
    FORCE,
])
def groups(args: argparse.Namespace) -> Work:
    from asrdistill.aligner.tree import ContextTree
    from asrdistill.data.lang import Lang
    from asrdistill.nnet.specialists import group_senones

    s = _inputs(args)
    tree = ContextTree.load(args.tree) if args.tree else None
    lang = Lang.load(args.lang) if args.lang else None
    dev = _labelled_set(args, args.dev_set)

    def run() -> int:
        found = group_senones(s["generalist"], *dev, s["cmvn"], s["frames"], s["config"], args.out, tree, lang,
                              s["device"], force=args.force)
        return 0 if found else 1
    return run


@command("specialists-train", "one specialist (group + dustbin) per group of groups.json, from the generalist",
         log_dir="out", config=True, threads=True, args=[*SHARED, FORCE])
def train(args: argparse.Namespace) -> Work:
    from asrdistill.nnet.specialists import train_specialists

    s = _inputs(args)
    train_set, dev = _labelled_set(args, args.train_set), _labelled_set(args, args.dev_set)

    def run() -> int:
        summary = train_specialists(s["generalist"], *train_set, *dev, s["cmvn"], s["frames"], s["config"],
                                    args.out, s["device"], force=args.force)
        return 0 if summary["trained"] else 1
    return run


@command("specialists-eval", "frame accuracy of the generalist alone and with its specialists "
         "(frame_accuracy.json)", log_dir="out", config=True, threads=True, args=[
    *SHARED,
    Arg("--test-set", nargs="*", default=[], help="further labelled sets to score (default: none)"),
])
def evaluate(args: argparse.Namespace) -> Work:
    from asrdistill.nnet.specialists import evaluate_specialists

    s = _inputs(args)
    sets = {name: _labelled_set(args, name) for name in (args.dev_set, *args.test_set)}

    def run() -> None:
        evaluate_specialists(s["generalist"], args.out, sets, s["cmvn"], s["frames"], s["config"], s["device"])
    return run


@command("specialists-cache", "dense soft targets of generalist + specialists (soft_T<t>/) for 'train --soft'",
         log_dir="out", config=True, threads=True, args=[
    *SHARED,
    Arg("--temperatures", type=float, nargs="+", required=True, help="one cache per temperature"),
    FORCE,
])
def cache(args: argparse.Namespace) -> Work:
    """Dense soft targets of generalist + specialists on the training set, for ``asrdistill train --soft``."""
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest
    from asrdistill.nnet.specialists import cache_specialist_targets

    s = _inputs(args)
    feats = ShardManifest.load(Path(args.feats) / args.train_set, FEATS_PREFIX)

    def run() -> None:
        cache_specialist_targets(s["generalist"], args.out, feats, s["cmvn"], s["frames"], args.temperatures,
                                 s["config"], s["device"], force=args.force)
    return run
