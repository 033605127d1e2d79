"""Steps 3 and 4 of section 5: the generalist combined with its specialists, scored, and cached as soft targets.

:func:`combine`: per frame, the generalist's top classes activate the
specialists whose group holds them, and the full distribution ``q`` minimising
``KL(p_g || q) + sum_m KL(p_m || q_m)`` is found iteratively (``q_m``: q over
the group, plus q's mass outside it as the dustbin). :func:`specialist_stream`
yields ``(utt, log q, labels)`` like :func:`asrdistill.nnet.ensemble.posterior_stream`,
so frame accuracy (:func:`stream_accuracy`, :func:`evaluate_specialists`) and
the decoder read it like any system. :func:`cache_combination_targets` writes
the combination's soft targets, dense, for ``asrdistill train --soft DIR`` (one
student distilled from generalist + specialists).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig, FrameData, iter_utterances
from asrdistill.data.shards import SOFT_PREFIX, ShardManifest, write_shard
from asrdistill.fileio import mark_done, stage_done, write_json_atomic
from asrdistill.nnet.ensemble import fingerprint, posterior_stream, stored_target
from asrdistill.nnet.model import FrameDNN, autocast, load_model
from asrdistill.nnet.specialists.config import SpecialistConfig
from asrdistill.nnet.specialists.training import Specialist, load_specialists

__all__ = [
    "cache_combination_targets",
    "cache_specialist_targets",
    "combine",
    "evaluate_specialists",
    "specialist_stream",
    "stream_accuracy",
]

log = logging.getLogger(__name__)


def combine(gen_logp: Tensor, outputs: Sequence[tuple[Tensor, Tensor, Tensor]], steps: int = 10) -> Tensor:
    """Log of ``q`` (N, C) minimising ``KL(p_g || q) + sum_m KL(p_m || q_m)`` for every frame at once.

    ``gen_logp`` (N, C): the generalist's log-distribution. ``outputs``: per
    specialist ``(senones (S,), rows (n,), logp (n, S + 1))``: its group, the
    frames it is active on, and its log-distribution over the group then the
    dustbin. ``q_m`` is ``q`` on the group plus q's mass outside it.

    The update is the gradient of the objective with respect to q's logits,
    divided by the number of terms of each frame, applied to q itself:
    ``q <- q - grad``, i.e. ``q <- (p_g + sum_m p_m's group mass + q * R) / W``,
    where ``R`` spreads each specialist's dustbin mass over the senones outside
    its group in proportion to q and ``W`` (1 + the active specialists) is what
    the numerator sums to. This is the EM step for the dustbin split: it
    stays on the simplex, never increases the objective, keeps tiny
    probabilities exact (decoding reads their logs), and is exact after one
    step when no dustbin has mass (one specialist over all senones gives the
    average of the two distributions).
    """
    logp_all = gen_logp.float()
    if not outputs or not any(len(rows) for _, rows, _ in outputs):
        return logp_all
    device = logp_all.device
    # only frames with an active specialist change: iterate on those alone
    active = torch.unique(torch.cat([rows for _, rows, _ in outputs]))
    local = torch.full((logp_all.shape[0],), -1, dtype=torch.int64, device=device)
    local[active] = torch.arange(len(active), device=device)
    logp_g = logp_all[active]
    n, c = logp_g.shape
    group_mass = torch.zeros(n, c, device=device)  # sum_m p_m on its group's senones
    dust = torch.zeros(n, len(outputs), device=device)  # (N, M) each active specialist's dustbin mass
    outside = torch.ones(len(outputs), c, device=device)
    for m, (senones, rows, logp) in enumerate(outputs):
        if logp.shape != (len(rows), len(senones) + 1):
            raise ValueError(
                f"combine: specialist {m} gives {tuple(logp.shape)} for {len(rows)} frames and "
                f"{len(senones)} senones + dustbin"
            )
        p = logp.float().exp()
        rows = local[rows]
        group_mass[rows[:, None], senones[None, :]] += p[:, :-1]
        dust[rows, m] = p[:, -1]
        outside[m, senones] = 0.0
    log_fixed = torch.logaddexp(logp_g, group_mass.log())  # the terms that do not depend on q
    logq = logp_g
    for _ in range(steps):
        q_out = logq.exp() @ outside.T  # (N, M) q's mass outside each group
        spread = (dust / q_out.clamp(min=1e-30)) @ outside  # (N, C)
        logq = torch.log_softmax(torch.logaddexp(log_fixed, logq + spread.log()), dim=-1)  # the sum is W
    out = logp_all.clone()
    out[active] = logq
    return out


@torch.no_grad()
def specialist_stream(
    generalist: FrameDNN,
    specialists: Sequence[Specialist],
    feats: ShardManifest,
    cmvn: Cmvn,
    frames: FrameConfig,
    labels: ShardManifest | None = None,
    top_classes: int = 1,
    steps: int = 10,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """``(utt, log q (T, C) float32, labels or None)``: the generalist + specialists system over a set.

    The same form as :func:`asrdistill.nnet.ensemble.posterior_stream`: the
    decoder reads ``(utt, logq.cpu().numpy())`` and :func:`stream_accuracy`
    scores it. A specialist runs only on the frames it is active on.
    """
    device = torch.device(device)
    c = generalist.num_classes
    generalist.eval()
    member = torch.zeros(len(specialists), c, dtype=torch.bool, device=device)  # (M, C)
    for m, s in enumerate(specialists):
        s.model.eval()
        member[m, s.senones.to(device)] = True
    for utt, x, y in iter_utterances(feats, cmvn, frames, labels=labels, device=device):
        with autocast(device, bf16):
            gen = torch.log_softmax(generalist(x).float(), dim=-1)
            top = gen.topk(min(top_classes, c), dim=-1).indices  # (T, k)
            active = member.T[top].any(1)  # (T, M)
            outputs = []
            for m, s in enumerate(specialists):
                rows = torch.nonzero(active[:, m]).flatten()
                if len(rows):
                    outputs.append((s.senones.to(device), rows, torch.log_softmax(s.model(x[rows]).float(), dim=-1)))
        yield utt, combine(gen, outputs, steps), y


def stream_accuracy(stream: Iterable[tuple[str, Tensor, Tensor | None]], groups: Sequence[Sequence[int]] = ()) -> dict:
    """Frame accuracy and cross-entropy of a posterior stream, also split by whether the label is in a group.

    ``acc_in_groups`` covers the frames labelled with a senone of any group
    (what specialists can improve), ``acc_outside`` the rest; the analogue of
    the paper's Table 4 breakdown.
    """
    loss = 0.0
    hits = {"all": 0, "in": 0, "out": 0}
    counts = {"all": 0, "in": 0, "out": 0}
    grouped = None
    for _, logp, y in stream:
        if y is None:
            raise ValueError("stream_accuracy: the stream has no labels")
        if grouped is None:
            grouped = torch.zeros(logp.shape[-1], dtype=torch.bool, device=logp.device)
            for g in groups:
                grouped[torch.as_tensor(list(g), device=logp.device)] = True
        right = logp.argmax(-1) == y
        loss -= float(logp.gather(1, y[:, None]).double().sum())
        inside = grouped[y]
        for key, m in (("all", torch.ones_like(inside)), ("in", inside), ("out", ~inside)):
            hits[key] += int(right[m].sum())
            counts[key] += int(m.sum())
    if not counts["all"]:
        raise ValueError("stream_accuracy: no labelled frames")
    rate = lambda k: hits[k] / counts[k] if counts[k] else float("nan")  # noqa: E731
    return {
        "acc": rate("all"),
        "loss": loss / counts["all"],
        "frames": counts["all"],
        "acc_in_groups": rate("in"),
        "frames_in_groups": counts["in"],
        "acc_outside": rate("out"),
        "frames_outside": counts["out"],
    }


def evaluate_specialists(
    generalist_path: str | Path,
    out_dir: str | Path,
    data: FrameData,
    subsets: Sequence[str],
    config: SpecialistConfig,
    *,
    device: str | torch.device = "cpu",
) -> dict:
    """Frame accuracy of the generalist and of generalist + specialists on each labelled set, in and outside the groups.

    ``subsets``: names of ``data``'s labelled sets. Writes ``out_dir/frame_accuracy.json``.
    """
    cmvn, frames = data.cmvn(), data.frames
    out_dir = Path(out_dir)
    generalist = load_model(generalist_path, device)
    specialists = load_specialists(out_dir, device, generalist)
    groups = [s.senones.tolist() for s in specialists]
    result = {
        "specialists": len(specialists),
        "top_classes": config.top_classes,
        "combine_steps": config.combine_steps,
        "sets": {},
    }
    for name in subsets:
        feats, labels = data.labelled(name)
        gen = stream_accuracy(posterior_stream([generalist], feats, cmvn, frames, labels, device=device), groups)
        comb = stream_accuracy(
            specialist_stream(
                generalist, specialists, feats, cmvn, frames, labels, config.top_classes, config.combine_steps, device
            ),
            groups,
        )
        result["sets"][name] = {"generalist": gen, "generalist+specialists": comb}
        log.info(
            "%s: frame acc generalist %.2f%% -> with specialists %.2f%% (in groups %.2f%% -> %.2f%%, "
            "outside %.2f%% -> %.2f%%)",
            name,
            100 * gen["acc"],
            100 * comb["acc"],
            100 * gen["acc_in_groups"],
            100 * comb["acc_in_groups"],
            100 * gen["acc_outside"],
            100 * comb["acc_outside"],
        )
    write_json_atomic(out_dir / "frame_accuracy.json", result)
    return result


# --------------------------------------------------------------------------- 4. distilling the combination


@torch.no_grad()
def cache_combination_targets(
    generalist: FrameDNN,
    specialists: Sequence[Specialist],
    feats: ShardManifest,
    cmvn: Cmvn,
    frames: FrameConfig,
    out_dirs_by_temperature: dict[float, str | Path],
    config: SpecialistConfig,
    device: str | torch.device = "cpu",
    info: dict | None = None,
    force: bool = False,
) -> dict[float, ShardManifest]:
    """Dense soft targets of the combination on ``feats``, one folder per temperature, in one pass.

    Shards ``soft-NNNNNN.tar`` aligned with the feature shards hold
    ``<utt>.soft_logp.npy`` (T, C) float16: ``log_softmax(log q / T)``, the
    combination softened as if ``log q`` were logits. The manifest meta records
    temperature and num_classes, so ``asrdistill train --soft DIR --temperature T``
    distils from it. Dense: 2 bytes x C per frame on disk. A folder done with
    the same ``info`` is kept.
    """
    dirs = {float(t): Path(d) for t, d in out_dirs_by_temperature.items()}
    c = generalist.num_classes
    meta = {
        t: {
            "temperature": t,
            "num_classes": c,
            "source": "generalist+specialists",
            "feats": str(feats.path),
            "context": [frames.left, frames.right],
            "top_classes": config.top_classes,
            "combine_steps": config.combine_steps,
            **(info or {}),
        }
        for t in dirs
    }
    todo = {t: d for t, d in dirs.items() if stage_done(d, "soft", meta[t], force) is None}
    manifests = {t: ShardManifest(d, SOFT_PREFIX, meta=meta[t]) for t, d in todo.items()}
    for index, shard in enumerate(feats.shards if todo else []):
        one = ShardManifest(feats.directory, feats.prefix, [shard], feats.meta)
        per_t: dict[float, list] = {t: [] for t in todo}
        for utt, logq, _ in specialist_stream(
            generalist,
            specialists,
            one,
            cmvn,
            frames,
            top_classes=config.top_classes,
            steps=config.combine_steps,
            device=device,
        ):
            for t in todo:
                stored = stored_target(torch.log_softmax(logq / t, dim=-1), 0)  # dense, as the ensemble's
                per_t[t].append((utt, {name: v.cpu().numpy() for name, v in stored.items()}))
        for t, samples in per_t.items():
            if [u for u, _ in samples] != shard.keys:
                raise ValueError(f"{feats.directory / shard.name}: utterances differ from {feats.path}")
            manifests[t].shards.append(write_shard(todo[t] / f"{SOFT_PREFIX}-{index:06d}.tar", samples))
    for t, manifest in manifests.items():
        manifest.save()
        mark_done(todo[t], "soft", meta[t], meta[t])
        log.info(
            "%s: dense soft targets of generalist + %d specialists at T=%g for %d frames",
            todo[t],
            len(specialists),
            t,
            manifest.num_frames,
        )
    return {t: manifests[t] if t in manifests else ShardManifest.load(d, SOFT_PREFIX) for t, d in dirs.items()}


def cache_specialist_targets(
    generalist_path: str | Path,
    out_dir: str | Path,
    data: FrameData,
    temperatures: Sequence[float],
    config: SpecialistConfig,
    *,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> dict[float, ShardManifest]:
    """The caching stage: :func:`cache_combination_targets` of the trained specialists on ``data``'s train set
    into ``out_dir/soft_T<t>``.

    The marker records the weight fingerprints of the generalist and the
    specialists, so retraining any of them makes the cache stale.
    """
    out_dir = Path(out_dir)
    generalist = load_model(generalist_path, device)
    specialists = load_specialists(out_dir, device, generalist)
    info = {"generalist": fingerprint([generalist]), "specialists": fingerprint([s.model for s in specialists])}
    dirs = {float(t): out_dir / f"soft_T{t:g}" for t in temperatures}
    return cache_combination_targets(
        generalist, specialists, data.feats(data.train_set), data.cmvn(), data.frames, dirs, config, device, info, force
    )
