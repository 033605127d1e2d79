from dataclasses import dataclass, field
from pathlib import Path

import pytest

from asrdistill.config import load_section, parse_overrides, to_dict


@dataclass
class Inner:
    depth: int = 2


@dataclass
class Cfg:
    epochs: int = 3
    lr: float = 0.1
    name: str = "x"
    flag: bool = False
    temps: list[float] = field(default_factory=lambda: [1.0, 2.0])
    out: Path | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_section_and_overrides(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  epochs: 5\n  temps: [1, 5]\n  inner: {depth: 4}\nfeatures:\n  x: 1\n")
    cfg = load_section(conf, "train", Cfg, ["train.lr=0.5", "train.flag=true", "features.x=2"])
    assert cfg.epochs == 5 and cfg.lr == 0.5 and cfg.flag is True
    assert cfg.temps == [1.0, 5.0] and cfg.inner.depth == 4
    assert to_dict(cfg)["inner"] == {"depth": 4}


def test_missing_section_gives_defaults(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("features: {}\n")
    assert load_section(conf, "train", Cfg) == Cfg()


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  epochz: 5\n")
    with pytest.raises(ValueError, match=r"c.yaml:train.*epochz"):
        load_section(conf, "train", Cfg)


def test_bad_override_syntax():
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["epochs=3"])


def test_shipped_recipe_configs_load_into_their_dataclasses():
    """Every section of every recipe config is valid for the tool that reads it (typos fail here, not mid-run)."""
    from asrdistill.aligner.align import AlignConfig
    from asrdistill.aligner.mono import MonoConfig
    from asrdistill.aligner.tree import TreeConfig
    from asrdistill.aligner.triphone import TriConfig
    from asrdistill.config import read_yaml
    from asrdistill.data.augment import AugmentConfig
    from asrdistill.data.features import FbankConfig
    from asrdistill.data.lexicon import LexiconConfig
    from asrdistill.decoding.decode import DecodeConfig
    from asrdistill.decoding.hclg import GraphConfig
    from asrdistill.decoding.lm import LmConfig
    from asrdistill.evaluate import EvalConfig
    from asrdistill.nnet.ensemble import EnsembleConfig
    from asrdistill.nnet.specialists import SpecialistConfig
    from asrdistill.nnet.targets import train_config

    tools = {
        "features": FbankConfig,
        "augment": AugmentConfig,
        "lexicon": LexiconConfig,
        "mono": MonoConfig,
        "align": AlignConfig,
        "tree": TreeConfig,
        "tri": TriConfig,
        "lm": LmConfig,
        "graph": GraphConfig,
        "decode": DecodeConfig,
        "evaluate": EvalConfig,
        "ensemble": EnsembleConfig,
        "specialists": SpecialistConfig,
    }
    recipe_keys = {
        "corpus_subsets",
        "train_set",
        "dev_set",
        "test_set",
        "num_teachers",
        "student_seeds",
        "temperatures",
        "hard_weights",
        "fraction",
        "hours",
        "corpus_seed",
        "num_speakers",
        "dev_fraction",
        "test_fraction",
        "lm_sentences",
    }
    confs = sorted((Path(__file__).parents[1] / "recipes").glob("*/conf/*.yaml"))
    assert len(confs) >= 3
    for conf in confs:
        data = read_yaml(conf)
        assert set(data) <= set(tools) | {"recipe", "train", "student", "fraction", "compression"}, conf
        # compression: read by recipes/librispeech/compression.sh, like recipe by run.sh
        assert set(data.get("compression", {})) <= {"enabled", "sizes", "seeds", "decode"}, conf
        assert recipe_keys <= set(data["recipe"]) <= recipe_keys | {"vocab_size"}, conf  # vocab_size: optional
        for section, cls in tools.items():
            load_section(conf, section, cls)
        budgets = set()
        for role in (None, "student", "fraction"):
            cfg = train_config(
                conf,
                role,
                [],
                feats="f",
                labels="l",
                train_set="t",
                dev_set="d",
                soft="s",
                flags={"seed": 1, "distill.temperature": 2.0},
            )
            assert cfg.distill.temperature == 2.0
            budgets.add((cfg.epochs, cfg.patience, cfg.newbob_threshold, cfg.stop_threshold, cfg.schedule))
        assert len(budgets) == 1, (conf, budgets)  # one stopping rule for every DNN of a recipe


@pytest.mark.parametrize(
    "body, message",
    [
        ("method: median", r"evaluate: evaluate.method must be one of arithmetic, geometric, got 'median'"),
        ("decode: 1", r"evaluate.decode: expected a boolean \(true or false\), got 1"),
    ],
)
def test_evaluate_settings_are_checked_naming_file_key_and_range(tmp_path, body, message):
    from asrdistill.config import load_section
    from asrdistill.evaluate import EvalConfig

    cfg = tmp_path / "conf.yaml"
    cfg.write_text(f"evaluate:\n  {body}\n")
    with pytest.raises(ValueError, match=rf"^{cfg}:{message}"):
        load_section(cfg, "evaluate", EvalConfig)
    with pytest.raises(ValueError, match=r"evaluate.decode must be true or false, got 'no'"):
        EvalConfig(decode="no")  # built in Python, past the YAML coercion
