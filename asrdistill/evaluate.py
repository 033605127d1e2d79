"""Score one system (a single DNN, an ensemble, or a generalist with its specialists) for the results table.

A system is an experiment folder: ``best.pt`` for a single model (baseline,
teacher, student), ``members.txt`` listing member checkpoints for an
ensemble, or ``specialists.json`` for a generalist combined with its
specialists (:func:`asrdistill.nnet.specialists.specialist_stream`). Every kind
yields the same ``(utt, log posteriors, labels)`` stream, which everything
below reads. For dev and test it measures frame accuracy against the aligner's
senone labels, and WER through the HCLG decoder: the acoustic scale is swept on
dev and the best one applied to test. It also times the network forward pass
(the paper's point: the student costs one model, the ensemble N) and the search.
The figures go to ``<system>/metrics.json`` (:class:`asrdistill.results.SystemResult`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from asrdistill.data.datadir import DataDir
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig, FrameData
from asrdistill.data.shards import PDF_PREFIX, ShardManifest
from asrdistill.decoding.decode import DecodeConfig, compute_priors, decode, sweep
from asrdistill.decoding.hclg import check_labels_match_graph
from asrdistill.decoding.scoring import wer_report
from asrdistill.fileio import atomic_path, identity, mark_done, read_done, stage_done
from asrdistill.nnet.ensemble import METHODS, fingerprint, load_teachers, posterior_stream, system_checkpoints
from asrdistill.nnet.model import FrameDNN
from asrdistill.nnet.specialists import SpecialistConfig, is_specialists_dir, load_combination, specialist_stream
from asrdistill.results import COMBINED, SystemResult

__all__ = ["EvalConfig", "EvalSystem", "load_eval_system", "system_kind", "system_models", "evaluate_system"]

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Section ``evaluate``: how systems are scored."""

    method: str = "arithmetic"  # ensemble combination of member posteriors: "arithmetic" or "geometric"
    decode: bool = True  # False: frame accuracy only (no WER)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"evaluate.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.decode, bool):
            raise ValueError(f"evaluate.decode must be true or false, got {self.decode!r}")


def system_kind(system_dir: str | Path) -> str:
    """The results-table kind of a system, as the stage that made it recorded it in its folder.

    A trained DNN's ``.train.done`` record holds it (``baseline``, ``student``, ``sweep``, ...; see
    :func:`asrdistill.nnet.targets.run_kind`), an ensemble's ``.ensemble.done`` (``ensemble``) and a specialists
    folder's ``specialists.json`` (``generalist+specialists``); the folder's name plays no part. A folder none of
    them made (a checkpoint copied in by hand) is ``other``.
    """
    system_dir = Path(system_dir)
    if is_specialists_dir(system_dir):
        return COMBINED
    for stage in ("train", "ensemble"):
        record = read_done(system_dir, stage)
        if record is not None and record.get("kind"):
            return str(record["kind"])
    return "other"


def system_models(system_dir: str | Path, device: str | torch.device = "cpu") -> list[FrameDNN]:
    """The member models of a system folder (one model unless it lists ``members.txt``)."""
    return load_teachers(system_checkpoints(system_dir), device)


PosteriorStream = Callable[[ShardManifest, ShardManifest | None], Iterator[tuple[str, Tensor, Tensor | None]]]


@dataclass
class EvalSystem:
    """What evaluation runs of a system folder (not a decoding bundle: that is :class:`asrdistill.decoding.System`)."""

    kind: str
    models: list[FrameDNN]  # every network it runs: their weights identify it, their parameters are its size
    stream: PosteriorStream  # (features, labels or None) -> (utt, log posteriors (T, C), labels)
    settings: dict  # what besides the weights shapes its posteriors (part of its identity)
    extra: dict  # facts for metrics.json


def load_eval_system(
    system_dir: Path,
    cmvn: Cmvn,
    frames: FrameConfig,
    config: EvalConfig,
    specialists: SpecialistConfig,
    device: str | torch.device,
) -> EvalSystem:
    """The system in ``system_dir`` with its posterior stream: one model, an ensemble, or generalist + specialists.

    Public so that benchmarks run a system exactly as evaluation does.
    """
    bf16 = torch.device(device).type == "cuda"
    if is_specialists_dir(system_dir):
        path, generalist, specs = load_combination(system_dir, device)
        top, steps = specialists.top_classes, specialists.combine_steps
        return EvalSystem(
            COMBINED,
            [generalist, *(s.model for s in specs)],
            lambda feats, labels: specialist_stream(
                generalist, specs, feats, cmvn, frames, labels, top, steps, device, bf16
            ),
            {"combination": {"top_classes": top, "combine_steps": steps}},
            {"generalist": path.parent.name, "specialists": len(specs)},
        )
    models = system_models(system_dir, device)
    return EvalSystem(
        system_kind(system_dir),
        models,
        lambda feats, labels: posterior_stream(models, feats, cmvn, frames, labels, config.method, device, bf16),
        {},
        {},
    )


