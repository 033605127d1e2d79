"""GMM-HMM aligner commands: monophone and triphone training, alignment, and Kaldi alignments imported."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrdistill.cli.common import FORCE, Arg, Work, command, runtime_flags, section

NJ = Arg("--nj", type=int, help="worker processes (default: the config's nj)")
DEVICE = Arg("--device", help="cpu or cuda (default: the config's device)")
DATA = (
    Arg("data_dir", type=Path, exists="folder", help="Kaldi data dir with the transcripts (data/<set>)"),
    Arg("lang_dir", type=Path, exists="folder", help="data/lang"),
    Arg("feats_dir", type=Path, exists="folder", help="its feature shards (data/fbank/<set>)"),
)


@command(
    "mono",
    "flat-start monophone GMM-HMM training, then alignment of the training set",
    log_dir="exp_dir",
    config=True,
    args=[
        *DATA,
        Arg("exp_dir", type=Path, help="e.g. exp/mono; alignments go to <exp_dir>/ali"),
        NJ,
        DEVICE,
        Arg("--force", action="store_true", help="train and align again even if done"),
    ],
)
def cmd_mono(args: argparse.Namespace) -> Work:
    import torch

    from asrdistill.aligner.align import AlignConfig, align_subset
    from asrdistill.aligner.mono import MonoConfig, train_mono
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.lang import Lang
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    cfg = section(args, "mono", MonoConfig, runtime_flags(args))
    align_cfg = section(args, "align", AlignConfig, runtime_flags(args))
    feats = ShardManifest.load(args.feats_dir, FEATS_PREFIX)
    text, lang = DataDir.load(args.data_dir).text, Lang.load(args.lang_dir)

    def run() -> None:
        torch.set_num_threads(1)
        model = train_mono(feats, text, lang, args.exp_dir, cfg, force=args.force)
        align_subset(feats, text, lang, model, Path(args.exp_dir) / "ali", align_cfg, force=args.force)

    return run


@command(
    "tri",
    "decision tree (senones) from the monophone alignment, tied-state triphone training",
    log_dir="exp_dir",
    config=True,
    args=[
        *DATA,
        Arg("mono_dir", type=Path, exists="folder", help="exp/mono (final.pt and ali/): normalisation and topology"),
        Arg("exp_dir", type=Path, help="the triphone system, e.g. exp/tri"),
        Arg(
            "--ali-dir",
            type=Path,
            exists="folder",
            help="alignment to start from (default <mono_dir>/ali; e.g. "
            "exp/tri_ali/train for an LDA+MLLT stage, tri.feature_transform=lda_mllt)",
        ),
        NJ,
        DEVICE,
        Arg("--force", action="store_true", help="train again even if done"),
    ],
)
def cmd_tri(args: argparse.Namespace) -> Work:
    import torch

    from asrdistill.aligner.hmm import HmmModel
    from asrdistill.aligner.tree import TreeConfig
    from asrdistill.aligner.triphone import TriConfig, train_triphone
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.lang import Lang
    from asrdistill.data.shards import ALI_PREFIX, FEATS_PREFIX, ShardManifest

    tree_cfg, cfg = section(args, "tree", TreeConfig), section(args, "tri", TriConfig, runtime_flags(args))
    mono_dir = Path(args.mono_dir)
    ali = ShardManifest.load(args.ali_dir or mono_dir / "ali", ALI_PREFIX)
    feats = ShardManifest.load(args.feats_dir, FEATS_PREFIX)
    text, lang, mono_model = (
        DataDir.load(args.data_dir).text,
        Lang.load(args.lang_dir),
        HmmModel.load(mono_dir / "final.pt"),
    )

    def run() -> None:
        torch.set_num_threads(1)  # workers do the parallel work; small in-process ops slow down with more threads
        train_triphone(ali, feats, text, lang, mono_model, args.exp_dir, tree_cfg, cfg, force=args.force)

    return run


@command(
    "align",
    "Viterbi-align a data set with a trained GMM-HMM (senone labels with a tree)",
    log_dir="out_dir",
    config=True,
    args=[
        Arg("model_dir", type=Path, exists="folder", help="holds final.pt (exp/mono or exp/tri)"),
        *DATA,
        Arg("out_dir", type=Path, help="the alignment, e.g. exp/tri_ali/<set>"),
        NJ,
        DEVICE,
        FORCE,
    ],
)
def cmd_align(args: argparse.Namespace) -> Work:
    import torch

    from asrdistill.aligner.align import AlignConfig, align_subset
    from asrdistill.aligner.hmm import HmmModel
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.lang import Lang
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    cfg = section(args, "align", AlignConfig, runtime_flags(args))
    model = HmmModel.load(Path(args.model_dir) / "final.pt")
    feats = ShardManifest.load(args.feats_dir, FEATS_PREFIX)
    text, lang = DataDir.load(args.data_dir).text, Lang.load(args.lang_dir)

    def run() -> None:
        torch.set_num_threads(1)
        result = align_subset(feats, text, lang, model, args.out_dir, cfg, force=args.force)
        if result.num_frames == 0:
            raise ValueError(
                f"{args.feats_dir}: no utterance could be aligned ({len(result.skipped)} skipped; "
                f"reasons in {Path(args.out_dir) / 'skipped.tsv'})"
            )

    return run


@command(
    "import-ali",
    "senone labels from Kaldi pdf alignments (ali-to-pdf ark/scp)",
    log_dir="out_dir",
    args=[
        Arg("ali", type=Path, exists="file", help="ark or scp of int vectors, e.g. ali-to-pdf output"),
        Arg("feats_dir", type=Path, exists="folder", help="the feature shards the alignment is of (data/fbank/<set>)"),
        Arg("out_dir", type=Path, help="e.g. exp/kaldi_ali/<set> (use it as --labels root)"),
        Arg(
            "--tree",
            type=Path,
            exists="path",
            help="required: the asrdistill tree (exp/tri or its tree.json) whose "
            "senones the ids are; recorded in the labels, checked by graph-using stages (default: none, an error)",
        ),
        Arg(
            "--allow-pipes",
            action="store_true",
            help="let .scp entries be shell commands ('cmd |'). RISK: the file "
            "then runs any command it names with your rights; only for files you wrote yourself",
        ),
        FORCE,
    ],
)
def cmd_import_ali(args: argparse.Namespace) -> Work:
    from asrdistill.aligner.kaldi_import import import_kaldi_alignments
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    if args.tree is None:
        raise ValueError(
            "import-ali needs --tree: the asrdistill tree (exp/tri or its tree.json) whose senones the "
            "alignment ids are; priors, graph and bundles are built from it. A Kaldi tree cannot be "
            "read: with Kaldi's tree, decode with Kaldi's graph from our log-likelihoods (export-ark)"
        )
    feats = ShardManifest.load(args.feats_dir, FEATS_PREFIX)

    def run() -> None:
        result = import_kaldi_alignments(
            args.ali, feats, args.out_dir, args.tree, force=args.force, allow_pipes=args.allow_pipes
        )
        if result.num_frames == 0:
            raise ValueError(
                f"{args.ali}: no alignment matches the features in {args.feats_dir} "
                f"({len(result.skipped)} utterance(s) skipped; reasons in "
                f"{Path(args.out_dir) / 'skipped.tsv'})"
            )

    return run
