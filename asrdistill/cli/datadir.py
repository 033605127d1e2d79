"""Data-dir commands: Kaldi data dirs and lhotse manifests in and out, and Kaldi's validate/fix/split tools.

Every command takes its input before its output, as Kaldi's tools do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asrdistill.cli.common import FORCE, Arg, Work, command, section

DATA_DIR = Arg("data_dir", type=Path, exists="folder", help="an asrdistill (Kaldi-layout) data dir")


@command(
    "import-data-dir",
    "a Kaldi data dir (pipes, ark offsets, segments, feats.scp) as an asrdistill data dir "
    "with one FLAC per utterance and normalised text",
    log_dir="out",
    args=[
        Arg("src", type=Path, exists="folder", help="the Kaldi data dir"),
        Arg("out", type=Path, help="the new data dir (audio in <out>/audio)"),
        Arg("--allow-pipes", action="store_true", help="run the shell commands in wav.scp (trusted data only)"),
        Arg("--feats-out", type=Path, help="also import feats.scp as feature shards into this folder (default: no)"),
    ],
)
def cmd_import_data_dir(args: argparse.Namespace) -> Work:
    from asrdistill.data.kaldi_dir import import_data_dir as import_dir
    from asrdistill.data.kaldi_dir import import_feats

    def run() -> None:
        if (Path(args.src) / "wav.scp").is_file():
            import_dir(args.src, args.out, allow_pipes=args.allow_pipes)
        if args.feats_out:
            import_feats(args.src, args.feats_out)

    return run


@command(
    "import-lhotse",
    "a lhotse CutSet, or RecordingSet + SupervisionSet, as a data dir (one FLAC per supervision, normalised text)",
    log_dir="out",
    args=[
        Arg("manifests", nargs="+", type=Path, exists="file", help="lhotse manifests (.jsonl.gz, .json, ...)"),
        Arg("out", type=Path, help="the new data dir (audio in <out>/audio)"),
        Arg("--allow-pipes", action="store_true", help="read recordings whose source is a shell command"),
    ],
)
def cmd_import_lhotse(args: argparse.Namespace) -> Work:
    from asrdistill.data.lhotse_io import import_lhotse as import_manifests

    def run() -> None:
        import_manifests(args.manifests, args.out, allow_pipes=args.allow_pipes)

    return run


@command(
    "export-lhotse",
    "a data dir as lhotse recordings/supervisions/cuts manifests",
    log_dir="out",
    args=[
        DATA_DIR,
        Arg("out", type=Path, help="folder for the manifests"),
    ],
)
def cmd_export_lhotse(args: argparse.Namespace) -> Work:
    from asrdistill.data.lhotse_io import export_lhotse as export_manifests

    def run() -> None:
        for path in export_manifests(args.data_dir, args.out).values():
            print(path)

    return run


@command("validate-data-dir", "check a data dir as Kaldi's validate_data_dir.sh does", args=[DATA_DIR])
def cmd_validate_data_dir(args: argparse.Namespace) -> Work:
    from asrdistill.data.kaldi_dir import validate_data_dir as validate

    def run() -> int:
        problems = validate(args.data_dir)
        for p in problems:
            print(p)
        errors = [p for p in problems if not p.startswith("warning:")]
        print(
            f"{args.data_dir}: {'invalid, ' + str(len(errors)) + ' problem(s)' if errors else 'valid'}"
            f"{', ' + str(len(problems) - len(errors)) + ' warning(s)' if len(problems) > len(errors) else ''}"
        )
        return 1 if errors else 0

    return run


@command(
    "fix-data-dir",
    "keep the utterances all files share, sort, rewrite spk2utt (originals in .backup/)",
    log_dir="data_dir",
    args=[DATA_DIR],
)
def cmd_fix_data_dir(args: argparse.Namespace) -> Work:
    from asrdistill.data.kaldi_dir import fix_data_dir as fix

    def run() -> None:
        fix(args.data_dir)

    return run


@command(
    "split-data-dir",
    "split a data dir by speaker into <dir>/split<N>/<1..N>",
    log_dir="data_dir",
    args=[
        DATA_DIR,
        Arg("num_jobs", type=int, help="parts N"),
    ],
)
def cmd_split_data_dir(args: argparse.Namespace) -> Work:
    from asrdistill.data.kaldi_dir import split_data_dir as split

    def run() -> None:
        for d in split(args.data_dir, args.num_jobs):
            print(d)

    return run


@command(
    "augment-data-dir",
    "perturbed copies of a data dir as new utterances and speakers (Kaldi's sp0.9-<utt>, sp0.9-<spk>): "
    "speed, volume, noise, reverberation (config section augment)",
    log_dir="out",
    config=True,
    threads=True,
    args=[
        DATA_DIR,
        Arg("out", type=Path, help="the new data dir (audio in <out>/audio/<copy>/), e.g. data/train_sp"),
        Arg("--nj", type=int, default=2, help="worker processes (default: 2)"),
        FORCE,
    ],
)
def cmd_augment_data_dir(args: argparse.Namespace) -> Work:
    from asrdistill.data.augment import AugmentConfig, augment_data_dir

    cfg = section(args, "augment", AugmentConfig)

    def run() -> None:
        augment_data_dir(args.data_dir, args.out, cfg, nj=args.nj, force=args.force)

    return run
