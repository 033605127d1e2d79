"""Feature commands: fbank feature shards of a data dir, and CMVN statistics of a feature set."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asrdistill.cli.common import FORCE, Arg, Work, command, section

log = logging.getLogger("asrdistill")


@command(
    "features",
    "40-dim log-mel fbank into webdataset shards (+ CMVN stats)",
    log_dir="out_dir",
    config=True,
    threads=True,
    args=[
        Arg("data_dir", type=Path, exists="folder", help="Kaldi data dir (wav.scp, text, utt2spk), e.g. data/train"),
        Arg("out_dir", type=Path, help="the feature shards, e.g. data/fbank/train"),
        Arg("--nj", type=int, default=2, help="feature processes"),
        FORCE,
    ],
)
def cmd_features(args: argparse.Namespace) -> Work:
    from asrdistill.data.features import FbankConfig, compute_features

    cfg = section(args, "features", FbankConfig)

    def run() -> None:
        compute_features(args.data_dir, args.out_dir, cfg, nj=args.nj, force=args.force)

    return run


@command(
    "cmvn",
    "mean/variance normalisation stats of a feature set (the training set's are used everywhere)",
    log_dir="feats_dir",
    threads=True,
    args=[
        Arg("feats_dir", type=Path, exists="folder", help="feature shards (data/fbank/<set>); cmvn.json goes here"),
        Arg(
            "--data-dir", type=Path, exists="folder", help="with utt2spk: per-speaker stats too (default: global only)"
        ),
    ],
)
def cmd_cmvn(args: argparse.Namespace) -> Work:
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.features import compute_cmvn
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    manifest = ShardManifest.load(args.feats_dir, FEATS_PREFIX)
    utt2spk = DataDir.load(args.data_dir).utt2spk if args.data_dir else None

    def run() -> None:
        path = compute_cmvn(manifest, utt2spk).save(Path(args.feats_dir) / "cmvn.json")
        log.info("CMVN stats of %d frames -> %s", manifest.num_frames, path)

    return run
