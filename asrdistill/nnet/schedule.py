"""A training run's schedule: the learning rate at each step (warmup, then newbob, cosine or constant) and, at
the end of each epoch, the best model kept, newbob halving and the stopping rules."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Sequence

from asrdistill.nnet.checkpoint import save_best
from asrdistill.nnet.metrics import log_metrics

if TYPE_CHECKING:
    from asrdistill.nnet.train import TrainState, _Run

log = logging.getLogger(__name__)


def learning_rate(run: _Run, state: TrainState) -> float:
    """The learning rate of the next step: ``train.lr`` scaled by newbob's halvings, warmup and cosine decay."""
    c = run.config
    lr = c.lr * state.lr_scale
    if c.warmup_steps > 0:
        lr *= min(1.0, (state.step + 1) / c.warmup_steps)
    if c.schedule == "cosine":
        total = max(1, c.epochs * run.steps_per_epoch - c.warmup_steps)
        progress = min(1.0, max(0, state.step - c.warmup_steps) / total)
        lr *= 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def end_epoch(run: _Run, state: TrainState, dev: dict, measured: dict) -> None:
    """Record the epoch (with ``measured``: closeness to the reference), keep the best model, apply newbob halving
    and early stopping, and record what ended training in the last epoch's record; next epoch."""
    c = run.config
    gain = dev["acc"] - state.best_dev_acc
    record = state.history[-1]
    record.update(
        {
            "step": state.step,
            "train_loss": state.epoch_loss_sum / max(1, state.epoch_frames),
            "epoch_frames": state.epoch_frames,  # all ranks; with train.transfer, the transfer sets' too
            "dev_loss": dev["loss"],
            "dev_acc": dev["acc"],
            "lr_scale": state.lr_scale,
            **measured,
        }
    )
    if gain > 0:
        state.best_dev_acc, state.best_epoch, state.bad_epochs = dev["acc"], state.epoch, 0
        save_best(run, state, dev)
    else:
        state.bad_epochs += 1
    halving = state.lr_scale < 1.0
    if c.schedule == "newbob" and c.stop_threshold > 0 and halving and gain < c.stop_threshold:
        state.stopped, state.end_reason = True, "newbob_stop"
        log.info("newbob stop after epoch %d: dev gain %.4f < %g while halving", state.epoch, gain, c.stop_threshold)
    if (
        c.schedule == "newbob"
        and state.epoch > 0
        and state.step >= c.warmup_steps
        and (gain < c.newbob_threshold or (halving and c.stop_threshold > 0))
    ):
        state.lr_scale *= 0.5
    if c.patience and state.bad_epochs >= c.patience and not state.stopped:
        state.stopped, state.end_reason = True, "patience"
        log.info("early stop after epoch %d: no dev gain for %d epochs", state.epoch, state.bad_epochs)
    if not state.stopped and state.epoch + 1 >= c.epochs:
        state.end_reason = "budget"
    if state.end_reason:
        record["end"] = state.end_reason
    log_metrics(run, record)
    log.info(
        "epoch %d: train loss %.4f, dev loss %.4f, dev frame acc %.2f%% (best %.2f%% @ %d), %.0f frames/s",
        state.epoch,
        record["train_loss"],
        dev["loss"],
        100 * dev["acc"],
        100 * state.best_dev_acc,
        state.best_epoch,
        record["train_frames_per_sec"],
    )
    state.epoch += 1
    state.batches_done = 0
    state.epoch_loss_sum = 0.0
    state.epoch_frames = 0


def still_improving(history: Sequence[dict], tol: float) -> bool:
    """Whether the last epoch raised dev accuracy by more than ``tol`` above every earlier epoch: training ended
    while the model was still improving (cut off by its budget or a stopping rule), not after it had levelled."""
    accs = [r["dev_acc"] for r in history if "dev_acc" in r]
    return len(accs) > 1 and accs[-1] - max(accs[:-1]) > tol
