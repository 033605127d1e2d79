"""Consistent augmentation for online distillation: one perturbed input that the student and its teachers share.

Beyer et al. (2022), "Knowledge distillation: a good teacher is patient and consistent": distillation is function
matching, and it works best when the teachers score exactly the input the student sees, perturbed aggressively
(mixup), so that the student is taught the teachers' function around and between the training frames, not only
at them. The trainer applies :func:`augment` once per minibatch; its one output is what the student and the online
teachers both receive, so they never see different inputs. Cached soft targets were computed on the clean input:
augmentation needs ``distill.source='online'``.

Perturbations of the spliced, CMVN-normalised windows ``(B, W * D)`` (``W`` frames of ``D`` log-mel fbanks):

* frequency masking (SpecAugment, Park et al. 2019): per window, ``freq_masks`` bands of up to ``freq_mask``
  consecutive mel channels set to 0 (the CMVN mean) on all ``W`` frames;
* mixup of windows (Zhang et al. 2018): ``lam * x_i + (1 - lam) * x_p(i)``, ``lam ~ Beta(alpha, alpha)`` per frame or
  per batch, ``p`` a random permutation of the batch.

No mel-axis warp (VTLP): on CMVN-normalised channels an interpolation between neighbours is not a warp of the
spectrum (each channel has its own mean and scale); it belongs before the features, in the waveform.

Every draw comes from a generator keyed by ``(seed, epoch, rank, batch number)``, as the data order is: a run resumed
mid-epoch augments its remaining batches exactly as an uninterrupted run does, with nothing to add to the checkpoint,
and CPU and GPU draw the same augmentation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from asrdistill.data.frames import Batch

__all__ = ["AugmentConfig", "Mix", "augment", "mixed_cross_entropy"]

_STREAM = 3  # FrameStream draws its shard order with 1 and its buffers' frame order with 2 in this place of the key


@dataclass
class AugmentConfig:
    """Consistent augmentation (section ``train.distill.augment``; online teachers only); off by default."""

    mixup_alpha: float = 0.0  # lam ~ Beta(alpha, alpha); 0: no mixup (1: lam uniform; Beyer et al. mix aggressively)
    mixup_per: str = "frame"  # "frame": a lam and a partner per frame; "batch": one lam for the whole batch
    freq_mask: int = 0  # widest band of mel channels masked (SpecAugment's F); 0: no masking
    freq_masks: int = 1  # bands masked per window

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mixup_alpha) and self.mixup_alpha >= 0):
            raise ValueError(f"distill.augment.mixup_alpha must be >= 0 (0: off), got {self.mixup_alpha}")
        if self.mixup_per not in ("frame", "batch"):
            raise ValueError(f"distill.augment.mixup_per must be 'frame' or 'batch', got {self.mixup_per!r}")
        if self.freq_mask < 0 or self.freq_masks < 1:
            raise ValueError(
                f"distill.augment: freq_mask must be >= 0 (0: off) and freq_masks >= 1, "
                f"got {self.freq_mask} and {self.freq_masks}"
            )

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.freq_mask > 0


@dataclass
class Mix:
    """The mixup of a batch: input ``i`` is ``weight[i] * x[i] + (1 - weight[i]) * x[partner[i]]``."""

    partner: Tensor  # (B,) int64
    weight: Tensor  # (B,) float32


def augment(
    batch: Batch, config: AugmentConfig | None, key: tuple[int, int, int, int], window: int
) -> tuple[Batch, Mix | None]:
    """``batch`` with its windows perturbed by ``config``, and the mixup applied (None without mixup).

    ``key`` is (seed, epoch, rank, batch number) and decides every draw; ``window`` is the number of spliced frames
    per row. Labels and cached soft targets are left as they are: the hard loss of a mixed input is
    :func:`mixed_cross_entropy`. ``batch`` itself is not modified.
    """
    if config is None or not config.active:
        return batch, None
    rng = np.random.default_rng([*key[:3], _STREAM, key[3]])
    x = batch.x
    b = x.shape[0]
    d = x.shape[1] // window
    if config.freq_mask > 0:
        keep = torch.from_numpy(_kept_channels(rng, b, d, config.freq_mask, config.freq_masks))
        x = (x.view(b, window, d) * keep.to(x.device, x.dtype)[:, None, :]).view(b, -1)  # (B, W, D) -> (B, W * D)
    mix = None
    if config.mixup_alpha > 0:
        partner = torch.from_numpy(rng.permutation(b)).to(x.device)
        lam = rng.beta(config.mixup_alpha, config.mixup_alpha, size=b if config.mixup_per == "frame" else 1)
        weight = torch.from_numpy(np.broadcast_to(lam, (b,)).astype(np.float32)).to(x.device)
        w = weight.to(x.dtype)[:, None]
        x = w * x + (1 - w) * x[partner]
        mix = Mix(partner, weight)
    return dataclasses.replace(batch, x=x), mix


def _kept_channels(rng: np.random.Generator, b: int, d: int, widest: int, bands: int) -> np.ndarray:
    """(b, d) 1.0 for each window's kept channels, 0.0 in its ``bands`` masked bands (widths uniform in 0..widest)."""
    width = np.minimum(rng.integers(0, widest + 1, size=(b, bands)), d)
    start = rng.integers(0, d - width + 1)
    channel = np.arange(d)
    masked = ((channel >= start[..., None]) & (channel < (start + width)[..., None])).any(axis=1)
    return (~masked).astype(np.float32)


def mixed_cross_entropy(logits: Tensor, labels: Tensor, mix: Mix) -> Tensor:
    """Mean over frames of ``lam * CE(y_i) + (1 - lam) * CE(y_p(i))``: the hard loss of mixed inputs.

    A mixed window is neither of its frames, so neither label describes it alone; weighting the two labels as the
    inputs were weighted is the cross-entropy against the same convex combination of their one-hot targets (mixup's
    own loss, Zhang et al. 2018). Chosen over refusing ``hard_weight > 0`` with mixup: the default student keeps
    half its loss on the labels, and this keeps that term meaningful rather than forcing a second change.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    own = logp.gather(1, labels[:, None])[:, 0]
    other = logp.gather(1, labels[mix.partner][:, None])[:, 0]
    return -(mix.weight * own + (1 - mix.weight) * other).mean()
