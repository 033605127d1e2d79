"""Train a frame-level DNN acoustic model: hard labels (baseline, teachers) or distillation (student).

One entry point for every DNN of the recipe (icefall layout, read top to
bottom): config -> compute_loss -> train_one_epoch -> train (the CLI is ``asrdistill train``). Beside it:
:mod:`~asrdistill.nnet.targets` (what a run learns from), :mod:`~asrdistill.nnet.schedule` (learning rate, best model,
stopping rules), :mod:`~asrdistill.nnet.checkpoint` (``last.pt``, ``best.pt``, resume checks, ``.train.done``),
:mod:`~asrdistill.nnet.metrics` (``log/``) and :mod:`~asrdistill.nnet.monitor` (closeness to the ensemble).
Dev frame accuracy comes from :func:`asrdistill.nnet.ensemble.frame_accuracy`.

* Data: shuffled frame minibatches from :class:`asrdistill.data.frames.FrameStream`;
  ``data_fraction < 1`` trains on a fixed, hash-chosen subset of utterances (the
  paper's section 6 used 3%), the same for every seed and for hard or soft
  training.
* Distillation: soft targets come either from cached top-k shards written by
  :func:`asrdistill.nnet.ensemble.cache_soft_targets` (``source='cached'``) or from
  teacher checkpoints run on each minibatch (``source='online'``); the loss is
  :func:`asrdistill.kd.kd_loss`. Online, ``distill.augment`` perturbs each minibatch
  once (mixup, frequency masks: :mod:`asrdistill.nnet.consistent`), and the student
  and its teachers both see that one perturbed input.
* Schedule: optional linear warmup, then newbob (halve the LR when the dev frame
  accuracy gains less than ``newbob_threshold`` in an epoch), cosine, or
  constant; early stopping after ``patience`` epochs without a dev gain;
  ``best.pt`` holds the best dev model.
* Restartable: ``last.pt`` (model, optimiser, schedule, RNG states, data
  position, counters, config) is written atomically every ``checkpoint_every``
  steps and after each epoch; rerunning the same command resumes exactly where
  the run stopped and reaches the same parameters as an uninterrupted run.
* Multi-GPU / multi-node (DDP): launch with ``torchrun --nproc-per-node N -m
  asrdistill.cli train ...`` (``run.sh --gpus N`` does). Each rank trains on its
  own equal share of every epoch's frames (:class:`FrameStream` splits by
  frames), losses and dev metrics are reduced over the ranks (each scores its
  share of dev), every rank's RNG state is checkpointed, and rank 0 writes
  behind a barrier; a resumed run must have the same number of ranks.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from asrdistill.config import from_dict
from asrdistill.data.frames import Batch, FrameConfig, FrameStream
from asrdistill.fileio import load_weights, mark_done, remove_temporaries
from asrdistill.kd import kd_loss
from asrdistill.logs import progress
from asrdistill.nnet.checkpoint import (
    barrier,
    check_resumable,
    comparable,
    finished_run,
    run_inputs,
    save_checkpoint,
    set_rng_states,
    start_over,
)
from asrdistill.nnet.consistent import AugmentConfig, Mix, augment, mixed_cross_entropy
from asrdistill.nnet.ensemble import ensemble_logprobs, frame_accuracy
from asrdistill.nnet.metrics import log_metrics, metrics_writer, truncate_metrics
from asrdistill.nnet.model import FrameDNN, ModelConfig, autocast
from asrdistill.nnet.monitor import measure, monitor_sets
from asrdistill.nnet.schedule import end_epoch, learning_rate, still_improving
from asrdistill.nnet.targets import TrainData, load_train_data, run_kind

__all__ = ["DistillConfig", "TrainConfig", "compute_loss", "train_step", "train", "run_kind", "still_improving"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- config


@dataclass
class DistillConfig:
    """Soft-target training (section ``train.distill``)."""

    temperature: float = 2.0
    hard_weight: float = 0.5  # weight of the hard-label cross-entropy; 0 = soft targets only
    source: str = "cached"  # "cached": top-k shards; "online": run the teachers on each batch
    soft_targets: str = ""  # cached: folder with soft.manifest.json written at this temperature
    teachers: list[str] = field(default_factory=list)  # online: teacher checkpoints (best.pt)
    method: str = "arithmetic"  # online: "arithmetic" or "geometric" mean of teacher posteriors
    min_fidelity: float = 0.97  # cached: warn loudly when the cache kept less of the exact soft loss
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # online: one perturbed input for all (off)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.hard_weight <= 1.0:
            raise ValueError(f"distill.hard_weight must be in [0, 1], got {self.hard_weight}")
        if self.source not in ("cached", "online"):
            raise ValueError(f"distill.source must be 'cached' or 'online', got {self.source!r}")
        if self.source == "cached" and not self.soft_targets:
            raise ValueError("distill.source='cached' needs distill.soft_targets (a folder of soft-*.tar shards)")
        if self.source == "online" and not self.teachers:
            raise ValueError("distill.source='online' needs distill.teachers (checkpoint paths)")
        if self.method not in ("arithmetic", "geometric"):
            raise ValueError(f"distill.method must be 'arithmetic' or 'geometric', got {self.method!r}")
        if self.augment.active and self.source != "online":
            raise ValueError(
                "distill.augment (mixup_alpha, freq_mask) needs distill.source='online': the soft targets cached in "
                f"distill.soft_targets ({self.soft_targets}) were computed on the clean input"
            )


@dataclass
class TrainConfig:
    """One DNN training run (section ``train`` of a recipe config)."""

    train_feats: str = ""  # folder with feats.manifest.json
    train_labels: str = ""  # folder with pdf.manifest.json (aligned with the features)
    dev_feats: str = ""
    dev_labels: str = ""
    cmvn: str = ""  # cmvn.json of the training features
    num_classes: int = 0  # senones; 0 = "num_pdfs" from the label manifest's meta
    model: ModelConfig = field(default_factory=ModelConfig)
    frames: FrameConfig = field(default_factory=FrameConfig)
    distill: DistillConfig | None = None
    transfer: list[str] = field(default_factory=list)  # distilled runs only: folders of teacher-labelled extra
    # audio (asrdistill label-transfer) streamed with the training set every epoch (asrdistill.nnet.transfer)
    data_fraction: float = 1.0  # train on this fraction of the utterances (hash-chosen, fixed)
    fraction_passes: int = 0  # passes over that subset per epoch; 0: as many as make an epoch of the
    # full data's frames, so max epochs, newbob and patience mean the same
    # number of updates as for a full-data run
    seed: int = 0  # model init and data order
    epochs: int = 10
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "newbob"  # "newbob", "cosine" or "constant"
    warmup_steps: int = 500
    newbob_threshold: float = 0.002  # halve the LR when an epoch gains less dev accuracy than this
    stop_threshold: float = 0.0  # newbob, if > 0 (Kaldi nnet1): once halving has started, halve every
    # epoch and stop when an epoch gains less than this; 0: off
    patience: int = 3  # stop after this many epochs without a dev gain (0: never)
    improve_tol: float = 0.001  # a run whose last epoch still gained more dev accuracy than this was cut off
    # while improving: flagged in its result (``still_improving``)
    reference: str = ""  # ensemble (members.txt) or system folder that each epoch's KL and top-1
    # agreement are measured against; "" for a distilled run: its own teachers
    monitor_frames: int = 20000  # frames (whole hash-chosen utterances) of dev and of train for that measure
    checkpoint_every: int = 2000  # steps between last.pt saves (and after every epoch)
    log_every: int = 100
    device: str = "auto"  # "auto", "cpu", "cuda"
    bf16: bool = True  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model
    progress: bool = True
    kind: str = ""  # the run's row in the results table; "": from the config (run_kind), e.g.
    # "sweep" for a distillation setting tried on dev (recorded, not trained on)

    def __post_init__(self) -> None:
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"train.data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.fraction_passes < 0:
            raise ValueError(f"train.fraction_passes must be >= 0 (0: automatic), got {self.fraction_passes}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"train.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("newbob", "cosine", "constant"):
            raise ValueError(f"train.schedule must be 'newbob', 'cosine' or 'constant', got {self.schedule!r}")
        if self.epochs < 1 or self.lr <= 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("train: epochs, lr, checkpoint_every and log_every must be positive")
        if self.transfer and self.distill is None:
            raise ValueError(
                "train.transfer: a transfer set carries the teachers' labels, so a hard-label run trained on it "
                "would be a student, not a baseline; give transfer sets to distilled runs only (--soft or --online)"
            )
        if self.transfer and self.data_fraction < 1.0:
            raise ValueError("train.transfer: not supported with train.data_fraction < 1 (which share of it?)")


@dataclass
class TrainState:
    """Counters and schedule state; with the RNG states, all a resumed run needs besides the tensors."""

    epoch: int = 0  # current epoch
    batches_done: int = 0  # batches of the current epoch already trained on
    step: int = 0  # optimiser steps so far
    frames: int = 0  # training frames so far (all ranks)
    epoch_loss_sum: float = 0.0  # sum over the current epoch's batches of loss * batch frames (all ranks)
    epoch_frames: int = 0  # (all ranks)
    lr_scale: float = 1.0  # newbob halvings
    best_dev_acc: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False  # early stopping fired
    end_reason: str = ""  # what ended training: "budget", "patience" or "newbob_stop"
    history: list[dict] = field(default_factory=list)  # per-epoch metrics


# --------------------------------------------------------------------------- loss


def compute_loss(
    model: nn.Module,
    batch: Batch,
    distill: DistillConfig | None,
    teachers: Sequence[nn.Module] = (),
    check_values: bool = True,
    mix: Mix | None = None,
) -> Tensor:
    """Mean loss of one minibatch: cross-entropy, or :func:`kd_loss` against the batch's or teachers' targets.

    ``batch.x`` is what the student sees, augmented or not; online teachers score that same tensor. ``mix``: the
    mixup that made it (:func:`~asrdistill.nnet.consistent.augment`), whose hard term weights both labels.
    """
    logits = model(batch.x)
    if distill is None:
        return F.cross_entropy(logits.float(), batch.y)
    if distill.source == "cached" and batch.soft_logp is not None:  # dense cache: exact up to fp16 storage
        teacher = {"teacher_probs": torch.softmax(batch.soft_logp, dim=-1)}
    elif distill.source == "cached":
        if batch.soft_idx is None or batch.soft_prob is None:
            raise ValueError("distillation from cached targets, but the batch has no soft targets")
        teacher = {"teacher_topk": (batch.soft_idx, batch.soft_prob)}
    else:
        with torch.no_grad():
            teacher = {"teacher_probs": ensemble_logprobs(teachers, batch.x, distill.temperature, distill.method).exp()}
    if mix is None:
        return kd_loss(
            logits,
            labels=batch.y,
            temperature=distill.temperature,
            hard_weight=distill.hard_weight,
            check_values=check_values,
            **teacher,
        )
    soft = kd_loss(logits, temperature=distill.temperature, hard_weight=0.0, check_values=check_values, **teacher)
    hard = mixed_cross_entropy(logits, batch.y, mix)
    return (1 - distill.hard_weight) * soft + distill.hard_weight * hard


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    distill: DistillConfig | None,
    teachers: Sequence[nn.Module] = (),
    bf16: bool = False,
    check_values: bool = True,
    mix: Mix | None = None,
) -> Tensor:
    """One optimiser step on ``batch``; returns the detached loss (no host sync)."""
    with autocast(batch.x.device, bf16):
        loss = compute_loss(net, batch, distill, teachers, check_values=check_values, mix=mix)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# --------------------------------------------------------------------------- one epoch


@dataclass
class _Run:
    """Everything a training epoch needs, built once by :func:`train`."""

    config: TrainConfig
    out_dir: Path
    model: FrameDNN  # plain module: the one saved
    net: nn.Module  # what runs: compiled and/or DDP-wrapped ``model``
    optimizer: torch.optim.Optimizer
    stream: FrameStream
    teachers: list[FrameDNN]
    device: torch.device
    bf16: bool
    rank: int
    world_size: int
    steps_per_epoch: int
    writer: object | None  # TensorBoard SummaryWriter or None
    targets: dict = field(default_factory=dict)  # identity of the distillation targets (see teacher_identity)


def train_one_epoch(run: _Run, state: TrainState) -> None:
    """Train on the rest of epoch ``state.epoch`` (from ``state.batches_done``), checkpointing on the way."""
    c = run.config
    run.net.train()
    pending = torch.zeros(2, dtype=torch.float64, device=run.device)  # loss * frames, frames since the last fold
    first_bad = torch.full((), -1, dtype=torch.int64, device=run.device)  # step of the first non-finite loss
    window = torch.zeros(2, dtype=torch.float64, device=run.device)  # loss * frames, frames since the last log
    window_start = time.perf_counter()
    frames_here = 0
    t0 = time.perf_counter()
    bar = progress(
        total=run.steps_per_epoch,
        initial=state.batches_done,
        unit="batch",
        dynamic_ncols=True,
        desc=f"epoch {state.epoch}",
        disable=not (c.progress and run.rank == 0),
        leave=False,
    )
    perturb = c.distill.augment if c.distill is not None else None
    batches = run.stream.epoch(state.epoch, skip_batches=state.batches_done)
    for batch in batches:
        if state.batches_done >= run.steps_per_epoch:  # DDP: ranks may differ by the last, partial batch
            break
        lr = learning_rate(run, state)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        n = int(batch.y.shape[0])
        check = run.device.type != "cuda" or state.step % c.log_every == 0  # value checks sync the GPU
        key = (c.seed, state.epoch, run.rank, state.batches_done)  # a resumed run draws the same augmentation
        batch, mix = augment(batch, perturb, key, c.frames.window)  # once: the student and teachers share it
        loss = train_step(run.net, run.optimizer, batch, c.distill, run.teachers, run.bf16, check, mix)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), state.step, first_bad)
        step_sums = torch.stack([loss.double() * n, torch.tensor(float(n), dtype=torch.float64, device=run.device)])
        pending += step_sums
        window += step_sums
        frames_here += n
        state.step += 1
        state.batches_done += 1
        bar.update(1)

        if state.step % c.log_every == 0:
            _check_finite(first_bad, run)
            now = time.perf_counter()
            loss_frames, window_frames = _all_sum(run, window).tolist()
            record = {
                "step": state.step,
                "epoch": state.epoch,
                "loss": loss_frames / window_frames,
                "lr": lr,
                "frames_per_sec": window_frames / (now - window_start),
            }
            bar.set_postfix(loss=f"{record['loss']:.3f}", fps=f"{record['frames_per_sec']:.0f}", lr=f"{lr:.3g}")
            log_metrics(run, record)
            window.zero_()
            window_start = now
        if state.step % c.checkpoint_every == 0:
            _check_finite(first_bad, run)
            _fold(run, state, pending)
            save_checkpoint(run, state)
    bar.close()
    _check_finite(first_bad, run)
    _fold(run, state, pending)
    elapsed = time.perf_counter() - t0
    state.history.append(
        {"epoch": state.epoch, "train_frames_per_sec": frames_here * run.world_size / max(elapsed, 1e-9)}
    )


def _all_sum(run: _Run, t: Tensor) -> Tensor:
    """``t`` summed over the DDP ranks (a copy; ``t`` itself on one rank)."""
    if run.world_size > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def _fold(run: _Run, state: TrainState, pending: Tensor) -> None:
    """Add the ranks' summed (loss * frames, frames) since the last fold to the state, identical on every rank."""
    loss_frames, frames = _all_sum(run, pending).tolist()
    state.epoch_loss_sum += loss_frames
    state.epoch_frames += int(frames)
    state.frames += int(frames)
    pending.zero_()


