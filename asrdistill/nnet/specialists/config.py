"""The ``specialists`` section of a recipe config: one dataclass for the groups, training and combination stages."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SpecialistConfig"]


@dataclass
class SpecialistConfig:
    """Section ``specialists`` of a recipe config."""

    enabled: bool = False  # run the recipe's optional specialist stages
    # groups
    num_groups: int = 8  # K of the K-means over senones
    max_group_size: int = 40  # clusters larger than this are split again by K-means
    num_specialists: int = 0  # train specialists for this many groups, those covering most dev errors (0: all)
    kmeans_iters: int = 50
    seed: int = 0  # K-means initialisation and the specialists' data order
    # training
    targets: str = "hard"  # "hard": labels; "soft": the generalist's targets merged to group + dustbin
    temperature: float = 2.0  # soft: temperature of the generalist's targets
    hard_weight: float = 0.5  # soft: weight of the hard-label term
    group_fraction: float = 0.5  # share of each batch drawn from the group (paper: half)
    epochs: int = 2  # passes over the group's training frames
    lr: float = 1e-3  # Adam, starting from the generalist's weights
    # combination
    top_classes: int = 1  # the generalist's top classes that activate specialists (paper: 1)
    combine_steps: int = 10  # iterations of the KL minimisation per frame

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.max_group_size < 2 or self.num_specialists < 0 or self.kmeans_iters < 1:
            raise ValueError(
                "specialists: num_groups >= 1, max_group_size >= 2, num_specialists >= 0 and "
                "kmeans_iters >= 1 are required"
            )
        if self.targets not in ("hard", "soft"):
            raise ValueError(f"specialists.targets must be 'hard' or 'soft', got {self.targets!r}")
        if self.temperature <= 0 or not 0.0 <= self.hard_weight <= 1.0:
            raise ValueError("specialists: temperature must be > 0 and hard_weight in [0, 1]")
        if not 0.0 < self.group_fraction < 1.0:
            raise ValueError(f"specialists.group_fraction must be in (0, 1), got {self.group_fraction}")
        if self.epochs < 1 or self.lr <= 0 or self.top_classes < 1 or self.combine_steps < 1:
            raise ValueError("specialists: epochs, lr, top_classes and combine_steps must be positive")

    def group_fields(self) -> dict:
        return {
            k: getattr(self, k) for k in ("num_groups", "max_group_size", "num_specialists", "kmeans_iters", "seed")
        }

    def train_fields(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("targets", "temperature", "hard_weight", "group_fraction", "epochs", "lr", "seed")
        }
