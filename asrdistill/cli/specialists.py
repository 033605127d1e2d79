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
    Arg(
        "--generalist",
        type=Path,
        required=True,
        exists="folder",
        help="exp/<system> with best.pt (e.g. exp/baseline_seed1)",
    ),
    Arg("--out", type=Path, required=True, help="e.g. exp/specialists (groups.json, spec_NN/)"),
)


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    """What every specialists-* command shares: config, the data (frames from ``train.frames``), device, the
    generalist."""
    from asrdistill.config import from_dict, role_section
    from asrdistill.data.frames import FrameConfig, FrameData
    from asrdistill.nnet.specialists import SpecialistConfig

    frames = from_dict(
        FrameConfig,
        role_section(args.config, "train", None, args.set).get("frames") or {},
        f"{args.config}:train.frames",
    )
    return {
        "config": section(args, "specialists", SpecialistConfig),
        "data": FrameData(Path(args.feats), Path(args.labels), args.train_set, args.dev_set, frames=frames),
        "device": args.device or "cpu",
        "generalist": Path(args.generalist) / "best.pt",
    }


@command(
    "specialists-groups",
    "confusable senone groups from the generalist's dev predictions (groups.json)",
    log_dir="out",
    config=True,
    threads=True,
    args=[
        *SHARED,
        Arg(
            "--tree", type=Path, exists="file", help="exp/tri/tree.json, for the senones' centre phones (default: none)"
        ),
        Arg("--lang", type=Path, exists="folder", help="data/lang, for the phone names (default: none)"),
        FORCE,
    ],
)
def cmd_specialists_groups(args: argparse.Namespace) -> Work:
    from asrdistill.aligner.tree import ContextTree
    from asrdistill.data.lang import Lang
    from asrdistill.nnet.specialists import group_senones

    s = _inputs(args)
    tree = ContextTree.load(args.tree) if args.tree else None
    lang = Lang.load(args.lang) if args.lang else None

    def run() -> int:
        found = group_senones(
            s["generalist"],
            s["data"],
            s["config"],
            args.out,
            tree=tree,
            lang=lang,
            device=s["device"],
            force=args.force,
        )
        return 0 if found else 1

    return run


@command(
    "specialists-train",
    "one specialist (group + dustbin) per group of groups.json, from the generalist",
    log_dir="out",
    config=True,
    threads=True,
    args=[*SHARED, FORCE],
)
def cmd_specialists_train(args: argparse.Namespace) -> Work:
    from asrdistill.nnet.specialists import train_specialists

    s = _inputs(args)

    def run() -> int:
        summary = train_specialists(
            s["generalist"], s["data"], s["config"], args.out, device=s["device"], force=args.force
        )
        return 0 if summary["trained"] else 1

    return run


@command(
    "specialists-eval",
    "frame accuracy of the generalist alone and with its specialists (frame_accuracy.json)",
    log_dir="out",
    config=True,
    threads=True,
    args=[
        *SHARED,
        Arg("--test-set", nargs="*", default=[], help="further labelled sets to score (default: none)"),
    ],
)
def cmd_specialists_eval(args: argparse.Namespace) -> Work:
    from asrdistill.nnet.specialists import evaluate_specialists

    s = _inputs(args)

    def run() -> None:
        evaluate_specialists(
            s["generalist"], args.out, s["data"], [args.dev_set, *args.test_set], s["config"], device=s["device"]
        )

    return run


@command(
    "specialists-cache",
    "dense soft targets of generalist + specialists (soft_T<t>/) for 'train --soft'",
    log_dir="out",
    config=True,
    threads=True,
    args=[
        *SHARED,
        Arg("--temperatures", type=float, nargs="+", required=True, help="one cache per temperature"),
        FORCE,
    ],
)
def cmd_specialists_cache(args: argparse.Namespace) -> Work:
    """Dense soft targets of generalist + specialists on the training set, for ``asrdistill train --soft``."""
    from asrdistill.nnet.specialists import cache_specialist_targets

    s = _inputs(args)

    def run() -> None:
        cache_specialist_targets(
            s["generalist"], args.out, s["data"], args.temperatures, s["config"], device=s["device"], force=args.force
        )

    return run
