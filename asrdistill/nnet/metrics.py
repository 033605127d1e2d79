"""A training run's metrics: ``log/metrics.jsonl`` (written by rank 0, cut back to the checkpoint on resume) and
TensorBoard's ``log/tb``."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from asrdistill.fileio import json_safe, write_text_atomic

if TYPE_CHECKING:
    from asrdistill.nnet.train import TrainState, _Run

log = logging.getLogger(__name__)


def log_metrics(run: _Run, record: dict) -> None:
    """Append ``record`` (a step's or an epoch's) to ``log/metrics.jsonl`` and TensorBoard; rank 0 only."""
    if run.rank != 0:
        return
    path = run.out_dir / "log" / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
    if run.writer is not None:
        prefix = "epoch/" if "dev_acc" in record else "train/"
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                run.writer.add_scalar(prefix + key, value, record["step"])


def truncate_metrics(run: _Run, state: TrainState) -> None:
    """Drop ``log/metrics.jsonl`` records written after the checkpoint being resumed: they are logged again."""
    path = run.out_dir / "log" / "metrics.jsonl"
    if run.rank != 0 or not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if r["epoch"] < state.epoch if "dev_acc" in r else r["step"] <= state.step:
            keep.append(line + "\n")
    write_text_atomic(path, "".join(keep))


def metrics_writer(run: _Run, state: TrainState) -> object | None:
    """Rank 0's TensorBoard writer (continuing after ``state.step``), if tensorboard is installed."""
    if run.rank != 0:
        return None
    run.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(run.out_dir / "log" / "tb"), purge_step=state.step + 1 if state.step else None)
    except ImportError:
        log.warning("tensorboard is not installed; metrics go to log/metrics.jsonl only")
        return None
