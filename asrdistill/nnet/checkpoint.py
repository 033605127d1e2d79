"""Checkpoints of a training run: ``last.pt`` (RNG states included) and ``best.pt``, the ``.train.done`` record of a
finished run, and the checks that a run may resume from ``last.pt``."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from asrdistill.config import to_dict
from asrdistill.fileio import atomic_path, clear_done, stage_done
from asrdistill.nnet.consistent import AugmentConfig

if TYPE_CHECKING:
    from asrdistill.nnet.train import TrainConfig, TrainState, _Run

# fields that may change between a run and its resumption without changing the result
_OPERATIONAL = {
    "log_every",
    "checkpoint_every",
    "progress",
    "compile",
    "device",
    "kind",
    "reference",
    "monitor_frames",
    "improve_tol",
}


def _rng_states(device: torch.device) -> dict:
    """This process's RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_states(states: dict, device: torch.device) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal.tolist()), gauss_next))
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


def barrier(run: _Run) -> None:
    if run.world_size > 1:
        dist.barrier()


def save_checkpoint(run: _Run, state: TrainState, name: str = "last.pt") -> None:
    """Atomically write ``name``: everything :func:`train` needs to continue bit-exactly.

    Called on every rank (the RNG states of all ranks are gathered into it); rank 0
    writes, and no rank goes on before the file is in place.
    """
    rng = [_rng_states(run.device)]
    if run.world_size > 1:
        rng = [None] * run.world_size
        dist.all_gather_object(rng, _rng_states(run.device))
    if run.rank == 0:
        ckpt = {
            **run.model.describe(),
            "model": run.model.state_dict(),
            "config": to_dict(run.config),
            "world_size": run.world_size,
            "optimizer": run.optimizer.state_dict(),
            "targets": run.targets,
            "state": dataclasses.asdict(state),
            "rng": rng,
        }
        with atomic_path(run.out_dir / name) as tmp:
            torch.save(ckpt, tmp)
    barrier(run)


def save_best(run: _Run, state: TrainState, dev: dict) -> None:
    if run.rank != 0:
        return
    ckpt = {
        **run.model.describe(),
        "model": run.model.state_dict(),
        "config": to_dict(run.config),
        "epoch": state.epoch,
        "step": state.step,
        "dev": dev,
    }
    with atomic_path(run.out_dir / "best.pt") as tmp:
        torch.save(ckpt, tmp)


# fields added after runs were recorded: left out of a run's identity while unset, so those runs stay finished
_OMITTED_UNSET = {"transfer"}


def comparable(config: TrainConfig | dict) -> dict:
    """What decides a run's result in its config: operational keys dropped, and options added later left out
    while they are off (``transfer``, ``distill.augment``), so that runs trained before they existed keep their
    identity."""
    config = config if isinstance(config, dict) else to_dict(config)
    out = {k: v for k, v in config.items() if k not in _OPERATIONAL and not (k in _OMITTED_UNSET and not v)}
    distill = out.get("distill") or {}
    if "augment" in distill and not AugmentConfig(**distill["augment"]).active:
        out["distill"] = {k: v for k, v in distill.items() if k != "augment"}
    return out


def start_over(out_dir: Path) -> None:
    for name in ("last.pt", "best.pt", ".train.done"):
        (out_dir / name).unlink(missing_ok=True)
    clear_done(out_dir / "subset", "subset")


def run_inputs(config: TrainConfig, targets: dict) -> dict:
    """What a run's result depends on (recorded in ``.train.done``): its config, the train/dev features and labels
    and the CMVN stats, and its distillation targets."""
    data = {k: Path(getattr(config, k)) for k in ("train_feats", "train_labels", "dev_feats", "dev_labels", "cmvn")}
    return {"config": comparable(config), **data, "targets": targets}


def finished_run(out_dir: Path, config: TrainConfig, targets: dict, rank: int) -> dict | None:
    """The result of a finished run in ``out_dir`` made from these inputs; rank 0 deletes a stale one's checkpoints."""
    return stage_done(
        out_dir, "train", run_inputs(config, targets), on_redo=(lambda: start_over(out_dir)) if rank == 0 else None
    )


def check_resumable(path: Path, ckpt: dict, config: TrainConfig, world_size: int, targets: dict) -> None:
    """A checkpoint from another configuration, other distillation targets or DDP size is an error naming the file."""
    old, new = comparable(ckpt.get("config", {})), comparable(config)
    diffs = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diffs:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diffs)
        raise ValueError(
            f"{path}: checkpoint is from a different configuration ({details}); use another output folder or delete it"
        )
    if ckpt.get("targets", {}) != targets:
        raise ValueError(
            f"{path}: checkpoint was trained towards other soft targets or teachers "
            f"({ckpt.get('targets')} -> {targets}); use another output folder or --force"
        )
    if ckpt.get("world_size") != world_size:
        raise ValueError(
            f"{path}: checkpoint was written by {ckpt.get('world_size')} rank(s), "
            f"this run has {world_size}; data positions would not match"
        )
