"""Corpus commands: synthesize or download a corpus, Kaldi data dirs from it, and the lexicon (``data/lang``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrdistill.cli.common import FORCE, Arg, Work, command, section


@command(
    "synth-corpus",
    "synthesize the offline espeak-ng corpus in LibriSpeech layout",
    log_dir="out",
    args=[
        Arg("--out", type=Path, required=True, help="folder to hold LibriSpeech/ and lm/"),
        Arg("--hours", type=float, required=True, help="hours of speech over all subsets"),
        Arg("--seed", type=int, default=0, help="seed of the speakers, sentences and voices"),
        Arg("--num-speakers", type=int, default=48, help="speakers over all subsets"),
        Arg("--lm-sentences", type=int, default=100_000, help="sentences of LM text (lm/)"),
        Arg(
            "--vocab-size",
            type=int,
            default=0,
            help="extra CMUdict words in the text (0: the grammar's ~1.3k words only)",
        ),
        Arg("--dev-fraction", type=float, default=0.1, help="of the speakers and of the utterances"),
        Arg("--test-fraction", type=float, default=0.1, help="of the speakers and of the utterances"),
        Arg(
            "--transfer-hours",
            type=float,
            default=0.0,
            help="also this many hours of unlabelled audio in LibriSpeech/transfer, new talkers with no dev/test "
            "voice, for the teachers to label (default: 0, none; data_prep/transfer.py)",
        ),
        Arg("--nj", type=int, default=2, help="synthesis processes"),
        FORCE,
    ],
)
def cmd_synth_corpus(args: argparse.Namespace) -> Work:
    from data_prep.synthetic import synthesize_corpus
    from data_prep.transfer import synthesize_transfer

    def run() -> None:
        synthesize_corpus(
            args.out,
            args.hours,
            seed=args.seed,
            num_speakers=args.num_speakers,
            nj=args.nj,
            dev_fraction=args.dev_fraction,
            test_fraction=args.test_fraction,
            lm_sentences=args.lm_sentences,
            vocab_size=args.vocab_size,
            force=args.force,
        )
        if args.transfer_hours > 0:
            synthesize_transfer(args.out, args.transfer_hours, nj=args.nj, force=args.force)

    return run


@command(
    "synth-shift-set",
    "a voice-shift test set (LibriSpeech/test_shift) of a synthetic corpus: its test sentences spoken by espeak-ng "
    "Klatt variants of kinds no corpus talker uses, clean, noisy and reverberated",
    log_dir="corpus",
    args=[
        Arg("--corpus", type=Path, required=True, exists="folder", help="the synth-corpus folder (holds LibriSpeech/)"),
        Arg("--num-speakers", type=int, default=12, help="talkers (default: 12)"),
        Arg("--utterances", type=int, default=600, help="test sentences spoken (default: 600; all if fewer)"),
        Arg("--seed", type=int, default=0, help="seed of the talkers, sentences and conditions (default: 0)"),
        Arg("--nj", type=int, default=2, help="synthesis processes (default: 2)"),
        FORCE,
    ],
)
def cmd_synth_shift_set(args: argparse.Namespace) -> Work:
    from data_prep.shift import synthesize_shift_set

    def run() -> None:
        synthesize_shift_set(
            args.corpus, args.num_speakers, args.utterances, seed=args.seed, nj=args.nj, force=args.force
        )

    return run


@command(
    "download",
    "download LibriSpeech subsets, lexicon and official LMs (resumable, md5-checked)",
    log_dir="target",
    args=[
        Arg("--target", type=Path, required=True, help="folder to hold LibriSpeech/ and lm/"),
        Arg("--subsets", nargs="+", required=True, help="e.g. train-clean-100 dev-clean test-clean"),
        Arg(
            "--base-url",
            action="append",
            help="resources root or mirror name; repeat for fallbacks (default: OpenSLR and its mirrors)",
        ),
        Arg("--no-lm", action="store_true", help="skip the LMs, vocabulary and LM text"),
        Arg(
            "--lm-files",
            nargs="+",
            help="only these official LM files (e.g. 3-gram.pruned.3e-7.arpa.gz); default: all five (~4 GB)",
        ),
        Arg("--remove-archives", action="store_true", help="delete each archive once unpacked"),
        Arg(
            "--corpus-dir",
            type=Path,
            exists="folder",
            help="an existing LibriSpeech (folder holding LibriSpeech/): "
            "linked after checking the subsets, not downloaded (default: download)",
        ),
        Arg(
            "--lexicon",
            type=Path,
            exists="file",
            help="use this lexicon instead of fetching librispeech-lexicon.txt (default: fetch it)",
        ),
        Arg(
            "--lm-dir",
            type=Path,
            exists="folder",
            help="folder with the OpenSLR 11 files (ARPAs, vocabulary, "
            "lexicon) under their official names: linked and md5-checked; the rest is downloaded (default: none)",
        ),
    ],
)
def cmd_download(args: argparse.Namespace) -> Work:
    from data_prep.librispeech import DEFAULT_BASE_URL, download_librispeech

    def run() -> None:
        download_librispeech(
            args.target,
            args.subsets,
            args.base_url or DEFAULT_BASE_URL,
            lm=not args.no_lm,
            remove_archives=args.remove_archives,
            corpus_dir=args.corpus_dir,
            lexicon=args.lexicon,
            lm_dir=args.lm_dir,
            lm_files=args.lm_files,
        )

    return run


@command(
    "prepare",
    "Kaldi data dirs from a corpus in LibriSpeech layout",
    log_dir="out",
    args=[
        Arg("--corpus", type=Path, required=True, exists="folder", help="folder holding LibriSpeech/"),
        Arg("--subsets", nargs="+", required=True, help="e.g. train-clean-100 dev-clean"),
        Arg("--out", type=Path, required=True, help="data/ folder; subsets become data/<subset with _>"),
        Arg("--nj", type=int, default=2, help="parsing processes"),
        FORCE,
    ],
)
def cmd_prepare(args: argparse.Namespace) -> Work:
    from data_prep.librispeech import prepare_librispeech

    def run() -> None:
        prepare_librispeech(args.corpus, args.subsets, args.out, nj=args.nj, force=args.force)

    return run


@command(
    "lang",
    "lexicon and phone/word tables (data/lang) for the corpus vocabulary",
    log_dir="out",
    config=True,
    args=[
        Arg("--out", type=Path, required=True, help="the lang folder, e.g. data/lang"),
        Arg("data_dirs", nargs="+", type=Path, exists="folder", help="data dirs whose text gives the vocabulary"),
        Arg(
            "--extra-text",
            nargs="*",
            type=Path,
            default=[],
            exists="file",
            help="LM text or vocabulary files (default: none)",
        ),
    ],
)
def cmd_lang(args: argparse.Namespace) -> Work:
    from asrdistill.data.lexicon import LexiconConfig, build_lang, corpus_vocabulary

    cfg = section(args, "lexicon", LexiconConfig)

    def run() -> None:
        words = corpus_vocabulary(args.data_dirs, args.extra_text)
        build_lang(
            words, args.out, source=cfg.source, lexicon_path=cfg.lexicon_path, keep_stress=cfg.keep_stress, g2p=cfg.g2p
        )

    return run
