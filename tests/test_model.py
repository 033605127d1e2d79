"""FrameDNN presets, shapes, and checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from asrdistill.nnet.model import FrameDNN, ModelConfig, load_model

torch.set_num_threads(1)


def test_paper_preset_has_84_4m_parameters():
    with torch.device("meta"):  # no memory for 84M weights
        model = FrameDNN(ModelConfig("paper"), input_dim=26 * 40, num_classes=14_000)
    assert model.num_params() == 84_412_080  # paper: 84.4M
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 8


def test_presets_and_overrides():
    assert (ModelConfig().hidden_layers, ModelConfig().hidden_dim) == (3, 512)
    assert (ModelConfig("paper", hidden_dim=1024).hidden_layers, ModelConfig("paper", hidden_dim=1024).hidden_dim) == (
        8,
        1024,
    )
    with pytest.raises(ValueError, match="preset must be one of"):
        ModelConfig("huge")
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)


def test_forward_shape_and_dropout_only_in_training():
    torch.manual_seed(0)
    model = FrameDNN(ModelConfig("tiny", dropout=0.5), input_dim=26 * 40, num_classes=11)
    x = torch.randn(7, 26 * 40)
    assert model(x).shape == (7, 11)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_load_model_round_trip_and_bad_file(tmp_path):
    model = FrameDNN(ModelConfig("tiny"), input_dim=12, num_classes=5)
    torch.save({**model.describe(), "model": model.state_dict()}, tmp_path / "best.pt")
    loaded = load_model(tmp_path / "best.pt")
    x = torch.randn(3, 12)
    torch.testing.assert_close(loaded(x), model(x))
    assert not loaded.training
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a usable FrameDNN checkpoint"):
        load_model(tmp_path / "junk.pt")