class _Posteriors:
    """Re-iterable ``(utt, log posteriors)`` of a system over a set (the decoder's input).

    Counts frame accuracy per utterance (for the bootstrap intervals of the
    results table), keeps each frame's best senone (to compare systems' frame
    decisions) and the network time.
    """

    def __init__(self, stream: PosteriorStream, feats: ShardManifest, labels: ShardManifest | None):
        self.stream, self.feats, self.labels = stream, feats, labels
        self.per_utt: dict[str, list[int]] = {}  # utt -> [correct frames, labelled frames]
        self.preds: dict[str, np.ndarray] = {}  # utt -> (T,) best senone per frame
        self.num_frames = 0
        self.nn_seconds = 0.0

    def __call__(self) -> Iterator[tuple[str, np.ndarray]]:
        self.per_utt, self.preds, self.num_frames, self.nn_seconds = {}, {}, 0, 0.0
        stream = self.stream(self.feats, self.labels)
        while True:
            t0 = time.perf_counter()
            item = next(stream, None)
            if item is None:
                return
            utt, logp, y = item
            out = logp.cpu().numpy()
            self.nn_seconds += time.perf_counter() - t0
            self.num_frames += out.shape[0]
            pred = logp.argmax(-1)
            self.preds[utt] = pred.cpu().numpy().astype(np.int32)
            if y is not None:
                self.per_utt[utt] = [int((pred == y).sum()), int(y.numel())]
            yield utt, out

    @property
    def frame_acc(self) -> float:
        counted = sum(n for _, n in self.per_utt.values())
        return 100.0 * sum(c for c, _ in self.per_utt.values()) / counted if counted else math.nan

    def save(self, path: Path) -> None:
        """Per-utterance frame counts and frame decisions (``<system>/frames_<set>.npz``), for the results table."""
        utts = sorted(self.preds)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f,
                    utts=np.array(utts),
                    lengths=np.array([len(self.preds[u]) for u in utts]),
                    preds=np.concatenate([self.preds[u] for u in utts]) if utts else np.zeros(0),
                    correct=np.array([self.per_utt.get(u, [0, 0])[0] for u in utts]),
                    labelled=np.array([self.per_utt.get(u, [0, 0])[1] for u in utts]),
                )


def _inputs(
    data: FrameData,
    data_root: Path,
    graph_dir: Path | None,
    decode_config: DecodeConfig,
    config: EvalConfig,
    system: EvalSystem,
) -> dict:
    """What a system's metrics were computed from: its weights, the sets' features, labels and transcripts (by
    :func:`identity`), the graph and every setting; any change means evaluating again."""
    train_labels = ShardManifest.manifest_path(data.labels_dir(data.train_set), PDF_PREFIX)
    sets = identity(
        data.cmvn_path,
        train_labels,
        *[
            p
            for s in (data.dev_set, data.test_set)
            for p in (data.feats_root / s, data.labels_dir(s), data_root / s / "text")
        ],
    )
    graph = None
    if config.decode and graph_dir is not None:
        graph = identity(*[Path(graph_dir) / f for f in ("HCLG.fst", "words.txt", "graph.json")])
    return {
        "weights_sha256": fingerprint(system.models),
        "sets": list(data.sets),
        "data": sets,
        "graph": graph,
        "frames": dataclasses.asdict(data.frames),
        "decode": {k: v for k, v in dataclasses.asdict(decode_config).items() if k != "nj"},  # nj: speed only
        "evaluate": dataclasses.asdict(config),
        **system.settings,
    }