def _check_finite(first_bad: Tensor, run: _Run) -> None:
    if run.world_size > 1:  # every rank stops together, not just the one that saw the bad loss
        first_bad = first_bad.clone()
        dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
    step = int(first_bad.item())
    if step >= 0:
        raise FloatingPointError(
            f"non-finite training loss at step {step + 1}; stopping. The last good checkpoint "
            f"is {run.out_dir / 'last.pt'} (lower train.lr?)"
        )


# --------------------------------------------------------------------------- the run


def _setup_device(config: TrainConfig) -> tuple[torch.device, int, int]:
    """Device, rank and world size; initialises the process group under ``torchrun``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    want = config.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if world_size > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if want == "cuda" else "gloo")
        if want == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local), rank, world_size
    return torch.device(want), rank, world_size


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, out_dir: str | Path, force: bool = False) -> dict:
    """Train (or resume, or return the result of a finished run in ``out_dir``); returns final metrics.

    Writes ``out_dir/{best.pt,last.pt,train.json,log/metrics.jsonl,log/tb}`` and
    the ``.train.done`` marker. ``force`` starts from scratch.
    """
    out_dir = Path(out_dir)
    if force:
        start_over(out_dir)
    device, rank, world_size = _setup_device(config)
    _seed_everything(config.seed)
    data = load_train_data(config, out_dir, device, rank, world_size)
    finished = finished_run(out_dir, config, data.targets, rank)
    if finished is not None:
        if finished.get("kind") != run_kind(config, data.soft) and rank == 0:  # e.g. a run the recipe now calls a sweep
            finished["kind"] = run_kind(config, data.soft)
            mark_done(out_dir, "train", finished, run_inputs(config, data.targets))
        return finished
    if rank == 0:
        remove_temporaries(out_dir)  # checkpoints a killed run was writing
    if world_size > 1:
        dist.barrier()  # rank 0 may have cleared a stale run
    run, state = _setup_run(config, out_dir, data, device, rank, world_size)
    _train_epochs(run, state, data)
    return _result(run, state, data)


def _setup_run(
    config: TrainConfig, out_dir: Path, data: TrainData, device: torch.device, rank: int, world_size: int
) -> tuple[_Run, TrainState]:
    """The data stream, model and optimiser, resumed from ``last.pt`` if there is one, and the metrics writer."""
    stream = FrameStream(
        data.stream_feats,
        data.stream_labels,
        data.cmvn,
        config.frames,
        soft=data.stream_soft,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
        device=device,
        passes=data.passes,
    )
    model = FrameDNN(config.model, data.input_dim, data.num_classes).to(device)
    if world_size > 1:  # the same initial model on every rank, but each rank its own dropout masks
        torch.manual_seed(int(np.random.SeedSequence([config.seed, rank]).generate_state(1)[0]))
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run = _Run(
        config=config,
        out_dir=out_dir,
        model=model,
        net=model,  # compiled and DDP-wrapped once resumed
        optimizer=optimizer,
        stream=stream,
        teachers=data.teachers,
        device=device,
        bf16=config.bf16 and device.type == "cuda",
        rank=rank,
        world_size=world_size,
        steps_per_epoch=0,
        writer=None,
        targets=data.targets,
    )
    state = _resume(run)
    if config.compile:
        run.net = torch.compile(model)
    if world_size > 1:
        run.net = nn.parallel.DistributedDataParallel(
            run.net, device_ids=[device.index] if device.type == "cuda" else None
        )
    run.writer = metrics_writer(run, state)
    run.steps_per_epoch = _steps(run, state.epoch)
    truncate_metrics(run, state)
    log.info(
        "%s: %d parameters, %d inputs, %d senones, %d batches/epoch on %s x%d",
        out_dir,
        model.num_params(),
        data.input_dim,
        data.num_classes,
        run.steps_per_epoch,
        device,
        world_size,
    )
    return run, state


def _resume(run: _Run) -> TrainState:
    """A fresh state, or the one in ``last.pt`` with the model, optimiser and this rank's RNG states restored."""
    last = run.out_dir / "last.pt"
    if not last.is_file():
        return TrainState()
    ckpt = load_weights(last)
    check_resumable(last, ckpt, run.config, run.world_size, run.targets)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    state = from_dict(TrainState, ckpt["state"])
    set_rng_states(ckpt["rng"][run.rank], run.device)
    log.info("%s: resuming at epoch %d, batch %d (step %d)", last, state.epoch, state.batches_done, state.step)
    return state


