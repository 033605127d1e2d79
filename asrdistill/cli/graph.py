"""Decoding-graph commands: the n-gram LM, and the HCLG graph built from lang, tree, topology and LM."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrdistill.cli.common import Arg, Work, command, section


@command(
    "lm",
    "n-gram LM: the official ARPA if present, else trained on the corpus LM text",
    log_dir="out_dir",
    config=True,
    args=[
        Arg("corpus_lm_dir", type=Path, exists="folder", help="the corpus's LM folder, e.g. data/corpus/lm"),
        Arg("lang_dir", type=Path, exists="folder", help="data/lang (its words are the LM's vocabulary)"),
        Arg(
            "eval_dirs",
            nargs="*",
            type=Path,
            exists="folder",
            help="data dirs whose text gets a perplexity (default: none)",
        ),
        Arg("out_dir", type=Path, help="the LM folder (lm.json, the ARPA), e.g. exp/lm"),
    ],
)
def cmd_lm(args: argparse.Namespace) -> Work:
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.lang import Lang
    from asrdistill.decoding.lm import LmConfig, prepare_lm

    cfg = section(args, "lm", LmConfig)
    words = Lang.load(args.lang_dir).words
    evals = {Path(d).name: list(DataDir.load(d).text.values()) for d in args.eval_dirs}

    def run() -> None:
        prepare_lm(args.corpus_lm_dir, words, args.out_dir, cfg, evals)

    return run


@command(
    "graph",
    "HCLG decoding graph from lang, the senone tree, topology and the LM",
    log_dir="out_dir",
    config=True,
    args=[
        Arg("lang_dir", type=Path, exists="folder", help="data/lang"),
        Arg("tri_dir", type=Path, exists="folder", help="holds tree.json and topo.json"),
        Arg("lm_dir", type=Path, exists="folder", help="holds lm.json (from 'asrdistill lm')"),
        Arg("out_dir", type=Path, help="the graph folder, e.g. exp/graph"),
    ],
)
def cmd_graph(args: argparse.Namespace) -> Work:
    import json

    from asrdistill.decoding.hclg import GraphConfig, build_graph

    cfg = section(args, "graph", GraphConfig)
    arpa = json.loads((Path(args.lm_dir) / "lm.json").read_text(encoding="utf-8"))["arpa"]
    tri = Path(args.tri_dir)

    def run() -> None:
        build_graph(args.lang_dir, tri / "tree.json", tri / "topo.json", arpa, args.out_dir, cfg)

    return run
