"""The CLI's surface (issue 23): a config field is replaced only by a flag the user typed; inputs come before
outputs; every argument has help showing its default; a missing input is named plainly; a command that fails on its
arguments writes nothing."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from asrdistill import cli
from asrdistill.nnet.targets import train_config

# (flag, its value, TrainConfig field (dotted), YAML value): every train-data flag that names a ``train`` field
TRAIN_FLAGS = [
    ("--temperature", "5", "distill.temperature", 3.0),
    ("--hard-weight", "0.7", "distill.hard_weight", 0.2),
    ("--seed", "7", "seed", 11),
    ("--device", "cpu", "device", "cuda"),  # cuda in the YAML is never used here: the config is only built
    ("--fraction", "0.25", "data_fraction", 0.5),
]


def _train_cfg(tmp_path, field: str, yaml_value, argv: list[str]):
    """The TrainConfig that ``asrdistill train`` builds from a YAML setting ``field`` and the typed ``argv``."""
    section, _, key = field.rpartition(".")
    value = {key: yaml_value}
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  " + (f"{section}: {value}" if section else f"{key}: {yaml_value}") + "\n")
    args = cli.build_parser().parse_args(
        [
            "train",
            "--config",
            str(conf),
            "--feats",
            "f",
            "--labels",
            "l",
            "--train-set",
            "t",
            "--dev-set",
            "d",
            "--soft",
            "s",
            "--out",
            "o",
            *argv,
        ]
    )
    flags = {
        "seed": args.seed,
        "device": args.device,
        "data_fraction": args.fraction,
        "distill.temperature": args.temperature,
        "distill.hard_weight": args.hard_weight,
    }
    cfg = train_config(
        args.config,
        args.role,
        args.set,
        feats=args.feats,
        labels=args.labels,
        train_set=args.train_set,
        dev_set=args.dev_set,
        soft=args.soft,
        flags=flags,
    )
    for name in field.split("."):
        cfg = getattr(cfg, name)
    return cfg


@pytest.mark.parametrize("flag,value,field,yaml_value", TRAIN_FLAGS)
def test_a_flag_left_out_keeps_the_yaml_value(flag, value, field, yaml_value, tmp_path):
    assert _train_cfg(tmp_path, field, yaml_value, []) == yaml_value


@pytest.mark.parametrize("flag,value,field,yaml_value", TRAIN_FLAGS)
def test_a_typed_flag_replaces_the_yaml_and_set(flag, value, field, yaml_value, tmp_path):
    typed = type(yaml_value)(value)
    assert _train_cfg(tmp_path, field, yaml_value, [flag, value]) == typed
    assert _train_cfg(tmp_path, field, yaml_value, ["--set", f"train.{field}={yaml_value}", flag, value]) == typed


def test_set_replaces_the_yaml_when_no_flag_is_typed(tmp_path):
    assert _train_cfg(tmp_path, "distill.temperature", 3.0, ["--set", "train.distill.temperature=4"]) == 4.0


@pytest.mark.parametrize("command,section", [("mono", "mono"), ("tri", "tri"), ("align", "align")])
@pytest.mark.parametrize("flag,field,value,yaml_value", [("--nj", "nj", "3", 5), ("--device", "device", "cpu", "x")])
def test_aligner_runtime_flags_replace_the_config_only_when_typed(
    command, section, flag, field, value, yaml_value, tmp_path
):
    from asrdistill.aligner.align import AlignConfig
    from asrdistill.aligner.mono import MonoConfig
    from asrdistill.aligner.triphone import TriConfig
    from asrdistill.cli.common import runtime_flags
    from asrdistill.config import load_section

    cls = {"mono": MonoConfig, "tri": TriConfig, "align": AlignConfig}[section]
    conf = tmp_path / "c.yaml"
    conf.write_text(f"{section}:\n  {field}: {yaml_value}\n")
    positionals = {"mono": 4, "tri": 5, "align": 5}[command]
    parser = cli.build_parser()
    for argv, expected in (([], yaml_value), ([flag, value], type(yaml_value)(value))):
        args = parser.parse_args([command, "--config", str(conf), *["p"] * positionals, *argv])
        assert getattr(load_section(conf, section, cls, args.set, flags=runtime_flags(args)), field) == expected


def test_evaluate_nj_replaces_decode_nj_only_when_typed(tmp_path):
    from asrdistill.config import load_section
    from asrdistill.decoding.decode import DecodeConfig

    conf = tmp_path / "c.yaml"
    conf.write_text("decode:\n  nj: 5\n")
    parser = cli.build_parser()
    base = [
        "evaluate",
        "--config",
        str(conf),
        "--feats",
        "f",
        "--labels",
        "l",
        "--train-set",
        "t",
        "--dev-set",
        "d",
        "--test-set",
        "e",
        "--data",
        "x",
        "sys",
    ]
    for argv, expected in (([], 5), (["--nj", "3"], 3)):
        args = parser.parse_args([*base, *argv])
        assert load_section(conf, "decode", DecodeConfig, args.set, flags={"nj": args.nj}).nj == expected


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_import_lhotse_takes_input_before_output_like_its_siblings():
    for command, first, last in (
        ("import-lhotse", "manifests", "out"),
        ("export-lhotse", "data_dir", "out"),
        ("import-data-dir", "src", "out"),
    ):
        positionals = [a.dest for a in _subparsers()[command]._actions if not a.option_strings]
        assert positionals[0] == first and positionals[-1] == last, command


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_argument_has_help_and_shows_its_default(command):
    sp = _subparsers()[command]
    for action in sp._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = sp.formatter_class("x")._get_help_string(action)
        assert text, (command, action.dest)
        takes_value = not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        optional = action.option_strings or action.nargs in ("?", "*")
        if takes_value and optional and not action.required:
            assert "default" in text, (command, action.dest, text)


def test_top_description_is_plain_text_and_plot_threads_names_no_nj():
    assert "``" not in cli.build_parser().description and ":func:" not in cli.build_parser().description
    plot = {a.dest: a.help for a in _subparsers()["plot"]._actions}
    assert "--nj" not in plot["threads"]
    assert "--nj" in {a.dest: a.help for a in _subparsers()["decode"]._actions}["threads"]


@pytest.mark.parametrize(
    "argv,missing",
    [
        (
            ["decode", "--model", "{tmp}/nonexistent", "--corpus", "{tmp}", "--out", "{tmp}/dec"],
            "folder: {tmp}/nonexistent",
        ),
        (["features", "{tmp}/nodata", "{tmp}/fbank"], "folder: {tmp}/nodata"),
        (["export-lhotse", "{tmp}/nodata", "{tmp}/m"], "folder: {tmp}/nodata"),
        (["import-lhotse", "{tmp}/cuts.jsonl.gz", "{tmp}/data"], "file: {tmp}/cuts.jsonl.gz"),
        (["features", "--config", "{tmp}/missing.yaml", "{tmp}", "{tmp}/fbank"], "file: {tmp}/missing.yaml"),
    ],
)
def test_a_missing_input_is_named_and_nothing_is_written(argv, missing, tmp_path, caplog):
    before = set(tmp_path.rglob("*"))
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 1
    assert f"failed: no such {missing.format(tmp=tmp_path)}" in caplog.text
    assert set(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("yaml", ["features:\n  bogus: 1\n", "trian: {}\n", "executor:\n  backend: nope\n"])
def test_a_command_failing_on_its_config_leaves_no_log_folder(yaml, tmp_path, caplog):
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml)
    (tmp_path / "data").mkdir()
    assert cli.main(["features", "--config", str(conf), str(tmp_path / "data"), str(tmp_path / "fbank")]) == 1
    assert "features failed:" in caplog.text
    assert not (tmp_path / "fbank").exists()


def test_each_command_declares_the_folder_of_its_log_among_its_arguments():
    for name, command in cli.COMMANDS.items():
        dests = {a.dest for a in command.args}
        assert command.log_dir is None or command.log_dir in dests, name
    assert dataclasses.asdict(cli.COMMANDS["bundle"])["log_dir"] == "system_dir"  # the system's log, not the bundle's
