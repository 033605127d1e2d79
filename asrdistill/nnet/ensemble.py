"""Teacher ensembles: loading members, combining posteriors, and caching soft targets.

As in Hinton et al. (2015) section 4, the teachers are N independent training
runs that differ only in their seed (initialisation and data order; the recipe
trains them with ``asrdistill train --seed i``). Their posteriors, softened at
temperature T, are combined by the arithmetic mean (default) or the
renormalised geometric mean.

Distilling from a 10-model ensemble online costs 10 forward passes per student
step, so the targets can be computed once and cached: :func:`cache_soft_targets`
runs the teachers over the training features in ONE pass and writes, for each
temperature, either the whole distribution (dense fp16 log-probs: exact at any
T, the default while the senone count allows) or its top k plus one "rest"
class. Top k loses most of the signal at high T (at T = 10 the top 20 of 600
senones hold ~12% of the mass), so :func:`soft_target_fidelity` measures, on
held-out frames, the share of the exact soft loss a cached form keeps, and
:func:`choose_k` picks the smallest k that keeps enough. Online distillation
(``asrdistill train --online``) needs no cache and is exact too.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig, iter_utterances
from asrdistill.data.shards import SOFT_PREFIX, ShardManifest, write_shard
from asrdistill.fileio import mark_done, stage_done, write_json_atomic, write_text_atomic
from asrdistill.logs import progress
from asrdistill.nnet.model import FrameDNN, autocast, load_model

__all__ = [
    "EnsembleConfig",
    "load_teachers",
    "combine_logits",
    "ensemble_logprobs",
    "logits_stream",
    "posterior_stream",
    "frame_accuracy",
    "reference_posteriors",
    "fingerprint",
    "soft_target_fidelity",
    "choose_k",
    "cache_soft_targets",
    "build_ensemble",
    "read_members",
    "system_checkpoints",
    "stored_target",
    "dense_to_topk",
]

log = logging.getLogger(__name__)

METHODS = ("arithmetic", "geometric")


@dataclass
class EnsembleConfig:
    """Section ``ensemble``: how the teachers' soft targets are combined and cached."""

    method: str = "arithmetic"  # "arithmetic" or "geometric" mean of the members' posteriors
    topk: int = 0  # 0: dense (exact); k > 0: top k + rest; -1: per T, the smallest candidate
    # k reaching min_fidelity on dev (dense if none does)
    k_candidates: list[int] = field(default_factory=lambda: [20, 50, 100, 200, 500, 1000, 2000])
    min_fidelity: float = 0.97  # share of the exact soft loss a cache must keep (measured on dev)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"ensemble.method must be one of {METHODS}, got {self.method!r}")
        if self.topk < -1:
            raise ValueError(f"ensemble.topk must be -1 (auto), 0 (dense) or k > 0, got {self.topk}")
        if not 0 < self.min_fidelity <= 1:
            raise ValueError(f"ensemble.min_fidelity must be in (0, 1], got {self.min_fidelity}")


def load_teachers(
    paths: Sequence[str | Path], device: str | torch.device = "cpu", expect: tuple[int, int] | None = None
) -> list[FrameDNN]:
    """Load member checkpoints (eval mode, no grad); they must agree on inputs and senones.

    ``expect``: the ``(input_dim, num_classes)`` of the model they will teach, checked too.
    """
    if not paths:
        raise ValueError("no teacher checkpoints given")
    models = [load_model(p, device).requires_grad_(False) for p in paths]
    want = expect or (models[0].input_dim, models[0].num_classes)
    for path, m in zip(paths, models):
        if (m.input_dim, m.num_classes) != want:
            raise ValueError(
                f"{path}: {m.input_dim} inputs / {m.num_classes} senones, but "
                f"{'the student' if expect else paths[0]} has {want[0]} / {want[1]} "
                "(different context window, feature dim or tree?)"
            )
    return models


