"""Tool commands for the recipes: run independent command lines in parallel, and read a config value."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from asrdistill.cli.common import Arg, Work, command

log = logging.getLogger("asrdistill")


def _run_job(job: tuple[list[str], str]) -> tuple[list[str], int]:
    """One ``asrdistill`` command line in the caller's folder (relative paths; a Dask worker on another node needs
    it on a shared file system), as a child process of the worker (so it may start workers of its own)."""
    import subprocess

    argv, cwd = job
    return argv, subprocess.run([sys.executable, "-m", "asrdistill.cli", *argv], cwd=cwd, check=False).returncode


@command(
    "run-jobs",
    "run independent asrdistill command lines in parallel (local or Dask)",
    config=True,
    args=[
        Arg("jobs", type=Path, help="file with one command line per line (without 'asrdistill'); - = stdin"),
        Arg("--nj", type=int, default=2, help="jobs at a time (give each job --threads to share the cores)"),
    ],
)
def cmd_run_jobs(args: argparse.Namespace) -> Work:
    """Run independent asrdistill command lines (teachers, students, evaluations) through the executor."""
    from asrdistill.parallel import Executor

    if str(args.jobs) != "-" and not args.jobs.is_file():
        raise FileNotFoundError(f"no such file: {args.jobs}")
    text = sys.stdin.read() if str(args.jobs) == "-" else args.jobs.read_text(encoding="utf-8")
    jobs = [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    def run() -> int:
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

    return run


@command(
    "config-get",
    "print a value of a recipe config (section.key)",
    config=True,
    query=True,
    args=[
        Arg("key", help="section.key, e.g. recipe.train_set"),
    ],
)
def cmd_config_get(args: argparse.Namespace) -> Work:
    """Print one value of a recipe config (for loops in run.sh)."""
    from asrdistill.config import merge, parse_overrides, read_yaml

    if args.config is None:
        raise ValueError("config-get needs --config FILE (the recipe YAML to read)")
    data = merge(read_yaml(args.config), parse_overrides(args.set))

    def run() -> int:
        section, _, key = args.key.partition(".")
        if section not in data or key not in (data[section] or {}):
            print(f"{args.config}: no {args.key}", file=sys.stderr)
            return 1
        value = data[section][key]
        print(" ".join(str(v) for v in value) if isinstance(value, list) else value)
        return 0

    return run
