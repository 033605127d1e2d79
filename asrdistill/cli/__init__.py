"""The ``asrdistill`` command: one subcommand per pipeline step, called by the recipes.

Each subcommand is a thin wrapper over a library function (named in its help),
so every stage is equally callable from Python. Subcommands that take
``--config`` read their own section of the recipe YAML; ``--set section.key=value``
overrides a field. Every run logs its command line.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Callable, Sequence

from asrdistill.logs import FORMAT, command_log, describe_error

log = logging.getLogger("asrdistill")


def _section(args: argparse.Namespace, section: str, cls: type):
    from asrdistill.config import load_section

    return load_section(args.config, section, cls, args.set)


def _check_device(device: str | None, where: str) -> None:
    """A CUDA device without a usable GPU is an error here, not a traceback deep inside torch."""
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"{where}: {device!r} asked for, but no CUDA GPU is available "
                             "(torch.cuda.is_available() is False); use cpu")


# --------------------------------------------------------------------------- corpus and data


def cmd_synth_corpus(args: argparse.Namespace) -> int:
    from data_prep.synthetic import synthesize_corpus

    synthesize_corpus(args.out, args.hours, seed=args.seed, num_speakers=args.num_speakers, nj=args.nj,
                      dev_fraction=args.dev_fraction, test_fraction=args.test_fraction,
                      lm_sentences=args.lm_sentences, vocab_size=args.vocab_size, force=args.force)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from data_prep.librispeech import DEFAULT_BASE_URL, download_librispeech

    download_librispeech(args.target, args.subsets, args.base_url or DEFAULT_BASE_URL, lm=not args.no_lm,
                         remove_archives=args.remove_archives, corpus_dir=args.corpus_dir, lexicon=args.lexicon,
                         lm_dir=args.lm_dir, lm_files=args.lm_files)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from data_prep.librispeech import prepare_librispeech

    prepare_librispeech(args.corpus, args.subsets, args.out, nj=args.nj, force=args.force)
    return 0


def cmd_lang(args: argparse.Namespace) -> int:
    from asrdistill.data.lexicon import LexiconConfig, build_lang, corpus_vocabulary

    cfg = _section(args, "lexicon", LexiconConfig)
    words = corpus_vocabulary(args.data_dirs, args.extra_text)
    build_lang(words, args.out, source=cfg.source, lexicon_path=cfg.lexicon_path, keep_stress=cfg.keep_stress,
               g2p=cfg.g2p)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from asrdistill.data.features import FbankConfig, compute_features

    cfg = _section(args, "features", FbankConfig)
    compute_features(args.data_dir, args.out_dir, cfg, nj=args.nj, force=args.force)
    return 0


def cmd_cmvn(args: argparse.Namespace) -> int:
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.features import compute_cmvn
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    manifest = ShardManifest.load(args.feats_dir, FEATS_PREFIX)
    utt2spk = DataDir.load(args.data_dir).utt2spk if args.data_dir else None
    path = compute_cmvn(manifest, utt2spk).save(Path(args.feats_dir) / "cmvn.json")
    log.info("CMVN stats of %d frames -> %s", manifest.num_frames, path)
    return 0


# --------------------------------------------------------------------------- GMM-HMM aligner


def _runtime(cfg, args: argparse.Namespace):
    """Apply the command line's --nj/--device to a config that has those fields."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cfg)}
    changes = {k: v for k, v in (("nj", getattr(args, "nj", None)), ("device", getattr(args, "device", None)))
               if k in fields and v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    _check_device(getattr(cfg, "device", None), f"{type(cfg).__name__}.device")
    return cfg


def cmd_mono(args: argparse.Namespace) -> int:
    import torch

    from asrdistill.aligner.align import AlignConfig, align_subset
    from asrdistill.aligner.mono import MonoConfig, train_mono
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.lang import Lang
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    cfg = _runtime(_section(args, "mono", MonoConfig), args)
    feats = ShardManifest.load(args.feats_dir, FEATS_PREFIX)
    text, lang = DataDir.load(args.data_dir).text, Lang.load(args.lang_dir)
    torch.set_num_threads(1)
    model = train_mono(feats, text, lang, args.exp_dir, cfg, force=args.force)
    align_cfg = _runtime(_section(args, "align", AlignConfig), args)
    align_subset(feats, text, lang, model, Path(args.exp_dir) / "ali", align_cfg, force=args.force)
    return 0


def cmd_tri(args: argparse.Namespace) -> int:
    import torch

    from asrdistill.aligner.hmm import HmmModel
    from asrdistill.aligner.tree import TreeConfig
    from asrdistill.aligner.triphone import TriConfig, train_triphone
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.lang import Lang
    from asrdistill.data.shards import ALI_PREFIX, FEATS_PREFIX, ShardManifest

    torch.set_num_threads(1)  # workers do the parallel work; small in-process ops slow down with more threads
    mono_dir = Path(args.mono_dir)
    ali_dir = args.ali_dir or mono_dir / "ali"
    train_triphone(ShardManifest.load(ali_dir, ALI_PREFIX), ShardManifest.load(args.feats_dir, FEATS_PREFIX),
                   DataDir.load(args.data_dir).text, Lang.load(args.lang_dir), HmmModel.load(mono_dir / "final.pt"),
                   args.exp_dir, _section(args, "tree", TreeConfig), _runtime(_section(args, "tri", TriConfig), args),
                   force=args.force)
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    import torch

    from asrdistill.aligner.align import AlignConfig, align_subset
    from asrdistill.aligner.hmm import HmmModel
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.lang import Lang
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    torch.set_num_threads(1)
    cfg = _runtime(_section(args, "align", AlignConfig), args)
    model = HmmModel.load(Path(args.model_dir) / "final.pt")
    feats = ShardManifest.load(args.feats_dir, FEATS_PREFIX)
    text, lang = DataDir.load(args.data_dir).text, Lang.load(args.lang_dir)
    result = align_subset(feats, text, lang, model, args.out_dir, cfg, force=args.force)
    if result.num_frames == 0:
        raise ValueError(f"{args.feats_dir}: no utterance could be aligned ({len(result.skipped)} skipped; reasons in "
                         f"{Path(args.out_dir) / 'skipped.tsv'})")
    return 0


def cmd_import_ali(args: argparse.Namespace) -> int:
    from asrdistill.aligner.kaldi_import import import_kaldi_alignments
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    if args.tree is None:
        raise ValueError("import-ali needs --tree: the asrdistill tree (exp/tri or its tree.json) whose senones the "
                         "alignment ids are; priors, graph and bundles are built from it. A Kaldi tree cannot be "
                         "read: with Kaldi's tree, decode with Kaldi's graph from our log-likelihoods (export-ark)")
    feats = ShardManifest.load(args.feats_dir, FEATS_PREFIX)
    result = import_kaldi_alignments(args.ali, feats, args.out_dir, args.tree, force=args.force,
                                     allow_pipes=args.allow_pipes)
    if result.num_frames == 0:
        raise ValueError(f"{args.ali}: no alignment matches the features in {args.feats_dir} "
                         f"({len(result.skipped)} utterance(s) skipped; reasons in {Path(args.out_dir) / 'skipped.tsv'})")
    return 0


# --------------------------------------------------------------------------- LM, graph


def cmd_lm(args: argparse.Namespace) -> int:
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.lang import Lang
    from asrdistill.decoding.lm import LmConfig, prepare_lm

    cfg = _section(args, "lm", LmConfig)
    words = Lang.load(args.lang_dir).words
    evals = {Path(d).name: list(DataDir.load(d).text.values()) for d in args.eval_dirs}
    prepare_lm(args.corpus_lm_dir, words, args.out_dir, cfg, evals)
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    import json

    from asrdistill.decoding.hclg import GraphConfig, build_graph

    cfg = _section(args, "graph", GraphConfig)
    arpa = json.loads((Path(args.lm_dir) / "lm.json").read_text(encoding="utf-8"))["arpa"]
    tri = Path(args.tri_dir)
    build_graph(args.lang_dir, tri / "tree.json", tri / "topo.json", arpa, args.out_dir, cfg)
    return 0


# --------------------------------------------------------------------------- DNNs


def _train_config(args: argparse.Namespace):
    """``train`` section, then the role's section (``student``, ``fraction``), then --set, then paths."""
    from asrdistill.config import from_dict, merge, role_section
    from asrdistill.nnet.train import TrainConfig

    merged = role_section(args.config, "train", args.role, args.set)
    feats, labels = Path(args.feats), Path(args.labels)
    merged.update(train_feats=str(feats / args.train_set), train_labels=str(labels / args.train_set),
                  dev_feats=str(feats / args.dev_set), dev_labels=str(labels / args.dev_set),
                  cmvn=str(feats / args.train_set / "cmvn.json"), seed=args.seed)
    if args.device:
        merged["device"] = args.device
    _check_device(merged.get("device"), "train.device")
    if args.fraction is not None:
        merged["data_fraction"] = args.fraction
    if args.soft and args.online:
        raise ValueError("give --soft (cached soft targets) or --online (teachers run on each batch), not both")
    if args.soft or args.online:
        from asrdistill.nnet.ensemble import read_members

        teacher = ({"source": "cached", "soft_targets": str(args.soft)} if args.soft else
                   {"source": "online", "teachers": [str(m) for m in read_members(args.online)]})
        merged["distill"] = merge(merged.get("distill") or {}, {**teacher, "temperature": args.temperature})
        if args.hard_weight is not None:
            merged["distill"]["hard_weight"] = args.hard_weight
    else:
        merged.pop("distill", None)
    return from_dict(TrainConfig, merged, f"{args.config}:train+{args.role or ''}")


def cmd_train(args: argparse.Namespace) -> int:
    from asrdistill.config import to_dict
    from asrdistill.fileio import write_json_atomic
    from asrdistill.nnet.train import train

    cfg = _train_config(args)
    write_json_atomic(Path(args.out) / "train_config.json", to_dict(cfg))
    result = train(cfg, args.out, force=args.force)
    write_json_atomic(Path(args.out) / "train_result.json", result)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    """The ensemble folder, the fidelity of its soft-target cache on dev, and the cache on the training set."""
    from asrdistill.data.features import Cmvn
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest
    from asrdistill.nnet.ensemble import EnsembleConfig, build_ensemble

    cfg = _section(args, "ensemble", EnsembleConfig)
    feats = Path(args.feats)
    build_ensemble([Path(m) / "best.pt" for m in args.members], ShardManifest.load(feats / args.train_set, FEATS_PREFIX),
                   ShardManifest.load(feats / args.dev_set, FEATS_PREFIX), Cmvn.load(feats / args.train_set / "cmvn.json"),
                   _train_config(args).frames, args.temperatures, args.out, cfg, args.device or "cpu", args.force)
    return 0


def cmd_best_student(args: argparse.Namespace) -> int:
    """Print ``T hard_weight`` of the swept student with the best dev frame accuracy (model selection on dev)."""
    from asrdistill.results import best_student

    best = best_student(args.student_dirs)
    print(f"{best['temperature']:g} {best['hard_weight']:g}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asrdistill.decoding.decode import DecodeConfig
    from asrdistill.evaluate import EvalConfig, evaluate_system
    from asrdistill.nnet.specialists import SpecialistConfig

    frames = _train_config(args).frames
    decode_cfg = _runtime(_section(args, "decode", DecodeConfig), args)
    evaluate_system(args.system_dir, args.feats, args.labels, args.data, args.train_set, args.dev_set, args.test_set,
                    args.graph, frames, decode_cfg, _section(args, "evaluate", EvalConfig), args.device or "cpu",
                    force=args.force, specialists=_section(args, "specialists", SpecialistConfig))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from asrdistill.decoding.bundle import write_bundle
    from asrdistill.decoding.decode import DecodeConfig
    from asrdistill.evaluate import EvalConfig

    write_bundle(args.system_dir, args.out, feats_dir=args.feats, labels_dir=args.labels, tree_dir=args.tree,
                 graph_dir=args.graph, lang_dir=args.lang, decode_config=_section(args, "decode", DecodeConfig),
                 method=_section(args, "evaluate", EvalConfig).method, force=args.force)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from asrdistill.decoding.bundle import load_system

    system = load_system(args.model, args.device or "cpu")
    report = system.decode_corpus(args.corpus, args.out, max_seconds=args.max_seconds, nj=args.nj,
                                  command=shlex.join(["asrdistill", *sys.argv[1:]]), allow_pipes=args.allow_pipes)
    if report.wer is not None:
        print((Path(args.out) / "report.txt").read_text(encoding="utf-8"), end="")
    return 0


def cmd_export_ark(args: argparse.Namespace) -> int:
    from asrdistill.aligner.kaldi_export import export_alignments
    from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest
    from asrdistill.decoding.bundle import load_system

    if not (args.model or args.labels):
        raise ValueError("export-ark: nothing to export; give --model with --feats, and/or --labels")
    if args.model:
        if not args.feats:
            raise ValueError("export-ark: --model needs --feats (a feature shard set, e.g. <decode out>/fbank)")
        load_system(args.model, args.device or "cpu").export_loglikes(ShardManifest.load(args.feats, FEATS_PREFIX),
                                                                      args.out)
    if args.labels:
        export_alignments(ShardManifest.load(args.labels, PDF_PREFIX), args.out)
    return 0


def cmd_import_data_dir(args: argparse.Namespace) -> int:
    from asrdistill.data.kaldi_dir import import_data_dir, import_feats

    if (Path(args.src) / "wav.scp").is_file():
        import_data_dir(args.src, args.out, allow_pipes=args.allow_pipes)
    if args.feats_out:
        import_feats(args.src, args.feats_out)
    return 0


def cmd_import_lhotse(args: argparse.Namespace) -> int:
    from asrdistill.data.lhotse_io import import_lhotse

    import_lhotse(args.manifests, args.out, allow_pipes=args.allow_pipes)
    return 0


def cmd_export_lhotse(args: argparse.Namespace) -> int:
    from asrdistill.data.lhotse_io import export_lhotse

    for path in export_lhotse(args.data_dir, args.out).values():
        print(path)
    return 0


def cmd_validate_data_dir(args: argparse.Namespace) -> int:
    from asrdistill.data.kaldi_dir import validate_data_dir

    problems = validate_data_dir(args.data_dir)
    for p in problems:
        print(p)
    errors = [p for p in problems if not p.startswith("warning:")]
    print(f"{args.data_dir}: {'invalid, ' + str(len(errors)) + ' problem(s)' if errors else 'valid'}"
          f"{', ' + str(len(problems) - len(errors)) + ' warning(s)' if len(problems) > len(errors) else ''}")
    return 1 if errors else 0


def cmd_fix_data_dir(args: argparse.Namespace) -> int:
    from asrdistill.data.kaldi_dir import fix_data_dir

    fix_data_dir(args.data_dir)
    return 0


def cmd_split_data_dir(args: argparse.Namespace) -> int:
    from asrdistill.data.kaldi_dir import split_data_dir

    for d in split_data_dir(args.data_dir, args.num_jobs):
        print(d)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from asrdistill.plots import plot_training_curves, plot_utterance

    out = Path(args.out)
    plot_training_curves(args.systems, out / "curves.png")
    if args.utt:
        if not args.feats:
            raise ValueError("plot: --utt needs --feats (the feature shards holding it)")
        bundles = {Path(s).name: Path(s) / "bundle" for s in args.systems}
        plot_utterance(args.utt, args.feats, bundles, out / f"utt_{args.utt}.png", labels_dir=args.labels,
                       top=args.top)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from asrdistill.results import collect_results

    out = collect_results(args.exp_dir, args.systems, title=args.title)
    print((Path(args.exp_dir) / "results.md").read_text(encoding="utf-8"))
    return 0 if out["systems"] else 1


# --------------------------------------------------------------------------- specialists (paper section 5)


def _specialist_inputs(args: argparse.Namespace) -> dict:
    """What every specialists-* command shares: config, frames (``train.frames``), CMVN, device, the generalist."""
    from asrdistill.config import from_dict, role_section
    from asrdistill.data.features import Cmvn
    from asrdistill.data.frames import FrameConfig
    from asrdistill.nnet.specialists import SpecialistConfig

    frames = from_dict(FrameConfig, role_section(args.config, "train", None, args.set).get("frames") or {},
                       f"{args.config}:train.frames")
    return {"config": _section(args, "specialists", SpecialistConfig), "frames": frames,
            "cmvn": Cmvn.load(Path(args.feats) / args.train_set / "cmvn.json"), "device": args.device or "cpu",
            "generalist": Path(args.generalist) / "best.pt"}


def _labelled_set(args: argparse.Namespace, subset: str) -> tuple:
    from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest

    return (ShardManifest.load(Path(args.feats) / subset, FEATS_PREFIX),
            ShardManifest.load(Path(args.labels) / subset, PDF_PREFIX))


def cmd_specialists_groups(args: argparse.Namespace) -> int:
    from asrdistill.aligner.tree import ContextTree
    from asrdistill.data.lang import Lang
    from asrdistill.nnet.specialists import group_senones

    s = _specialist_inputs(args)
    tree = ContextTree.load(args.tree) if args.tree else None
    lang = Lang.load(args.lang) if args.lang else None
    groups = group_senones(s["generalist"], *_labelled_set(args, args.dev_set), s["cmvn"], s["frames"], s["config"],
                           args.out, tree, lang, s["device"], force=args.force)
    return 0 if groups else 1


def cmd_specialists_train(args: argparse.Namespace) -> int:
    from asrdistill.nnet.specialists import train_specialists

    s = _specialist_inputs(args)
    summary = train_specialists(s["generalist"], *_labelled_set(args, args.train_set),
                                *_labelled_set(args, args.dev_set), s["cmvn"], s["frames"], s["config"], args.out,
                                s["device"], force=args.force)
    return 0 if summary["trained"] else 1


def cmd_specialists_eval(args: argparse.Namespace) -> int:
    from asrdistill.nnet.specialists import evaluate_specialists

    s = _specialist_inputs(args)
    sets = {name: _labelled_set(args, name) for name in (args.dev_set, *args.test_set)}
    evaluate_specialists(s["generalist"], args.out, sets, s["cmvn"], s["frames"], s["config"], s["device"])
    return 0


def cmd_specialists_cache(args: argparse.Namespace) -> int:
    """Dense soft targets of generalist + specialists on the training set, for ``asrdistill train --soft``."""
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest
    from asrdistill.nnet.specialists import cache_specialist_targets

    s = _specialist_inputs(args)
    feats = ShardManifest.load(Path(args.feats) / args.train_set, FEATS_PREFIX)
    cache_specialist_targets(s["generalist"], args.out, feats, s["cmvn"], s["frames"], args.temperatures, s["config"],
                             s["device"], force=args.force)
    return 0


def cmd_config_get(args: argparse.Namespace) -> int:
    """Print one value of a recipe config (for loops in run.sh)."""
    from asrdistill.config import merge, parse_overrides, read_yaml

    if args.config is None:
        raise ValueError("config-get needs --config FILE (the recipe YAML to read)")
    data = merge(read_yaml(args.config), parse_overrides(args.set))
    section, _, key = args.key.partition(".")
    if section not in data or key not in (data[section] or {}):
        print(f"{args.config}: no {args.key}", file=sys.stderr)
        return 1
    value = data[section][key]
    print(" ".join(str(v) for v in value) if isinstance(value, list) else value)
    return 0


def _run_job(job: tuple[list[str], str]) -> tuple[list[str], int]:
    """One ``asrdistill`` command line in the caller's folder (relative paths; a Dask worker on another node needs
    it on a shared file system), as a child process of the worker (so it may start workers of its own)."""
    import subprocess

    argv, cwd = job
    return argv, subprocess.run([sys.executable, "-m", "asrdistill.cli", *argv], cwd=cwd, check=False).returncode


def cmd_run_jobs(args: argparse.Namespace) -> int:
    """Run independent asrdistill command lines (teachers, students, evaluations) through the executor."""
    from asrdistill.parallel import Executor

    text = sys.stdin.read() if str(args.jobs) == "-" else args.jobs.read_text(encoding="utf-8")
    jobs = [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    failed = []
    with Executor(min(args.nj, len(jobs))) as executor:
        for argv, rc in executor.map(_run_job, [(job, str(Path.cwd())) for job in jobs], ordered=False):
            log.info("job %s: exit %d", shlex.join(argv), rc)
            if rc:
                failed.append(shlex.join(argv))
    if failed:
        log.error("%d of %d job(s) failed: %s", len(failed), len(jobs), "; ".join(failed))
        return 1
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asrdistill", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="on an error, show the traceback (else one line naming the cause)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, config: bool = False,
            threads: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if threads:
            sp.add_argument("--threads", type=int, default=0, metavar="N",
                            help="torch threads of this process (default: the cores shared among --nj workers "
                                 "or the node's torchrun ranks)")
        if config:
            sp.add_argument("--config", type=Path, help="recipe YAML (the section this step reads)")
            sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="override a config field (repeatable)")
        return sp

    sp = add("synth-corpus", cmd_synth_corpus, "synthesize the offline espeak-ng corpus in LibriSpeech layout")
    sp.add_argument("--out", type=Path, required=True, help="folder to hold LibriSpeech/ and lm/")
    sp.add_argument("--hours", type=float, required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--num-speakers", type=int, default=48)
    sp.add_argument("--lm-sentences", type=int, default=100_000)
    sp.add_argument("--vocab-size", type=int, default=0,
                    help="extra CMUdict words in the text (0: the grammar's ~1.3k words only)")
    sp.add_argument("--dev-fraction", type=float, default=0.1, help="of the speakers and of the utterances")
    sp.add_argument("--test-fraction", type=float, default=0.1, help="of the speakers and of the utterances")
    sp.add_argument("--nj", type=int, default=2)
    sp.add_argument("--force", action="store_true")

    sp = add("download", cmd_download, "download LibriSpeech subsets, lexicon and official LMs (resumable, md5-checked)")
    sp.add_argument("--target", type=Path, required=True, help="folder to hold LibriSpeech/ and lm/")
    sp.add_argument("--subsets", nargs="+", required=True)
    sp.add_argument("--base-url", action="append", help="resources root or mirror name; repeat for fallbacks")
    sp.add_argument("--no-lm", action="store_true", help="skip the LMs, vocabulary and LM text")
    sp.add_argument("--lm-files", nargs="+", help="only these official LM files (e.g. 3-gram.pruned.3e-7.arpa.gz); "
                    "default: all five (~4 GB)")
    sp.add_argument("--remove-archives", action="store_true", help="delete each archive once unpacked")
    sp.add_argument("--corpus-dir", type=Path, help="an existing LibriSpeech (folder holding LibriSpeech/): "
                    "linked after checking the subsets, not downloaded")
    sp.add_argument("--lexicon", type=Path, help="use this lexicon instead of fetching librispeech-lexicon.txt")
    sp.add_argument("--lm-dir", type=Path, help="folder with the OpenSLR 11 files (ARPAs, vocabulary, lexicon) "
                    "under their official names: linked and md5-checked; the rest is downloaded")

    sp = add("prepare", cmd_prepare, "Kaldi data dirs from a corpus in LibriSpeech layout")
    sp.add_argument("--corpus", type=Path, required=True, help="folder holding LibriSpeech/")
    sp.add_argument("--subsets", nargs="+", required=True)
    sp.add_argument("--out", type=Path, required=True, help="data/ folder; subsets become data/<subset with _>")
    sp.add_argument("--nj", type=int, default=2)
    sp.add_argument("--force", action="store_true")

    sp = add("lang", cmd_lang, "lexicon and phone/word tables (data/lang) for the corpus vocabulary", config=True)
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("data_dirs", nargs="+", type=Path)
    sp.add_argument("--extra-text", nargs="*", type=Path, default=[], help="LM text or vocabulary files")

    sp = add("features", cmd_features, "40-dim log-mel fbank into webdataset shards (+ CMVN stats)", config=True,
             threads=True)
    sp.add_argument("data_dir", type=Path)
    sp.add_argument("out_dir", type=Path)
    sp.add_argument("--nj", type=int, default=2)
    sp.add_argument("--force", action="store_true")

    sp = add("cmvn", cmd_cmvn, "mean/variance normalisation stats of a feature set (the training set's are used everywhere)",
             threads=True)
    sp.add_argument("feats_dir", type=Path)
    sp.add_argument("--data-dir", type=Path, help="with utt2spk: per-speaker stats too")

    sp = add("mono", cmd_mono, "flat-start monophone GMM-HMM training, then alignment of the training set", config=True)
    sp.add_argument("data_dir", type=Path)
    sp.add_argument("lang_dir", type=Path)
    sp.add_argument("feats_dir", type=Path)
    sp.add_argument("exp_dir", type=Path, help="e.g. exp/mono; alignments go to <exp_dir>/ali")
    sp.add_argument("--nj", type=int)
    sp.add_argument("--device", help="cpu or cuda")
    sp.add_argument("--force", action="store_true", help="train and align again even if done")

    sp = add("tri", cmd_tri, "decision tree (senones) from the monophone alignment, tied-state triphone training",
             config=True)
    sp.add_argument("data_dir", type=Path)
    sp.add_argument("lang_dir", type=Path)
    sp.add_argument("feats_dir", type=Path)
    sp.add_argument("mono_dir", type=Path, help="exp/mono (final.pt and ali/): normalisation and topology")
    sp.add_argument("exp_dir", type=Path)
    sp.add_argument("--ali-dir", type=Path, help="alignment to start from (default <mono_dir>/ali; e.g. "
                    "exp/tri_ali/train for an LDA+MLLT stage, tri.feature_transform=lda_mllt)")
    sp.add_argument("--nj", type=int)
    sp.add_argument("--device")
    sp.add_argument("--force", action="store_true", help="train again even if done")

    sp = add("align", cmd_align, "Viterbi-align a data set with a trained GMM-HMM (senone labels with a tree)", config=True)
    sp.add_argument("model_dir", type=Path, help="holds final.pt (exp/mono or exp/tri)")
    sp.add_argument("data_dir", type=Path)
    sp.add_argument("lang_dir", type=Path)
    sp.add_argument("feats_dir", type=Path)
    sp.add_argument("out_dir", type=Path)
    sp.add_argument("--nj", type=int)
    sp.add_argument("--device")
    sp.add_argument("--force", action="store_true")

    sp = add("import-ali", cmd_import_ali, "senone labels from Kaldi pdf alignments (ali-to-pdf ark/scp)")
    sp.add_argument("ali", type=Path, help="ark or scp of int vectors, e.g. ali-to-pdf output")
    sp.add_argument("feats_dir", type=Path)
    sp.add_argument("out_dir", type=Path, help="e.g. exp/kaldi_ali/<set> (use it as --labels root)")
    sp.add_argument("--tree", type=Path, help="required: the asrdistill tree (exp/tri or its tree.json) whose "
                    "senones the ids are; recorded in the labels, checked by graph-using stages")
    sp.add_argument("--allow-pipes", action="store_true",
                    help="let .scp entries be shell commands ('cmd |'). RISK: the file then runs any command it "
                         "names with your rights; only for files you wrote yourself")
    sp.add_argument("--force", action="store_true")

    sp = add("lm", cmd_lm, "n-gram LM: the official ARPA if present, else trained on the corpus LM text", config=True)
    sp.add_argument("corpus_lm_dir", type=Path, help="data/corpus/lm")
    sp.add_argument("lang_dir", type=Path)
    sp.add_argument("eval_dirs", nargs="*", type=Path, help="data dirs whose text gets a perplexity")
    sp.add_argument("out_dir", type=Path)

    sp = add("graph", cmd_graph, "HCLG decoding graph from lang, the senone tree, topology and the LM", config=True)
    sp.add_argument("lang_dir", type=Path)
    sp.add_argument("tri_dir", type=Path, help="holds tree.json and topo.json")
    sp.add_argument("lm_dir", type=Path, help="holds lm.json (from 'asrdistill lm')")
    sp.add_argument("out_dir", type=Path)

    def add_train_data(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--feats", type=Path, required=True, help="data/fbank (holds <set>/feats.manifest.json)")
        sp.add_argument("--labels", type=Path, required=True, help="exp/tri_ali (holds <set>/pdf.manifest.json)")
        sp.add_argument("--train-set", required=True)
        sp.add_argument("--dev-set", required=True)
        sp.add_argument("--device", help="cpu or cuda (default: the config's, 'auto')")
        sp.add_argument("--seed", type=int, default=1)
        sp.add_argument("--role", help="config section overriding 'train', e.g. student or fraction")
        sp.add_argument("--fraction", type=float, help="train on this fraction of the utterances")
        sp.add_argument("--soft", type=Path, help="cached soft targets (exp/ensemble/soft_T2): distill")
        sp.add_argument("--online", type=Path, metavar="ENSEMBLE_DIR",
                        help="distill from the teachers of ENSEMBLE_DIR/members.txt run on each batch (exact at any T)")
        sp.add_argument("--temperature", type=float, default=2.0)
        sp.add_argument("--hard-weight", type=float, help="distill.hard_weight (weight of the hard-label term)")

    sp = add("train", cmd_train, "train a frame DNN: hard labels, or distillation with --soft", config=True,
             threads=True)
    add_train_data(sp)
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--force", action="store_true")

    sp = add("ensemble", cmd_ensemble, "cache the teacher ensemble's soft targets at each temperature (dense or top-k, fidelity measured on dev)",
             config=True, threads=True)
    add_train_data(sp)
    sp.add_argument("--out", type=Path, required=True, help="e.g. exp/ensemble; soft targets in soft_T<t>/")
    sp.add_argument("--temperatures", type=float, nargs="+", required=True)
    sp.add_argument("--members", nargs="+", type=Path, required=True, help="teacher experiment dirs (with best.pt)")
    sp.add_argument("--force", action="store_true", help="rebuild the soft targets even if up to date")

    sp = add("best-student", cmd_best_student,
             "print 'T hard_weight' of the swept student with the best dev frame accuracy")
    sp.add_argument("student_dirs", nargs="+", type=Path)

    sp = add("evaluate", cmd_evaluate, "frame accuracy and WER (dev-tuned acoustic scale) of a model, an ensemble "
             "or a generalist with its specialists", config=True, threads=True)
    add_train_data(sp)
    sp.add_argument("--test-set", required=True)
    sp.add_argument("--data", type=Path, required=True, help="data/ (reference transcripts in <set>/text)")
    sp.add_argument("--graph", type=Path, help="exp/graph; without it, frame accuracy only")
    sp.add_argument("--nj", type=int, help="decoding processes")
    sp.add_argument("system_dir", type=Path, help="exp/<system> with best.pt, members.txt or specialists.json")
    sp.add_argument("--force", action="store_true", help="evaluate again even if metrics.json is up to date")

    sp = add("bundle", cmd_bundle, "one folder with everything a system decodes with (weights, context, CMVN, "
             "priors, tree, graph, lexicon, config, checksums)", config=True, threads=True)
    sp.add_argument("system_dir", type=Path, help="exp/<system> with best.pt or members.txt")
    sp.add_argument("out", type=Path, help="the bundle folder, e.g. exp/<system>/bundle")
    sp.add_argument("--feats", type=Path, required=True, help="training features (data/fbank/<train>, with cmvn.json)")
    sp.add_argument("--labels", type=Path, required=True, help="training alignments (exp/tri_ali/<train>): priors")
    sp.add_argument("--tree", type=Path, required=True, help="holds tree.json and topo.json (exp/tri)")
    sp.add_argument("--graph", type=Path, required=True, help="the HCLG built from that tree (exp/graph)")
    sp.add_argument("--lang", type=Path, required=True, help="data/lang")
    sp.add_argument("--force", action="store_true", help="rewrite even if the sources are unchanged")

    sp = add("decode", cmd_decode, "decode new audio with a bundle: Kaldi text, CTM, and a WER report where the "
             "folder has references", threads=True)
    sp.add_argument("--model", type=Path, required=True, help="a bundle (exp/<system>/bundle)")
    sp.add_argument("--corpus", type=Path, required=True,
                    help="LibriSpeech-layout folder, Kaldi data dir, or a folder of .flac/.wav files")
    sp.add_argument("--out", type=Path, required=True, help="decode folder (text, ctm, report.txt, log/decode.log)")
    sp.add_argument("--max-seconds", type=float, default=120.0, help="longer utterances are skipped (listed)")
    sp.add_argument("--nj", type=int, default=1, help="decoding and feature processes")
    sp.add_argument("--device", help="cpu or cuda (default cpu)")
    sp.add_argument("--allow-pipes", action="store_true", help="run the shell commands of a Kaldi wav.scp")

    sp = add("export-ark", cmd_export_ark, "Kaldi ark/scp: per-frame log-likelihoods (log posterior - log prior) "
             "of a bundle, and senone alignments", threads=True)
    sp.add_argument("--out", type=Path, required=True, help="writes loglikes.{ark,scp} and/or pdf.{ark,scp}")
    sp.add_argument("--model", type=Path, help="a bundle (exp/<system>/bundle)")
    sp.add_argument("--feats", type=Path, help="feature shards to score (data/fbank/<set> or <decode out>/fbank)")
    sp.add_argument("--labels", type=Path, help="senone label shards (exp/tri_ali/<set>)")
    sp.add_argument("--device", help="cpu or cuda (default cpu)")

    sp = add("import-data-dir", cmd_import_data_dir, "a Kaldi data dir (pipes, ark offsets, segments, feats.scp) "
             "as an asrdistill data dir with one FLAC per utterance and normalised text")
    sp.add_argument("src", type=Path)
    sp.add_argument("out", type=Path, help="the new data dir (audio in <out>/audio)")
    sp.add_argument("--allow-pipes", action="store_true", help="run the shell commands in wav.scp (trusted data only)")
    sp.add_argument("--feats-out", type=Path, help="also import feats.scp as feature shards into this folder")

    sp = add("import-lhotse", cmd_import_lhotse, "a lhotse CutSet, or RecordingSet + SupervisionSet, as a data dir "
             "(one FLAC per supervision, normalised text)")
    sp.add_argument("out", type=Path, help="the new data dir (audio in <out>/audio)")
    sp.add_argument("manifests", nargs="+", type=Path, help="lhotse manifests (.jsonl.gz, .json, ...)")
    sp.add_argument("--allow-pipes", action="store_true", help="read recordings whose source is a shell command")

    sp = add("export-lhotse", cmd_export_lhotse, "a data dir as lhotse recordings/supervisions/cuts manifests")
    sp.add_argument("data_dir", type=Path)
    sp.add_argument("out", type=Path)

    sp = add("validate-data-dir", cmd_validate_data_dir, "check a data dir as Kaldi's validate_data_dir.sh does")
    sp.add_argument("data_dir", type=Path)

    sp = add("fix-data-dir", cmd_fix_data_dir, "keep the utterances all files share, sort, rewrite spk2utt "
             "(originals in .backup/)")
    sp.add_argument("data_dir", type=Path)

    sp = add("split-data-dir", cmd_split_data_dir, "split a data dir by speaker into <dir>/split<N>/<1..N>")
    sp.add_argument("data_dir", type=Path)
    sp.add_argument("num_jobs", type=int)

    sp = add("plot", cmd_plot, "training curves of systems, and one utterance's spectrogram, alignment and "
             "posteriors per system (PNG)", threads=True)
    sp.add_argument("--out", type=Path, required=True, help="folder for curves.png and utt_<id>.png")
    sp.add_argument("--systems", nargs="+", type=Path, required=True,
                    help="exp/<system> folders (log/metrics.jsonl; bundle/ for --utt)")
    sp.add_argument("--utt", help="utterance to draw")
    sp.add_argument("--feats", type=Path, help="its feature shards (data/fbank/<set>)")
    sp.add_argument("--labels", type=Path, help="its senone alignment (exp/tri_ali/<set>)")
    sp.add_argument("--top", type=int, default=6, help="senones to draw")

    sp = add("results", cmd_results, "results.md / results.json / results.png from the systems' metrics")
    sp.add_argument("exp_dir", type=Path)
    sp.add_argument("systems", nargs="+")
    sp.add_argument("--title", default="Baseline vs ensemble vs distilled student")

    def add_specialists(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = add(name, func, help, config=True, threads=True)
        sp.add_argument("--feats", type=Path, required=True, help="data/fbank (holds <set>/feats.manifest.json)")
        sp.add_argument("--labels", type=Path, required=True, help="exp/tri_ali (holds <set>/pdf.manifest.json)")
        sp.add_argument("--train-set", required=True)
        sp.add_argument("--dev-set", required=True)
        sp.add_argument("--device", help="cpu or cuda (default: cpu)")
        sp.add_argument("--generalist", type=Path, required=True, help="exp/<system> with best.pt (e.g. exp/baseline_seed1)")
        sp.add_argument("--out", type=Path, required=True, help="e.g. exp/specialists (groups.json, spec_NN/)")
        return sp

    sp = add_specialists("specialists-groups", cmd_specialists_groups,
                         "confusable senone groups from the generalist's dev predictions (groups.json)")
    sp.add_argument("--tree", type=Path, help="exp/tri/tree.json, for the senones' centre phones")
    sp.add_argument("--lang", type=Path, help="data/lang, for the phone names")
    sp.add_argument("--force", action="store_true")
    sp = add_specialists("specialists-train", cmd_specialists_train,
                         "one specialist (group + dustbin) per group of groups.json, from the generalist")
    sp.add_argument("--force", action="store_true")
    sp = add_specialists("specialists-eval", cmd_specialists_eval,
                         "frame accuracy of the generalist alone and with its specialists (frame_accuracy.json)")
    sp.add_argument("--test-set", nargs="*", default=[], help="further labelled sets to score")
    sp = add_specialists("specialists-cache", cmd_specialists_cache,
                         "dense soft targets of generalist + specialists (soft_T<t>/) for 'train --soft'")
    sp.add_argument("--temperatures", type=float, nargs="+", required=True)
    sp.add_argument("--force", action="store_true")

    sp = add("run-jobs", cmd_run_jobs, "run independent asrdistill command lines in parallel (local or Dask)",
             config=True)
    sp.add_argument("jobs", type=Path, help="file with one command line per line (without 'asrdistill'); - = stdin")
    sp.add_argument("--nj", type=int, default=2, help="jobs at a time (give each job --threads to share the cores)")

    sp = add("config-get", cmd_config_get, "print a value of a recipe config (section.key)", config=True)
    sp.add_argument("key")
    return p


def _set_threads(args: argparse.Namespace) -> None:
    """Set the torch thread count explicitly: torch's default (every core) oversubscribes a machine shared by
    ``--nj`` workers or several torchrun ranks, and every process then runs slower."""
    import os

    import torch

    n = args.threads
    if n <= 0:
        sharers = max(getattr(args, "nj", None) or 1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        n = max(1, (os.cpu_count() or 1) // sharers)
    torch.set_num_threads(n)
    log.debug("torch threads: %d", n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=FORMAT, stream=sys.stderr)
    if args.command != "config-get":
        log.info("asrdistill %s", shlex.join(sys.argv[1:] if argv is None else list(argv)))
    # the folder the command writes gets log/<command>.log (Kaldi style); a command that only reads or prints, none
    out_arg = {"bundle": "system_dir", "evaluate": "system_dir", "cmvn": "feats_dir", "fix-data-dir": "data_dir",
               "split-data-dir": "data_dir"}.get(args.command)
    out = getattr(args, out_arg) if out_arg else next(
        (getattr(args, a) for a in ("out", "out_dir", "exp_dir", "target") if getattr(args, a, None)), None)
    try:
        _check_device(getattr(args, "device", None), "--device")
        with command_log(out, args.command, shlex.join(sys.argv if argv is None else ["asrdistill", *argv]),
                         config=getattr(args, "config", None), overrides=getattr(args, "set", None) or (),
                         role=getattr(args, "role", None)) as status:
            if getattr(args, "threads", None) is not None:
                _set_threads(args)
            if hasattr(args, "config") and args.command != "config-get":  # where parallel jobs run: ``executor``
                from asrdistill.parallel import ExecutorConfig, configure

                configure(_section(args, "executor", ExecutorConfig))
            status.code = args.func(args)
        return status.code
    except Exception as e:  # noqa: BLE001 - one line naming the cause; --debug shows the traceback
        if args.debug:
            raise
        log.error("%s failed: %s", args.command, describe_error(e))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
