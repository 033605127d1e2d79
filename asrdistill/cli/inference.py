"""Inference commands: a system's bundle, decoding new audio with it, and Kaldi ark/scp export."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from asrdistill.cli.common import Arg, Work, command, section


@command(
    "bundle",
    "one folder with everything a system decodes with (weights, context, CMVN, priors, tree, graph, "
    "lexicon, config, checksums)",
    log_dir="system_dir",
    config=True,
    threads=True,
    args=[
        Arg("system_dir", type=Path, exists="folder", help="exp/<system> with best.pt or members.txt"),
        Arg("out", type=Path, help="the bundle folder, e.g. exp/<system>/bundle"),
        Arg(
            "--feats",
            type=Path,
            required=True,
            exists="folder",
            help="training features (data/fbank/<train>, with cmvn.json)",
        ),
        Arg(
            "--labels",
            type=Path,
            required=True,
            exists="folder",
            help="training alignments (exp/tri_ali/<train>): priors",
        ),
        Arg("--tree", type=Path, required=True, exists="folder", help="holds tree.json and topo.json (exp/tri)"),
        Arg("--graph", type=Path, required=True, exists="folder", help="the HCLG built from that tree (exp/graph)"),
        Arg("--lang", type=Path, required=True, exists="folder", help="data/lang"),
        Arg("--force", action="store_true", help="rewrite even if the sources are unchanged"),
    ],
)
def cmd_bundle(args: argparse.Namespace) -> Work:
    from asrdistill.decoding.bundle import write_bundle
    from asrdistill.decoding.decode import DecodeConfig
    from asrdistill.evaluate import EvalConfig

    decode_cfg, method = section(args, "decode", DecodeConfig), section(args, "evaluate", EvalConfig).method

    def run() -> None:
        write_bundle(
            args.system_dir,
            args.out,
            feats_dir=args.feats,
            labels_dir=args.labels,
            tree_dir=args.tree,
            graph_dir=args.graph,
            lang_dir=args.lang,
            decode_config=decode_cfg,
            method=method,
            force=args.force,
        )

    return run


@command(
    "decode",
    "decode new audio with a bundle: Kaldi text, CTM, and a WER report where the folder has references",
    log_dir="out",
    threads=True,
    args=[
        Arg(
            "--model",
            type=Path,
            required=True,
            exists="folder",
            help="a bundle (exp/<system>/bundle), or one export-bundle made (its ONNX network runs, fp32 or int8)",
        ),
        Arg(
            "--corpus",
            type=Path,
            required=True,
            exists="folder",
            help="LibriSpeech-layout folder, Kaldi data dir, or a folder of .flac/.wav files",
        ),
        Arg("--out", type=Path, required=True, help="decode folder (text, ctm, report.txt, log/decode.log)"),
        Arg(
            "--max-seconds",
            type=float,
            default=3600.0,
            help="longest recording decoded; longer ones are skipped (listed in skipped.tsv); recordings longer "
            "than the model's limit (the bundle's features.max_duration) are cut in pauses and joined back "
            "(default: 3600)",
        ),
        Arg("--nj", type=int, default=1, help="decoding and feature processes"),
        Arg("--device", help="cpu or cuda (default: cpu)"),
        Arg("--allow-pipes", action="store_true", help="run the shell commands of a Kaldi wav.scp"),
    ],
)
def cmd_decode(args: argparse.Namespace) -> Work:
    from asrdistill.decoding.bundle import load_system

    system = load_system(args.model, args.device or "cpu")

    def run() -> None:
        report = system.decode_corpus(
            args.corpus,
            args.out,
            max_seconds=args.max_seconds,
            nj=args.nj,
            command=shlex.join(["asrdistill", *sys.argv[1:]]),
            allow_pipes=args.allow_pipes,
        )
        if report.wer is not None:
            print((Path(args.out) / "report.txt").read_text(encoding="utf-8"), end="")

    return run


@command(
    "export-bundle",
    "a bundle whose network runs in ONNX Runtime (fp32, or int8 with --int8): CMVN, context, "
    "members and priors inside one network file, checked against PyTorch before it is kept",
    log_dir="out",
    threads=True,
    args=[
        Arg("bundle", type=Path, exists="folder", help="the bundle to export (exp/<system>/bundle)"),
        Arg("out", type=Path, help="the exported bundle folder, e.g. exp/<system>/bundle_int8"),
        Arg("--int8", action="store_true", help="int8 dynamic quantization of the Linear layers (default: fp32)"),
        Arg("--force", action="store_true", help="export again even if the source bundle is unchanged"),
    ],
)
def cmd_export_bundle(args: argparse.Namespace) -> Work:
    from asrdistill.decoding.export import export_bundle as export

    def run() -> None:
        export(args.bundle, args.out, quantize=args.int8, force=args.force)

    return run


@command(
    "export-ark",
    "Kaldi ark/scp: per-frame log-likelihoods (log posterior - log prior) of a bundle, and senone alignments",
    log_dir="out",
    threads=True,
    args=[
        Arg("--out", type=Path, required=True, help="writes loglikes.{ark,scp} and/or pdf.{ark,scp}"),
        Arg("--model", type=Path, exists="folder", help="a bundle (exp/<system>/bundle; default: no log-likelihoods)"),
        Arg(
            "--feats",
            type=Path,
            exists="folder",
            help="feature shards to score (data/fbank/<set> or <decode out>/fbank; default: none, needed with --model)",
        ),
        Arg(
            "--labels",
            type=Path,
            exists="folder",
            help="senone label shards (exp/tri_ali/<set>; default: no alignments)",
        ),
        Arg("--device", help="cpu or cuda (default: cpu)"),
    ],
)
def cmd_export_ark(args: argparse.Namespace) -> Work:
    from asrdistill.aligner.kaldi_export import export_alignments
    from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest
    from asrdistill.decoding.bundle import load_system

    if not (args.model or args.labels):
        raise ValueError("export-ark: nothing to export; give --model with --feats, and/or --labels")
    if args.model and not args.feats:
        raise ValueError("export-ark: --model needs --feats (a feature shard set, e.g. <decode out>/fbank)")
    system = load_system(args.model, args.device or "cpu") if args.model else None
    feats = ShardManifest.load(args.feats, FEATS_PREFIX) if system is not None else None
    labels = ShardManifest.load(args.labels, PDF_PREFIX) if args.labels else None

    def run() -> None:
        if system is not None:
            system.export_loglikes(feats, args.out)
        if labels is not None:
            export_alignments(labels, args.out)

    return run
