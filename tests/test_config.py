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
    conf.write_text("train:\n  epochs: 5\n  temps: [1, 5]\n  inner: {depth: 4}\nother:\n  x: 1\n")
    cfg = load_section(conf, "train", Cfg, ["train.lr=0.5", "train.flag=true", "other.x=2"])
    assert cfg.epochs == 5 and cfg.lr == 0.5 and cfg.flag is True
    assert cfg.temps == [1.0, 5.0] and cfg.inner.depth == 4
    assert to_dict(cfg)["inner"] == {"depth": 4}


def test_missing_section_gives_defaults(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("other: {}\n")
    assert load_section(conf, "train", Cfg) == Cfg()


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  epochz: 5\n")
    with pytest.raises(ValueError, match=r"c.yaml:train.*epochz"):
        load_section(conf, "train", Cfg)


def test_bad_override_syntax():
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["epochs=3"])
