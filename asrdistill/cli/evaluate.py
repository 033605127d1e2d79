"""Evaluation commands: a system's frame accuracy and WER, the results table, and plots of the systems."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrdistill.cli.common import Arg, Work, command, section
from asrdistill.cli.nnet import TRAIN_DATA, train_config_of


@command(
    "evaluate",
    "frame accuracy and WER (dev-tuned acoustic scale) of a model, an ensemble or a generalist with its specialists",
    log_dir="system_dir",
    config=True,
    threads=True,
    args=[
        *TRAIN_DATA,
        Arg("--test-set", required=True, help="name of the test set under --feats, --labels and --data"),
        Arg("--data", type=Path, required=True, exists="folder", help="data/ (reference transcripts in <set>/text)"),
        Arg("--graph", type=Path, exists="folder", help="exp/graph (default: none, frame accuracy only)"),
        Arg("--nj", type=int, help="decoding processes (default: the config's decode.nj)"),
        Arg(
            "system_dir", type=Path, exists="folder", help="exp/<system> with best.pt, members.txt or specialists.json"
        ),
        Arg("--force", action="store_true", help="evaluate again even if metrics.json is up to date"),
    ],
)
def cmd_evaluate(args: argparse.Namespace) -> Work:
    from asrdistill.data.frames import FrameData
    from asrdistill.decoding.decode import DecodeConfig
    from asrdistill.evaluate import EvalConfig, evaluate_system
    from asrdistill.nnet.specialists import SpecialistConfig

    data = FrameData(
        Path(args.feats), Path(args.labels), args.train_set, args.dev_set, args.test_set, train_config_of(args).frames
    )
    decode_cfg = section(args, "decode", DecodeConfig, {"nj": args.nj})
    eval_cfg, spec_cfg = section(args, "evaluate", EvalConfig), section(args, "specialists", SpecialistConfig)

    def run() -> None:
        evaluate_system(
            args.system_dir,
            data,
            data_root=args.data,
            graph_dir=args.graph,
            decode_config=decode_cfg,
            config=eval_cfg,
            specialists=spec_cfg,
            device=args.device or "cpu",
            force=args.force,
        )

    return run


@command(
    "results",
    "results.md / results.json / results.png from the systems' metrics",
    log_dir="exp_dir",
    args=[
        Arg("exp_dir", type=Path, exists="folder", help="exp/ (holds the systems; the results are written here)"),
        Arg("systems", nargs="+", help="system folder names under exp_dir, in the table's order"),
        Arg("--title", default="Baseline vs ensemble vs distilled student", help="the table's title"),
    ],
)
def cmd_results(args: argparse.Namespace) -> Work:
    from asrdistill.results import collect_results

    def run() -> int:
        out = collect_results(args.exp_dir, args.systems, title=args.title)
        print((Path(args.exp_dir) / "results.md").read_text(encoding="utf-8"))
        return 0 if out["systems"] else 1

    return run


@command(
    "plot",
    "training curves of systems, and one utterance's spectrogram, alignment and posteriors per system (PNG)",
    log_dir="out",
    threads=True,
    args=[
        Arg("--out", type=Path, required=True, help="folder for curves.png and utt_<id>.png"),
        Arg(
            "--systems",
            nargs="+",
            type=Path,
            required=True,
            exists="folder",
            help="exp/<system> folders (log/metrics.jsonl; bundle/ for --utt)",
        ),
        Arg("--utt", help="utterance to draw (default: none, the curves only)"),
        Arg(
            "--feats",
            type=Path,
            exists="folder",
            help="its feature shards (data/fbank/<set>; default: none, needed with --utt)",
        ),
        Arg("--labels", type=Path, exists="folder", help="its senone alignment (exp/tri_ali/<set>; default: none)"),
        Arg("--top", type=int, default=6, help="senones to draw"),
    ],
)
def cmd_plot(args: argparse.Namespace) -> Work:
    from asrdistill.plots import plot_training_curves, plot_utterance

    if args.utt and not args.feats:
        raise ValueError("plot: --utt needs --feats (the feature shards holding it)")

    def run() -> None:
        out = Path(args.out)
        plot_training_curves(args.systems, out / "curves.png")
        if args.utt:
            bundles = {Path(s).name: Path(s) / "bundle" for s in args.systems}
            plot_utterance(
                args.utt, args.feats, bundles, out / f"utt_{args.utt}.png", labels_dir=args.labels, top=args.top
            )

    return run
