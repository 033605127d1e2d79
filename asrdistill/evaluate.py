"""Score one system (a single DNN or an ensemble) for the results table.

A system is an experiment folder: ``best.pt`` for a single model (baseline,
teacher, student), or ``members.txt`` listing member checkpoints for an
ensemble. For dev and test it measures frame accuracy against the aligner's
senone labels, and WER through the HCLG decoder: the acoustic scale is swept on
dev and the best one applied to test. It also times the network forward pass
(the paper's point: the student costs one model, the ensemble N) and the search.
The figures go to ``<system>/metrics.json`` (:class:`asrdistill.results.SystemResult`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from asrdistill.data.datadir import DataDir
from asrdistill.decoding.decode import DecodeConfig, compute_priors, decode, sweep
from asrdistill.nnet.ensemble import load_teachers, posterior_stream
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.nnet.model import FrameDNN
from asrdistill.results import SystemResult
from asrdistill.decoding.scoring import wer_report
from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest

__all__ = ["EvalConfig", "system_kind", "load_system", "evaluate_system"]

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Section ``evaluate``: how systems are scored."""

    method: str = "arithmetic"  # ensemble combination of member posteriors
    decode: bool = True         # False: frame accuracy only (no WER)


def system_kind(name: str) -> str:
    """The results-table kind of a system from its folder name (``student_T2`` -> ``student``)."""
    for prefix in ("baseline", "teacher", "ensemble", "student", "fraction_hard", "fraction_soft"):
        if name.startswith(prefix):
            return prefix
    return "other"


def load_system(system_dir: str | Path, device: str | torch.device = "cpu") -> list[FrameDNN]:
    """The member models of a system folder (one model unless it lists ``members.txt``)."""
    system_dir = Path(system_dir)
    members = system_dir / "members.txt"
    if members.is_file():
        paths = [line.strip() for line in members.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not paths:
            raise ValueError(f"{members}: lists no member checkpoints")
    elif (system_dir / "best.pt").is_file():
        paths = [str(system_dir / "best.pt")]
    else:
        raise FileNotFoundError(f"{system_dir}: neither best.pt nor members.txt (was the system trained?)")
    return load_teachers(paths, device)


class _Posteriors:
    """Re-iterable ``(utt, log posteriors)`` of a system over a set (the decoder's input), counting frame accuracy and NN time."""

    def __init__(self, models: list[FrameDNN], feats: ShardManifest, labels: ShardManifest | None, cmvn: Cmvn,
                 frames: FrameConfig, method: str, device: str | torch.device):
        self.args = (models, feats, cmvn, frames, labels, method, device)
        self.correct = self.counted = self.num_frames = 0
        self.nn_seconds = 0.0

    def __call__(self) -> Iterator[tuple[str, np.ndarray]]:
        self.correct = self.counted = self.num_frames = 0
        self.nn_seconds = 0.0
        stream = posterior_stream(*self.args)
        while True:
            t0 = time.perf_counter()
            item = next(stream, None)
            if item is None:
                return
            utt, logp, y = item
            out = logp.cpu().numpy()
            self.nn_seconds += time.perf_counter() - t0
            self.num_frames += out.shape[0]
            if y is not None:
                self.correct += int((logp.argmax(-1) == y).sum())
                self.counted += int(y.numel())
            yield utt, out

    @property
    def frame_acc(self) -> float:
        return 100.0 * self.correct / self.counted if self.counted else float("nan")


def evaluate_system(system_dir: str | Path, feats_root: str | Path, labels_root: str | Path, data_root: str | Path,
                    train_set: str, dev_set: str, test_set: str, graph_dir: str | Path | None,
                    frames: FrameConfig, decode_config: DecodeConfig, config: EvalConfig = EvalConfig(),
                    device: str | torch.device = "cpu", force: bool = False) -> SystemResult:
    """Frame accuracy and WER of the system in ``system_dir`` on dev and test; writes ``metrics.json``.

    A system whose ``metrics.json`` is newer than its model is not evaluated again unless ``force``.
    """
    system_dir, feats_root, labels_root = Path(system_dir), Path(feats_root), Path(labels_root)
    metrics = system_dir / "metrics.json"
    sources = [p for p in (system_dir / "best.pt", system_dir / "members.txt") if p.is_file()]
    if not force and metrics.is_file() and sources and all(p.stat().st_mtime < metrics.stat().st_mtime for p in sources):
        log.info("%s: already evaluated (metrics.json newer than the model), skipping", system_dir)
        return SystemResult.load(metrics)
    models = load_system(system_dir, device)
    num_pdfs = models[0].num_classes
    cmvn = Cmvn.load(feats_root / train_set / "cmvn.json")
    result = SystemResult(system_dir.name, system_kind(system_dir.name),
                          params=sum(m.num_params() for m in models), extra={"members": len(models)})

    def stream(subset: str) -> _Posteriors:
        labels_dir = labels_root / subset
        labels = ShardManifest.load(labels_dir, PDF_PREFIX) if (labels_dir / f"{PDF_PREFIX}.manifest.json").is_file() else None
        return _Posteriors(models, ShardManifest.load(feats_root / subset, FEATS_PREFIX), labels, cmvn, frames,
                           config.method, device)

    dev, test = stream(dev_set), stream(test_set)
    if not (config.decode and graph_dir):
        for s in (dev, test):
            for _ in s():
                pass
    else:
        priors = compute_priors([ShardManifest.load(labels_root / train_set, PDF_PREFIX)], num_pdfs, floor=1e-5)
        refs = {name: DataDir.load(Path(data_root) / name).text for name in (dev_set, test_set)}
        swept = sweep(graph_dir, dev, priors, refs[dev_set], decode_config, system_dir / f"decode_{dev_set}")
        result.dev_wer = swept.results[swept.best_scale].wer
        best = dataclasses.replace(decode_config, acoustic_scale=swept.best_scale)
        decoded = decode(graph_dir, test(), priors, best)
        out = system_dir / f"decode_{test_set}"
        decoded.save(out)
        report = wer_report(refs[test_set], {u: " ".join(w) for u, w in decoded.hyps.items()}, out)
        result.test_wer = report.wer
        result.decode_rtf = decoded.rtf
        result.extra.update(acoustic_scale=swept.best_scale, test_partial=len(decoded.partial))
        log.info("%s: test %s (acoustic scale %g from dev)", system_dir.name, report.summary(), swept.best_scale)
    result.dev_frame_acc, result.test_frame_acc = dev.frame_acc, test.frame_acc
    result.nn_seconds_per_frame = test.nn_seconds / max(test.num_frames, 1)
    result.save(system_dir / "metrics.json")
    log.info("%s: dev frame acc %.2f%%, test frame acc %.2f%%, dev WER %.2f%%, test WER %.2f%%", system_dir.name,
             result.dev_frame_acc, result.test_frame_acc, result.dev_wer, result.test_wer)
    return result