def _train_epochs(run: _Run, state: TrainState, data: TrainData) -> None:
    """Epochs until the budget or a stopping rule; each is scored on dev (and against the reference, if any), and
    ends with ``last.pt``."""
    sets = {"dev": (data.dev_feats, data.dev_labels), "train": (data.feats, data.labels)}
    monitor = monitor_sets(run, data.soft, sets, data.cmvn)
    while state.epoch < run.config.epochs and not state.stopped:
        train_one_epoch(run, state)
        dev = frame_accuracy(
            [run.model],
            data.dev_feats,
            data.dev_labels,
            data.cmvn,
            run.config.frames,
            device=run.device,
            bf16=run.bf16,
            rank=run.rank,
            world_size=run.world_size,
        )
        end_epoch(run, state, dev, measure(run, monitor, data.cmvn))
        run.steps_per_epoch = _steps(run, state.epoch)
        save_checkpoint(run, state)
    if run.writer is not None:
        run.writer.close()


def _result(run: _Run, state: TrainState, data: TrainData) -> dict:
    """The run's final metrics, recorded in ``.train.done`` by rank 0 once every rank is done."""
    config = run.config
    best = state.history[state.best_epoch] if state.best_epoch >= 0 else {}
    result = {
        "best_dev_acc": state.best_dev_acc,
        "best_epoch": state.best_epoch,
        "best_dev_loss": best.get("dev_loss"),
        "epochs": len(state.history),
        "steps": state.step,
        "train_frames": state.frames,
        "train_frames_per_sec": state.history[-1]["train_frames_per_sec"] if state.history else None,
        "best_checkpoint": str(run.out_dir / "best.pt"),
        "num_params": run.model.num_params(),
        "stopped_early": state.stopped,
        "end_reason": state.end_reason,
        "budget": config.epochs,
        "still_improving": still_improving(state.history, config.improve_tol),
        "config": comparable(config),
        "targets": data.targets,
        "kind": run_kind(config, data.soft),
    }
    if result["still_improving"]:
        log.warning(
            "%s: dev accuracy still rose by more than %g in the last epoch (%s): this run was cut off "
            "while improving; a longer budget would change it",
            run.out_dir,
            config.improve_tol,
            state.end_reason,
        )
    if run.rank == 0:
        mark_done(run.out_dir, "train", result, run_inputs(config, data.targets))
    barrier(run)
    return result


def _steps(run: _Run, epoch: int) -> int:
    """Batches per rank in ``epoch``: ranks' frame shares differ by at most one frame, so the counts by at most
    one batch (all stop at the smallest: DDP needs the same number of steps)."""
    steps = run.stream.num_batches(epoch)
    if run.world_size > 1:
        t = torch.tensor(steps, device=run.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        steps = int(t.item())
    return steps
