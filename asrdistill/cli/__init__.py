"""The ``asrdistill`` command: one subcommand per pipeline step, called by the recipes.

Each stage's commands live in their own module here (``corpus``, ``features``, ``aligner``, ``graph``, ``nnet``,
``evaluate``, ``inference``, ``datadir``, ``specialists``, ``tools``), each command declared with its options beside
its handler and the folder its log goes to (:func:`asrdistill.cli.common.command`); this module only assembles them
and runs one. Adding a command touches one module.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Sequence

from asrdistill.cli import aligner, corpus, datadir, evaluate, features, graph, inference, nnet, specialists, tools
from asrdistill.cli.common import COMMANDS, CONFIG, Command, add_to, check_device, check_inputs, section
from asrdistill.logs import FORMAT, command_log, describe_error, log_package

log_package("data_prep")  # the corpus commands run data_prep's functions: their records belong in the command logs

log = logging.getLogger("asrdistill")

STAGES = (corpus, features, aligner, graph, nnet, evaluate, inference, datadir, specialists, tools)  # help's order

DESCRIPTION = (
    "asrdistill: knowledge distillation for speech acoustic models, one subcommand per pipeline step. "
    "Each subcommand is a thin wrapper over a library function; those that take --config read their own "
    "section of the recipe YAML, and --set SECTION.KEY=VALUE overrides a field. A command that writes a "
    "folder logs its command line, config and timing to FOLDER/log/COMMAND.log."
)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says its default itself or has none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = not (
            default is None or default is False or default is argparse.SUPPRESS or default == [] or action.required
        )
        if shown and "default" not in text and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asrdistill", description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--debug", action="store_true", help="on an error, show the traceback (else one line naming the cause)"
    )
    sub = p.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="the step to run; asrdistill COMMAND --help tells its arguments",
    )
    for stage in STAGES:
        for cmd in COMMANDS.values():
            if cmd.stage == stage.__name__:
                add_to(sub, cmd, HelpFormatter)
    return p


def _set_threads(args: argparse.Namespace) -> None:
    """Set the torch thread count explicitly: torch's default (every core) oversubscribes a machine shared by
    ``--nj`` workers or several torchrun ranks, and every process then runs slower."""
    import torch

    n = args.threads
    if n <= 0:
        sharers = max(getattr(args, "nj", None) or 1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        n = max(1, (os.cpu_count() or 1) // sharers)
    torch.set_num_threads(n)
    log.debug("torch threads: %d", n)


def _prepare(cmd: Command, args: argparse.Namespace):
    """Everything before the first write: inputs exist, device usable, config read; returns the command's work."""
    check_device(getattr(args, "device", None), "--device")
    if cmd.config:
        check_inputs(args, CONFIG)
        if not cmd.query:  # where parallel jobs run: ``executor``
            from asrdistill.parallel import ExecutorConfig, configure

            configure(section(args, "executor", ExecutorConfig))
    check_inputs(args, cmd.args)
    if cmd.threads:
        _set_threads(args)
    return cmd.handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd: Command = args.command_spec
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=FORMAT, stream=sys.stderr)
    if not cmd.query:
        log.info("asrdistill %s", shlex.join(sys.argv[1:] if argv is None else list(argv)))
    try:
        work = _prepare(cmd, args)  # a command that fails on its arguments writes nothing, not even its log
        out = getattr(args, cmd.log_dir) if cmd.log_dir else None
        with command_log(
            out,
            cmd.name,
            shlex.join(sys.argv if argv is None else ["asrdistill", *argv]),
            config=getattr(args, "config", None),
            overrides=getattr(args, "set", None) or (),
            role=getattr(args, "role", None),
        ) as status:
            status.code = work() or 0
        return status.code
    except Exception as e:  # noqa: BLE001 - one line naming the cause; --debug shows the traceback
        if args.debug:
            raise
        log.error("%s failed: %s", cmd.name, describe_error(e))
        return 1
