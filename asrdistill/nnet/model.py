"""Frame-level DNN acoustic model: a context window of fbank frames -> senone logits.

As in Hinton et al. (2015) section 4: the input is 26 spliced frames of 40-dim
log-mel fbank (20 past, the current one, 5 future: 1040 values), followed by
ReLU hidden layers and a linear layer over the senones. The ``paper`` preset
(8 x 2560 with 14,000 senones) has 84.4M parameters, as the paper reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from asrdistill.fileio import load_weights

__all__ = ["ModelConfig", "PRESETS", "FrameDNN", "autocast", "load_model"]

# preset -> (hidden_layers, hidden_dim)
PRESETS: dict[str, tuple[int, int]] = {
    "paper": (8, 2560),  # 84.4M parameters with 1040 inputs and 14,000 senones
    "cpu": (3, 512),  # trains at tens of thousands of frames/s on 2 CPU cores
    "tiny": (1, 32),  # tests
}


@dataclass
class ModelConfig:
    """Architecture; ``hidden_layers``/``hidden_dim`` left ``None`` come from ``preset``."""

    preset: str = "cpu"
    hidden_layers: int | None = None
    hidden_dim: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        layers, dim = PRESETS[self.preset]
        self.hidden_layers = layers if self.hidden_layers is None else self.hidden_layers
        self.hidden_dim = dim if self.hidden_dim is None else self.hidden_dim
        if self.hidden_layers < 1 or self.hidden_dim < 1:
            raise ValueError(
                f"model: hidden_layers and hidden_dim must be >= 1, got {self.hidden_layers}, {self.hidden_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


class FrameDNN(nn.Module):
    """``(N, input_dim)`` spliced, normalised frames -> ``(N, num_classes)`` logits."""

    def __init__(self, config: ModelConfig, input_dim: int, num_classes: int):
        super().__init__()
        self.config = config
        self.input_dim = input_dim
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        dim = input_dim
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(dim, config.hidden_dim), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            dim = config.hidden_dim
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.hidden(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> dict:
        """Everything needed to rebuild this model (stored in checkpoints)."""
        return {
            "model_config": dataclasses.asdict(self.config),
            "input_dim": self.input_dim,
            "num_classes": self.num_classes,
        }


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op elsewhere (CPU bf16 matmuls are slower than fp32)."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> FrameDNN:
    """Rebuild a :class:`FrameDNN` from a checkpoint written by ``asrdistill.nnet.train`` (``best.pt``, ``last.pt``)."""
    path = Path(path)
    ckpt = load_weights(path, "FrameDNN checkpoint")
    try:
        model = FrameDNN(ModelConfig(**ckpt["model_config"]), int(ckpt["input_dim"]), int(ckpt["num_classes"]))
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a usable FrameDNN checkpoint: {e}") from e
    return model.to(device).eval()
