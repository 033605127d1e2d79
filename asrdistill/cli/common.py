"""What every command module uses: the :func:`command` registration, argument specs, config loading, checks.

A command is declared in one place, its options beside its handler (as lhotse's ``bin/modes`` does)::

    @command("features", "40-dim log-mel fbank into webdataset shards", log_dir="out_dir", config=True, args=[
        Arg("data_dir", type=Path, exists="folder", help="Kaldi data dir (wav.scp, text, utt2spk)"),
        Arg("out_dir", type=Path, help="feature shards, cmvn.json and log/"),
    ])
    def features(args: argparse.Namespace) -> Work:
        cfg = section(args, "features", FbankConfig)    # checks and reads: nothing is written yet
        def run() -> None:
            compute_features(args.data_dir, args.out_dir, cfg)
        return run

The handler checks its arguments and loads its config, then returns the work; ``main`` opens the command's log
(``<log_dir>/log/<command>.log``) only around that work, so a command that fails on its arguments writes nothing.
Handlers import the library inside their body: ``asrdistill.cli`` itself imports no torch (a graph build's memory
is its own).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

Work = Callable[[], "int | None"]  # a command's work: its exit status (None: 0)
Handler = Callable[[argparse.Namespace], Work]


@dataclasses.dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call; ``exists`` ("folder", "file" or "path": either) marks an input that must exist
    before the command starts (checked by ``main``: "no such folder: PATH")."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]
    exists: str | None = None

    def __init__(self, *flags: str, exists: str | None = None, **kwargs: Any) -> None:
        if exists not in (None, "folder", "file", "path"):
            raise ValueError(f"Arg {flags}: exists must be 'folder', 'file' or 'path', got {exists!r}")
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "exists", exists)

    @property
    def dest(self) -> str:
        name = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return self.kwargs.get("dest") or name.lstrip("-").replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: name, one-line help, arguments, handler, and the argument naming the folder it writes."""

    name: str
    help: str
    handler: Handler
    args: tuple[Arg, ...]
    log_dir: str | None  # the argument whose folder gets log/<name>.log; None: the command only reads or prints
    config: bool  # takes --config/--set (and configures its workers from the config's executor section)
    threads: bool  # takes --threads (torch threads of this process)
    query: bool  # prints a value for scripts: no command-line echo, no worker configuration
    stage: str  # the module that declares it (asrdistill.cli.<stage>)


COMMANDS: dict[str, Command] = {}  # in registration order: the order of ``asrdistill --help``


def command(
    name: str,
    help: str,
    *,
    args: Sequence[Arg] = (),
    log_dir: str | None = None,
    config: bool = False,
    threads: bool = False,
    query: bool = False,
) -> Callable[[Handler], Handler]:
    """Register the decorated handler as ``asrdistill NAME`` with these arguments."""

    def register(handler: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(
                f"command {name!r} registered twice ({COMMANDS[name].handler.__module__}, {handler.__module__})"
            )
        COMMANDS[name] = Command(name, help, handler, tuple(args), log_dir, config, threads, query, handler.__module__)
        return handler

    return register


FORCE = Arg("--force", action="store_true", help="redo even if the output is up to date")
CONFIG = (
    Arg(
        "--config",
        type=Path,
        exists="file",
        help="recipe YAML (the section this step reads; default: none, the dataclass defaults)",
    ),
    Arg(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field (repeatable; over the YAML, under the flags typed here; default: none)",
    ),
)


def threads_arg(has_nj: bool) -> Arg:
    """``--threads``, whose default (see ``_set_threads`` in ``asrdistill.cli``) depends on ``--nj`` where there is
    one."""
    shared = (
        "the cores shared among --nj workers or the node's torchrun ranks"
        if has_nj
        else "the cores, shared among the node's torchrun ranks if any"
    )
    return Arg(
        "--threads", type=int, default=0, metavar="N", help=f"torch threads of this process (default: 0, {shared})"
    )


def add_to(sub: argparse._SubParsersAction, cmd: Command, formatter: type[argparse.HelpFormatter]) -> None:
    """The subparser of ``cmd``: its arguments, then --threads and --config/--set where it takes them."""
    sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, formatter_class=formatter)
    sp.set_defaults(command_spec=cmd)
    args = list(cmd.args)
    if cmd.threads:
        args.append(threads_arg(any("--nj" in a.flags for a in args)))
    if cmd.config:
        args.extend(CONFIG)
    for a in args:
        sp.add_argument(*a.flags, **a.kwargs)


def check_inputs(args: argparse.Namespace, specs: Sequence[Arg]) -> None:
    """Every input path declared among ``specs`` (``Arg(exists=...)``) exists, before anything is written."""
    for a in specs:
        if a.exists is None:
            continue
        value = getattr(args, a.dest)
        for path in value if isinstance(value, list) else [value]:
            if path is None:
                continue
            path = Path(path)
            if a.exists == "folder" and not path.is_dir():
                raise FileNotFoundError(f"not a folder: {path}" if path.exists() else f"no such folder: {path}")
            if a.exists == "file" and not path.is_file():
                raise FileNotFoundError(f"not a file: {path}" if path.exists() else f"no such file: {path}")
            if a.exists == "path" and not path.exists():
                raise FileNotFoundError(f"no such file or folder: {path}")


def check_device(device: str | None, where: str) -> None:
    """A CUDA device without a usable GPU is an error here, not a traceback deep inside torch."""
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"{where}: {device!r} asked for, but no CUDA GPU is available "
                "(torch.cuda.is_available() is False); use cpu"
            )


def section(args: argparse.Namespace, name: str, cls: type, flags: Mapping[str, Any] | None = None) -> Any:
    """Section ``name`` of ``--config`` into ``cls``: YAML < ``--set`` < the flags typed (None: not typed).

    A config with a ``device`` field is checked here (a CUDA device needs a GPU).
    """
    from asrdistill.config import load_section

    cfg = load_section(args.config, name, cls, args.set, flags=flags or {})
    check_device(getattr(cfg, "device", None), f"{type(cfg).__name__}.device")
    return cfg


def runtime_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The worker count and device typed on the command line, for a config with ``nj`` and ``device`` fields."""
    return {"nj": args.nj, "device": args.device}