def evaluate_system(
    system_dir: str | Path,
    data: FrameData,
    *,
    data_root: str | Path,
    graph_dir: str | Path | None = None,
    decode_config: DecodeConfig = DecodeConfig(),
    config: EvalConfig = EvalConfig(),
    specialists: SpecialistConfig = SpecialistConfig(),
    device: str | torch.device = "cpu",
    force: bool = False,
) -> SystemResult:
    """Frame accuracy and WER of the system in ``system_dir`` on ``data``'s dev and test sets; writes ``metrics.json``.

    ``data_root/<set>/text`` holds the reference transcripts. Also ``frames_<dev|test>.npz`` (per-utterance frame
    counts and decisions) and, with a graph, ``decode_<set>/`` (hypotheses, per-utterance errors). A system
    whose ``metrics.json`` was computed from the same weights, sets, graph and
    settings is not evaluated again unless ``force``. ``specialists``: how a
    specialists folder combines its models (``top_classes``, ``combine_steps``).
    """
    if not data.test_set:
        raise ValueError("evaluate_system: data.test_set is empty (name the set to score)")
    system_dir, data_root = Path(system_dir), Path(data_root)
    dev_set, test_set = data.dev_set, data.test_set
    system = load_eval_system(system_dir, data.cmvn(), data.frames, config, specialists, device)
    inputs = _inputs(data, data_root, Path(graph_dir) if graph_dir else None, decode_config, config, system)
    metrics = system_dir / "metrics.json"
    if stage_done(system_dir, "evaluate", inputs, force) is not None and metrics.is_file():
        done = SystemResult.load(metrics)
        if done.kind != system.kind:  # the system's own record changed its kind (e.g. now a sweep run)
            done.kind = system.kind
            done.save(metrics)
        return done
    num_pdfs = system.models[0].num_classes
    result = SystemResult(
        system_dir.name,
        system.kind,
        params=sum(m.num_params() for m in system.models),
        extra={"members": len(system.models), **system.extra},
    )
    result.extra.update(_training_facts(system_dir))

    def stream(subset: str) -> _Posteriors:
        return _Posteriors(system.stream, data.feats(subset), data.labels(subset))

    dev, test = stream(dev_set), stream(test_set)
    if not (config.decode and graph_dir):
        for s in (dev, test):
            for _ in s():
                pass
    else:
        _decode_and_score(result, system_dir, data, data_root, graph_dir, decode_config, num_pdfs, dev, test)
    dev.save(system_dir / f"frames_{dev_set}.npz")
    test.save(system_dir / f"frames_{test_set}.npz")
    result.dev_frame_acc, result.test_frame_acc = dev.frame_acc, test.frame_acc
    result.nn_seconds_per_frame = test.nn_seconds / max(test.num_frames, 1)
    result.extra["torch_threads"] = torch.get_num_threads()  # what nn_seconds_per_frame was measured with
    result.extra.update(dev_set=dev_set, test_set=test_set, inputs=inputs)
    result.save(metrics)
    mark_done(system_dir, "evaluate", {"metrics": metrics.name}, inputs)
    log.info(
        "%s: dev frame acc %.2f%%, test frame acc %.2f%%, dev WER %.2f%%, test WER %.2f%%",
        system_dir.name,
        result.dev_frame_acc,
        result.test_frame_acc,
        result.dev_wer,
        result.test_wer,
    )
    return result


def _decode_and_score(
    result: SystemResult,
    system_dir: Path,
    data: FrameData,
    data_root: Path,
    graph_dir: str | Path,
    decode_config: DecodeConfig,
    num_pdfs: int,
    dev: _Posteriors,
    test: _Posteriors,
) -> None:
    """``result``'s WERs: the acoustic scale swept on dev, test decoded once at the best one (test never chooses a
    setting); hypotheses and per-utterance errors go to ``system_dir/decode_<set>/``."""
    train_set, dev_set, test_set = data.sets
    train_labels = ShardManifest.load(data.labels_dir(train_set), PDF_PREFIX)
    check_labels_match_graph(train_labels.meta, graph_dir, data.labels_dir(train_set))
    priors = compute_priors([train_labels], num_pdfs, floor=1e-5)
    refs = {name: DataDir.load(data_root / name).text for name in (dev_set, test_set)}
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


def _training_facts(system_dir: Path) -> dict:
    """Seed, epochs trained and distillation settings of a trained system (for the table's budget columns)."""
    result, config = system_dir / "train_result.json", system_dir / "train_config.json"
    if not (result.is_file() and config.is_file()):
        return {}
    r = json.loads(result.read_text(encoding="utf-8"))
    c = json.loads(config.read_text(encoding="utf-8"))
    facts = {
        "seed": c.get("seed"),
        "epochs": r.get("epochs"),
        "best_epoch": r.get("best_epoch"),
        "max_epochs": c.get("epochs"),
        "patience": c.get("patience"),
        "data_fraction": c.get("data_fraction"),
        "end_reason": r.get("end_reason"),
        "still_improving": r.get("still_improving"),
    }
    if c.get("distill"):
        facts.update(
            temperature=c["distill"]["temperature"],
            hard_weight=c["distill"]["hard_weight"],
            distill_source=c["distill"]["source"],
        )
    return facts
