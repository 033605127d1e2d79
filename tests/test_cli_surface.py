"""``asrdistill --help`` and every ``asrdistill COMMAND --help`` offer the commands, options and positionals listed
in ``tests/cli_surface.json`` (written from the parser before the CLI became a package), except for the deliberate
changes in :data:`CHANGES`. A command or option lost in a refactoring fails here, not in a user's script.

After a deliberate change of the surface, add it to :data:`CHANGES` (with the reason), not to the JSON.
Regenerate the JSON only for a new baseline: ``python tests/test_cli_surface.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from asrdistill import cli

SNAPSHOT = Path(__file__).with_name("cli_surface.json")

_SYNTH = "--dev-fraction --force --help --hours --lm-sentences --nj --num-speakers --out --seed --test-fraction"
_SYNTH = [*_SYNTH.split(), "--vocab-size", "-h"]
_TRAIN = "--config --dev-set --device --feats --force --fraction --hard-weight --help --labels --online --out --role"
_TRAIN = [*_TRAIN.split(), "--seed", "--set", "--soft", "--temperature", "--threads", "--train-set", "-h"]
# The surface changes this project made on purpose since the snapshot: (command, field) -> (before, after).
CHANGES: dict[tuple[str, str], tuple[list[str], list[str]]] = {
    # issue 23: input before output, as export-lhotse IN OUT and import-data-dir SRC OUT (swapped, the log went
    # inside the .jsonl.gz path)
    ("import-lhotse", "positionals"): (["out", "manifests"], ["manifests", "out"]),
    # issue 27: unlabelled audio for the transfer set (synthesized; streamed with the training set by students)
    ("synth-corpus", "options"): (_SYNTH, sorted([*_SYNTH, "--transfer-hours"])),
    ("train", "options"): (_TRAIN, sorted([*_TRAIN, "--transfer"])),
}
# Commands added since the snapshot: name -> its listing.
ADDED: dict[str, dict[str, list[str]]] = {
    # issue 25: speed/volume/noise/reverberation copies of a data dir, as new utterances and speakers
    "augment-data-dir": {
        "options": ["--config", "--force", "--help", "--nj", "--set", "--threads", "-h"],
        "positionals": ["data_dir", "out"],
    },
    # issue 25: the voice-shift test set of the synthetic corpus
    "synth-shift-set": {
        "options": ["--corpus", "--force", "--help", "--nj", "--num-speakers", "--seed", "--utterances", "-h"],
        "positionals": [],
    },
    # issue 26: a bundle whose network runs in ONNX Runtime, fp32 or int8
    "export-bundle": {"options": ["--force", "--help", "--int8", "--threads", "-h"], "positionals": ["bundle", "out"]},
    # issue 27: the ensemble labels extra, unlabelled audio (soft targets and its decisions) for a transfer set
    "label-transfer": {
        "options": sorted([*_TRAIN, "--ensemble", "--temperatures", "--transfer-set"]),
        "positionals": [],
    },
}


def _listing(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Option strings (sorted) and positional names (in their order) of one parser."""
    actions = [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    return {
        "options": sorted(o for a in actions for o in a.option_strings),
        "positionals": [a.dest for a in actions if not a.option_strings],
    }


def cli_surface(parser: argparse.ArgumentParser) -> dict:
    """``{"asrdistill": listing, "commands": {name: listing}}`` of the ``asrdistill`` parser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"asrdistill": _listing(parser), "commands": {name: _listing(p) for name, p in sorted(sub.choices.items())}}


def test_cli_offers_the_snapshot_surface_except_the_listed_changes():
    expected = copy.deepcopy(json.loads(SNAPSHOT.read_text(encoding="utf-8")))
    for (command, field), (before, after) in CHANGES.items():
        assert expected["commands"][command][field] == before, (command, field)  # the change is still a change
        expected["commands"][command][field] = after
    for command, listing in ADDED.items():
        assert command not in expected["commands"], command  # still new
        expected["commands"][command] = listing
    actual = cli_surface(cli.build_parser())
    assert actual["asrdistill"] == expected["asrdistill"]
    assert sorted(actual["commands"]) == sorted(expected["commands"])
    for name, listing in expected["commands"].items():
        assert actual["commands"][name] == listing, name


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(cli_surface(cli.build_parser()), indent=1) + "\n", encoding="utf-8")