def combine_logits(logits: Sequence[Tensor], temperature: float = 1.0, method: str = "arithmetic") -> Tensor:
    """Log of the ensemble posterior from each model's logits ``(N, C)``, all softened at ``temperature``.

    ``arithmetic``: log mean_m softmax(z_m / T). ``geometric``: the mean of the
    log-posteriors, renormalised (a product of experts). Computed in float32.
    """
    if method not in METHODS:
        raise ValueError(f"ensemble method must be one of {METHODS}, got {method!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = torch.stack([torch.log_softmax(z.float() / temperature, dim=-1) for z in logits])  # (M, N, C)
    if method == "arithmetic":
        return torch.logsumexp(logp, dim=0) - math.log(len(logits))
    return torch.log_softmax(logp.mean(0), dim=-1)


@torch.no_grad()
def ensemble_logprobs(
    models: Sequence[nn.Module], x: Tensor, temperature: float = 1.0, method: str = "arithmetic"
) -> Tensor:
    """Ensemble log-posteriors ``(N, C)`` of ``models`` on inputs ``x`` at ``temperature``."""
    return combine_logits([m(x) for m in models], temperature, method)


@torch.no_grad()
def logits_stream(
    models: Sequence[nn.Module],
    feats: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    labels: ShardManifest | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    *,
    batch_frames: int = 16384,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[str, list[Tensor], Tensor | None]]:
    """``(utt, each model's logits (T, C) float32, labels (T,) or None)`` over a feature set, in stored order.

    The one network pass of the toolkit outside training: posteriors
    (:func:`posterior_stream`), soft-target caching and their fidelity read it.
    Utterances are stacked into forward passes of at least ``batch_frames``
    frames (one utterance per pass would leave a GPU mostly idle), under bf16
    autocast if ``bf16`` on CUDA; ``rank``/``world_size`` keep every
    ``world_size``-th utterance (DDP).
    """
    device = torch.device(device)
    for m in models:
        m.eval()

    def run(pending: list[tuple[str, Tensor, Tensor | None]]) -> Iterator[tuple[str, list[Tensor], Tensor | None]]:
        x = torch.cat([x for _, x, _ in pending]) if len(pending) > 1 else pending[0][1]  # (sum T, window * D)
        with autocast(device, bf16):
            logits = [m(x).float() for m in models]
        start = 0
        for utt, xu, y in pending:
            yield utt, [l[start : start + xu.shape[0]] for l in logits], y
            start += xu.shape[0]

    pending: list[tuple[str, Tensor, Tensor | None]] = []
    size = 0
    for item in iter_utterances(
        feats, cmvn, frame_config, labels=labels, device=device, rank=rank, world_size=world_size
    ):
        pending.append(item)
        size += item[1].shape[0]
        if size >= batch_frames:
            yield from run(pending)
            pending, size = [], 0
    if pending:
        yield from run(pending)


def posterior_stream(
    models: Sequence[nn.Module],
    feats: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    labels: ShardManifest | None = None,
    method: str = "arithmetic",
    device: str | torch.device = "cpu",
    bf16: bool = False,
    *,
    batch_frames: int = 16384,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """``(utt, log posteriors (T, C) float32, labels (T,) or None)`` of a system over a feature set.

    A system is one model or an ensemble (its members combined at T = 1). This is
    what dev frame accuracy during training, ensemble scoring and decoding all
    read, so they cannot disagree on what a system's posterior is.
    """
    for utt, logits, y in logits_stream(
        models,
        feats,
        cmvn,
        frame_config,
        labels,
        device,
        bf16,
        batch_frames=batch_frames,
        rank=rank,
        world_size=world_size,
    ):
        yield utt, combine_logits(logits, 1.0, method), y


def frame_accuracy(
    models: Sequence[nn.Module],
    feats: ShardManifest,
    labels: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    method: str = "arithmetic",
    device: str | torch.device = "cpu",
    bf16: bool = False,
    *,
    batch_frames: int = 16384,
    rank: int = 0,
    world_size: int = 1,
    reference: Mapping[str, Tensor] | None = None,
) -> dict[str, float]:
    """Frame accuracy and cross-entropy of a system (one model or an ensemble) on every labelled frame of a set.

    With ``reference`` (utt -> a reference system's log posteriors, from
    :func:`reference_posteriors` over the same labels), also how close the system
    is to it: ``kl``, the mean KL(reference || system) per frame at T = 1, and
    ``agree``, the share of frames where both pick the same senone. That is what
    distillation optimises, so a student's progress is measured on it, not only
    on accuracy. Under DDP (``world_size > 1``, process group initialised) each
    rank scores its share of the utterances and the sums are all-reduced: every
    rank returns the whole set's figures.
    """
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, correct, frames, KL, agreeing frames
    for utt, logp, y in posterior_stream(
        models,
        feats,
        cmvn,
        frame_config,
        labels,
        method,
        device,
        bf16,
        batch_frames=batch_frames,
        rank=rank,
        world_size=world_size,
    ):
        sums[0] -= logp.gather(1, y[:, None]).sum().double()
        sums[1] += (logp.argmax(-1) == y).sum()
        sums[2] += y.numel()
        if reference is not None:
            if utt not in reference:
                raise ValueError(f"{feats.path}: utterance {utt} has no reference posteriors")
            ref = reference[utt].to(logp.device, torch.float32)  # (T, C)
            sums[3] += (ref.exp() * (ref - logp)).sum().double()
            sums[4] += (ref.argmax(-1) == logp.argmax(-1)).sum()
    if world_size > 1:
        dist.all_reduce(sums)
    loss, correct, count, kl, agree = sums.tolist()
    if count == 0:
        raise ValueError(f"{labels.path}: no labelled frames")
    out = {"loss": loss / count, "acc": correct / count, "frames": int(count)}
    if reference is not None:
        out.update(kl=kl / count, agree=agree / count)
    return out


@torch.no_grad()
def reference_posteriors(
    models: Sequence[nn.Module],
    feats: ShardManifest,
    labels: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    method: str = "arithmetic",
    device: str | torch.device = "cpu",
    bf16: bool = False,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Tensor]:
    """A system's T = 1 log posteriors on the labelled frames of a set (fp16, on the CPU), computed once so that
    :func:`frame_accuracy` can compare a training model with it after every epoch."""
    return {
        utt: logp.to("cpu", torch.float16)
        for utt, logp, _ in posterior_stream(
            models, feats, cmvn, frame_config, labels, method, device, bf16, rank=rank, world_size=world_size
        )
    }


def dense_to_topk(logprobs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k classes ``(N, k)`` int32 and their probabilities float16 (the sparse cached form)."""
    values, idx = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return idx.to(torch.int32), values.exp().to(torch.float16)


def stored_target(logprobs: Tensor, k: int) -> dict[str, Tensor]:
    """What the cache stores for ensemble log-probs ``(N, C)``: dense fp16 log-probs (k = 0) or the top k."""
    if k <= 0 or k >= logprobs.shape[-1]:
        return {"soft_logp": logprobs.to(torch.float16)}
    idx, prob = dense_to_topk(logprobs, k)
    return {"topk_idx": idx, "topk_prob": prob}


def _teacher_kwargs(stored: dict[str, Tensor]) -> dict:
    """:func:`asrdistill.kd.kd_loss` teacher arguments for a stored target, as the trainer builds them."""
    if "soft_logp" in stored:
        return {"teacher_probs": torch.softmax(stored["soft_logp"].float(), dim=-1)}
    return {"teacher_topk": (stored["topk_idx"].long(), stored["topk_prob"].float())}


def fingerprint(models: Sequence[nn.Module]) -> str:
    """sha256 of the members' weights, in order: the identity of an ensemble, whatever its files are called."""
    h = hashlib.sha256()
    for m in models:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def soft_target_fidelity(
    teachers: Sequence[nn.Module],
    reference: nn.Module,
    feats: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    temperatures: Sequence[float],
    ks: Sequence[int] = (0,),
    method: str = "arithmetic",
    device: str | torch.device = "cpu",
) -> dict[float, dict[int, float]]:
    """Share of the exact soft loss that a cached target lets the student see, per temperature and k.

    For every frame of ``feats`` (a held-out set), the exact ensemble
    distribution at T and its stored form (k = 0: dense fp16 log-probs; k > 0:
    top k plus one "rest" class) are each scored with the soft term
    ``T^2 KL(target || softmax(reference / T))`` of :func:`asrdistill.kd.kd_loss`,
    ``reference`` standing in for a student (the recipe uses the baseline).
    The share is sum(stored) / sum(exact): 1 for a lossless cache, the fraction
    of the distillation signal that survives truncation otherwise (merging
    classes can only lower a KL, so a top-k share is <= 1).
    """
    from asrdistill.kd import kd_loss

    seen = {float(t): {k: 0.0 for k in ks} for t in temperatures}
    exact = {float(t): 0.0 for t in temperatures}
    for _, all_logits, _ in logits_stream(
        [*teachers, reference], feats, cmvn, frame_config, device=device, bf16=torch.device(device).type == "cuda"
    ):
        *logits, student = all_logits
        n = student.shape[0]
        for t in exact:
            logp = combine_logits(logits, t, method)
            exact[t] += n * float(kd_loss(student, teacher_probs=logp.exp(), temperature=t, hard_weight=0.0))
            for k in ks:
                kw = _teacher_kwargs(stored_target(logp, k))
                seen[t][k] += n * float(kd_loss(student, temperature=t, hard_weight=0.0, **kw))
    return {t: {k: (seen[t][k] / exact[t] if exact[t] > 0 else 1.0) for k in ks} for t in exact}


def choose_k(fidelity: dict[int, float], num_classes: int, min_fidelity: float) -> int:
    """The smallest candidate k whose measured share reaches ``min_fidelity`` (0 = dense if none does)."""
    ok = sorted(k for k, share in fidelity.items() if 0 < k < num_classes and share >= min_fidelity)
    return ok[0] if ok else 0


@torch.no_grad()
def cache_soft_targets(
    teachers: Sequence[nn.Module],
    feats: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    out_dirs_by_temperature: dict[float, str | Path],
    k: int | dict[float, int] = 0,
    method: str = "arithmetic",
    device: str | torch.device = "cpu",
    force: bool = False,
    extra_meta: dict[float, dict] | None = None,
) -> dict[float, ShardManifest]:
    """Write the ensemble's soft targets at every temperature, in one inference pass over ``feats``.

    ``k`` (one for all temperatures, or per temperature): 0 stores the full
    distribution (``<utt>.soft_logp.npy`` (T, C) float16 log-probs: exact up to
    fp16 rounding); k > 0 the top k (``topk_idx`` (T, k) int32, ``topk_prob``
    (T, k) float16). Each ``out_dirs_by_temperature[T]`` receives
    ``soft-NNNNNN.tar`` shards aligned with the feature shards and
    ``soft.manifest.json`` whose meta records what made it: temperature, k,
    method, senone count, the teachers' weight fingerprint, the features'
    manifest and context, plus ``extra_meta[T]`` (e.g. the measured fidelity).
    A folder is reused only when all of that matches; otherwise it is rebuilt.
    """
    if not teachers:
        raise ValueError("cache_soft_targets: no teachers")
    num_classes = {getattr(m, "num_classes", None) for m in teachers}
    if len(num_classes) != 1:
        raise ValueError(f"cache_soft_targets: teachers disagree on the senone count: {sorted(map(str, num_classes))}")
    (c,) = num_classes
    dirs = {float(t): Path(d) for t, d in out_dirs_by_temperature.items()}
    ks = {t: int(k[t] if isinstance(k, dict) else k) for t in dirs}
    if any(v < 0 for v in ks.values()):
        raise ValueError(f"cache_soft_targets: k must be >= 0 (0 = dense), got {ks}")
    teachers_id = fingerprint(teachers)
    feats_id = hashlib.sha256(feats.path.read_bytes()).hexdigest()
    info = {
        t: {
            "temperature": t,
            "k": ks[t] if 0 < ks[t] < c else 0,
            "method": method,
            "num_classes": c,
            "num_teachers": len(teachers),
            "teachers_sha256": teachers_id,
            "feats": str(feats.path),
            "feats_sha256": feats_id,
            "context": [frame_config.left, frame_config.right],
            **((extra_meta or {}).get(t) or {}),
        }
        for t in dirs
    }
    todo = {t: d for t, d in dirs.items() if stage_done(d, "soft", info[t], force) is None}
    manifests = {t: ShardManifest(d, SOFT_PREFIX, meta=info[t]) for t, d in todo.items()}
    bar = progress(total=feats.num_frames, unit="frame", unit_scale=True, desc="soft targets", disable=not todo)
    for index, shard in enumerate(feats.shards):
        if not todo:
            break
        one = ShardManifest(feats.directory, feats.prefix, [shard], feats.meta)
        per_t: dict[float, list] = {t: [] for t in todo}
        for utt, logits, _ in logits_stream(
            teachers, one, cmvn, frame_config, device=device, bf16=torch.device(device).type == "cuda"
        ):
            for t in todo:
                stored = stored_target(combine_logits(logits, t, method), info[t]["k"])
                per_t[t].append((utt, {name: v.cpu().numpy() for name, v in stored.items()}))
            bar.update(logits[0].shape[0])
        for t, samples in per_t.items():
            if [u for u, _ in samples] != shard.keys:
                raise ValueError(f"{feats.directory / shard.name}: utterances differ from {feats.path}")
            info_t = write_shard(todo[t] / f"{SOFT_PREFIX}-{index:06d}.tar", samples)
            manifests[t].shards.append(info_t)
    bar.close()
    for t, manifest in manifests.items():
        manifest.save()
        mark_done(todo[t], "soft", info[t], info[t])
        form = f"top-{info[t]['k']}" if info[t]["k"] else "dense"
        log.info("%s: %s soft targets at T=%g for %d frames", todo[t], form, t, manifest.num_frames)
    return {t: manifests[t] if t in manifests else ShardManifest.load(d, SOFT_PREFIX) for t, d in dirs.items()}


def build_ensemble(
    members: Sequence[str | Path],
    train_feats: ShardManifest,
    dev_feats: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    temperatures: Sequence[float],
    out_dir: str | Path,
    config: EnsembleConfig = EnsembleConfig(),
    device: str | torch.device = "cpu",
    force: bool = False,
) -> dict[float, dict]:
    """Stage 8: the ensemble folder (``members.txt``), the fidelity of each cache form on dev, the soft targets.

    ``members`` are the teachers' ``best.pt``; ``members.txt`` lists them
    relative to ``out_dir`` so the folder can be moved with its teachers. The
    first member stands in for the student in :func:`soft_target_fidelity`.
    Writes ``fidelity.json`` (per temperature: the chosen k, 0 = dense, and the
    share of the exact soft loss it keeps, with every candidate measured) and
    ``soft_T<t>/``; warns loudly when a cache keeps less than ``config.min_fidelity``.
    Returns the fidelity record.
    """
    out_dir = Path(out_dir)
    teachers = load_teachers(members, device)
    rel = [os.path.relpath(Path(m).resolve(), out_dir.resolve()) for m in members]
    write_text_atomic(out_dir / "members.txt", "".join(f"{m}\n" for m in rel))
    c = teachers[0].num_classes
    ks = [0] + (
        [config.topk] if config.topk > 0 else [k for k in config.k_candidates if k < c] if config.topk < 0 else []
    )
    measured = soft_target_fidelity(
        teachers, teachers[0], dev_feats, cmvn, frame_config, temperatures, ks, config.method, device
    )
    record: dict[float, dict] = {}
    for t, shares in measured.items():
        k = config.topk if config.topk > 0 else choose_k(shares, c, config.min_fidelity) if config.topk < 0 else 0
        record[t] = {"k": k, "fidelity": shares[k], "candidates": {str(kk): v for kk, v in shares.items()}}
        form = f"top-{k}" if k else "dense fp16"
        log.info("T=%g: %s soft targets keep %.1f%% of the exact soft loss on dev", t, form, 100 * shares[k])
        if shares[k] < config.min_fidelity:
            log.warning(
                "T=%g: the %s cache keeps only %.1f%% of the exact soft loss (< %.0f%%): the student will "
                "not see the ensemble at this temperature; use ensemble.topk=0 (dense) or train --online",
                t,
                form,
                100 * shares[k],
                100 * config.min_fidelity,
            )
    write_json_atomic(out_dir / "fidelity.json", {f"{t:g}": r for t, r in record.items()})
    dirs = {t: out_dir / f"soft_T{t:g}" for t in record}
    cache_soft_targets(
        teachers,
        train_feats,
        cmvn,
        frame_config,
        dirs,
        {t: r["k"] for t, r in record.items()},
        config.method,
        device,
        force,
        extra_meta={t: {"fidelity": r["fidelity"], "min_fidelity": config.min_fidelity} for t, r in record.items()},
    )
    mark_done(out_dir, "ensemble", {"kind": "ensemble", "members": rel})  # the system's kind, for evaluation
    return record


def read_members(ensemble_dir: str | Path) -> list[Path]:
    """The member checkpoints listed in ``<ensemble_dir>/members.txt`` (relative paths are relative to that folder)."""
    path = Path(ensemble_dir) / "members.txt"
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: lists no member checkpoints")
    members = [p if p.is_absolute() else (path.parent / p) for p in map(Path, lines)]
    missing = [str(m) for m in members if not m.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: member checkpoint(s) not found: {', '.join(missing)}")
    return members


def system_checkpoints(system_dir: str | Path) -> list[Path]:
    """The checkpoints of a system folder: the members ``members.txt`` lists, or its single ``best.pt``."""
    system_dir = Path(system_dir)
    if (system_dir / "members.txt").is_file():
        return read_members(system_dir)
    if (system_dir / "best.pt").is_file():
        return [system_dir / "best.pt"]
    raise FileNotFoundError(f"{system_dir}: neither best.pt nor members.txt (was the system trained?)")
