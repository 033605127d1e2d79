"""Frame-DNN commands: train a DNN (hard labels or distillation), cache the ensemble's soft targets, pick a student.

Every flag here that names a ``train`` field (``--seed``, ``--device``, ``--fraction``, ``--temperature``,
``--hard-weight``) replaces the config only when typed (:func:`asrdistill.config.with_flags`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from asrdistill.cli.common import Arg, Work, check_device, command, section

# the feature and label roots and set names every DNN command reads; the flags that name ``train`` fields
TRAIN_DATA = (
    Arg("--feats", type=Path, required=True, exists="folder", help="data/fbank (holds <set>/feats.manifest.json)"),
    Arg("--labels", type=Path, required=True, exists="folder", help="exp/tri_ali (holds <set>/pdf.manifest.json)"),
    Arg("--train-set", required=True, help="name of the training set under --feats and --labels"),
    Arg("--dev-set", required=True, help="name of the dev set under --feats and --labels"),
    Arg("--device", help="cpu or cuda (default: train: the config's train.device, 'auto'; other commands: cpu)"),
    Arg("--seed", type=int, help="model init and data order (default: the config's train.seed, 0)"),
    Arg("--role", help="config section refining 'train', e.g. student or fraction (default: none)"),
    Arg(
        "--fraction",
        type=float,
        help="train on this fraction of the utterances (default: the config's train.data_fraction, 1)",
    ),
    Arg(
        "--soft",
        type=Path,
        exists="folder",
        help="cached soft targets (exp/ensemble/soft_T2): distill (default: hard labels)",
    ),
    Arg(
        "--online",
        type=Path,
        exists="folder",
        metavar="ENSEMBLE_DIR",
        help="distill from the teachers of ENSEMBLE_DIR/members.txt run on each batch (exact at any T; "
        "default: hard labels); --set train.distill.augment.mixup_alpha=0.4 (or .freq_mask=F) perturbs each batch "
        "once, for the student and the teachers alike (default: off)",
    ),
    Arg(
        "--temperature",
        type=float,
        help="distillation temperature (default: the config's train.distill.temperature, 2)",
    ),
    Arg(
        "--hard-weight",
        type=float,
        help="weight of the hard-label term (default: the config's train.distill.hard_weight, 0.5)",
    ),
)


def train_config_of(args: argparse.Namespace, **flags: Any) -> Any:
    """The :class:`~asrdistill.nnet.train.TrainConfig` of the :data:`TRAIN_DATA` arguments and the other typed
    ``flags`` (see :func:`asrdistill.nnet.targets.train_config` for the precedence); its device is checked."""
    from asrdistill.nnet.targets import train_config as build

    flags = {
        "seed": args.seed,
        "device": args.device,
        "data_fraction": args.fraction,
        "distill.temperature": args.temperature,
        "distill.hard_weight": args.hard_weight,
        **flags,
    }
    cfg = build(
        args.config,
        args.role,
        args.set,
        feats=args.feats,
        labels=args.labels,
        train_set=args.train_set,
        dev_set=args.dev_set,
        soft=args.soft,
        online=args.online,
        flags=flags,
    )
    check_device(cfg.device, "train.device")
    return cfg


@command(
    "train",
    "train a frame DNN: hard labels, or distillation with --soft",
    log_dir="out",
    config=True,
    threads=True,
    args=[
        *TRAIN_DATA,
        Arg("--out", type=Path, required=True, help="the experiment folder, e.g. exp/baseline_seed1"),
        Arg(
            "--transfer",
            type=Path,
            action="append",
            exists="folder",
            metavar="LABELS_DIR",
            help="teacher-labelled extra audio (asrdistill label-transfer's --out) streamed with the training "
            "set; repeatable; distilled runs only (default: the config's train.transfer, none)",
        ),
        Arg("--force", action="store_true", help="train again even if done"),
    ],
)
def cmd_train(args: argparse.Namespace) -> Work:
    from asrdistill.config import to_dict
    from asrdistill.fileio import write_json_atomic
    from asrdistill.nnet.train import train as train_dnn

    cfg = train_config_of(args, transfer=[str(p) for p in args.transfer] if args.transfer else None)

    def run() -> None:
        write_json_atomic(Path(args.out) / "train_config.json", to_dict(cfg))
        result = train_dnn(cfg, args.out, force=args.force)
        write_json_atomic(Path(args.out) / "train_result.json", result)

    return run


@command(
    "ensemble",
    "cache the teacher ensemble's soft targets at each temperature (dense or top-k, fidelity measured on dev)",
    log_dir="out",
    config=True,
    threads=True,
    args=[
        *TRAIN_DATA,
        Arg("--out", type=Path, required=True, help="e.g. exp/ensemble; soft targets in soft_T<t>/"),
        Arg("--temperatures", type=float, nargs="+", required=True, help="one cache per temperature"),
        Arg(
            "--members",
            nargs="+",
            type=Path,
            required=True,
            exists="folder",
            help="teacher experiment dirs (with best.pt)",
        ),
        Arg("--force", action="store_true", help="rebuild the soft targets even if up to date"),
    ],
)
def cmd_ensemble(args: argparse.Namespace) -> Work:
    """The ensemble folder, the fidelity of its soft-target cache on dev, and the cache on the training set."""
    from asrdistill.data.features import Cmvn
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest
    from asrdistill.nnet.ensemble import EnsembleConfig, build_ensemble

    cfg = section(args, "ensemble", EnsembleConfig)
    frames = train_config_of(args).frames
    feats = Path(args.feats)
    train_feats = ShardManifest.load(feats / args.train_set, FEATS_PREFIX)
    dev_feats = ShardManifest.load(feats / args.dev_set, FEATS_PREFIX)
    cmvn = Cmvn.load(feats / args.train_set / "cmvn.json")

    def run() -> None:
        build_ensemble(
            [Path(m) / "best.pt" for m in args.members],
            train_feats,
            dev_feats,
            cmvn,
            frames,
            args.temperatures,
            args.out,
            cfg,
            args.device or "cpu",
            args.force,
        )

    return run


@command(
    "label-transfer",
    "the ensemble's soft targets and decisions (pdf) on extra, unlabelled features: a transfer set for students",
    log_dir="out",
    config=True,
    threads=True,
    args=[
        *TRAIN_DATA,
        Arg("--ensemble", type=Path, required=True, exists="folder", help="the ensemble folder, e.g. exp/ensemble"),
        Arg("--transfer-set", required=True, help="name of the unlabelled set under --feats, e.g. transfer"),
        Arg(
            "--temperatures",
            type=float,
            nargs="+",
            required=True,
            help="one soft-target cache per temperature, each as the ensemble cached the training set",
        ),
        Arg("--out", type=Path, required=True, help="e.g. exp/ensemble/transfer (then: train --transfer OUT)"),
        Arg("--force", action="store_true", help="label again even if up to date"),
    ],
)
def cmd_label_transfer(args: argparse.Namespace) -> Work:
    """Teacher labels for a transfer set (:func:`asrdistill.nnet.transfer.label_transfer`), with the training
    set's CMVN and context window; the set must share no utterance with the training or dev set."""
    from asrdistill.data.features import Cmvn
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest
    from asrdistill.nnet.transfer import label_transfer

    frames = train_config_of(args).frames
    feats = Path(args.feats)
    load = lambda name: ShardManifest.load(feats / name, FEATS_PREFIX)  # noqa: E731
    transfer, train_feats, dev_feats = load(args.transfer_set), load(args.train_set), load(args.dev_set)
    cmvn = Cmvn.load(feats / args.train_set / "cmvn.json")

    def run() -> None:
        label_transfer(
            args.ensemble,
            transfer,
            cmvn,
            frames,
            args.temperatures,
            args.out,
            exclude=[train_feats, dev_feats],
            device=args.device or "cpu",
            force=args.force,
        )

    return run


@command(
    "best-student",
    "print 'T hard_weight' of the swept student with the best dev frame accuracy",
    args=[
        Arg("student_dirs", nargs="+", type=Path, exists="folder", help="the swept students' experiment folders"),
    ],
)
def cmd_best_student(args: argparse.Namespace) -> Work:
    """Print ``T hard_weight`` of the swept student with the best dev frame accuracy (model selection on dev)."""
    from asrdistill.results import best_student as best_of

    def run() -> None:
        best = best_of(args.student_dirs)
        print(f"{best['temperature']:g} {best['hard_weight']:g}")

    return run
