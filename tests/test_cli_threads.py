"""Every CLI command that runs torch work sets the torch thread count explicitly (``--threads``, else the cores
shared among ``--nj`` workers or torchrun ranks), so jobs that run side by side do not each take every core."""

from __future__ import annotations

import argparse
import dataclasses
import os

import pytest
import torch

from asrdistill import cli

# commands whose work runs torch in their own process (mono, tri and align set one thread themselves)
TORCH_COMMANDS = [
    "features",
    "cmvn",
    "train",
    "ensemble",
    "evaluate",
    "bundle",
    "decode",
    "export-ark",
    "plot",
    "specialists-groups",
    "specialists-train",
    "specialists-eval",
    "specialists-cache",
]


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", TORCH_COMMANDS)
def test_torch_commands_take_threads(command):
    options = {o for a in _commands()[command]._actions for o in a.option_strings}
    assert "--threads" in options


@pytest.mark.parametrize(
    "command,argv",
    [
        ("decode", ["--model", "m", "--corpus", "c", "--out", "o"]),
        ("export-ark", ["--out", "o"]),
        (
            "specialists-eval",
            ["--feats", "f", "--labels", "l", "--train-set", "t", "--dev-set", "d", "--generalist", "g", "--out", "o"],
        ),
    ],
)
def test_main_sets_the_thread_count_before_the_command_runs(command, argv, monkeypatch, tmp_path):
    seen = []
    spec = cli.COMMANDS[command]
    monkeypatch.setitem(
        cli.COMMANDS,
        command,
        dataclasses.replace(spec, handler=lambda args: lambda: seen.append(torch.get_num_threads())),
    )
    monkeypatch.chdir(tmp_path)
    for folder in ("m", "c", "f", "l", "g"):  # the inputs must exist
        (tmp_path / folder).mkdir()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    before = torch.get_num_threads()
    try:
        assert cli.main([command, *argv, "--threads", "1"]) == 0
        assert cli.main([command, *argv, "--threads", "3"]) == 0
        assert cli.main([command, *argv]) == 0  # default: the cores shared among --nj workers (decode: 1 -> all 6)
        assert seen == [1, 3, 6]
        if command == "decode":
            assert cli.main([command, *argv, "--nj", "2"]) == 0 and seen[-1] == 3
    finally:
        torch.set_num_threads(before)
