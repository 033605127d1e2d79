"""Ensemble posteriors, cached top-k targets, and the paper's effect: distillation beats noisy hard labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asrdistill.nnet.ensemble import (cache_soft_targets, combine_logits, ensemble_logprobs, frame_accuracy,
                                      load_teachers, topk_kl)
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.nnet.model import ModelConfig
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.nnet.train import DistillConfig, TrainConfig, train
from conftest import make_frame_set

torch.set_num_threads(1)
C, D = 8, 8
FRAMES = FrameConfig(left=1, right=1, batch_size=32, buffer_frames=500, prefetch=0)


def test_arithmetic_and_geometric_means():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 4, generator=g) for _ in range(3)]
    t = 2.0
    probs = torch.stack([torch.softmax(z / t, -1) for z in logits])
    arith = combine_logits(logits, t, "arithmetic").exp()
    torch.testing.assert_close(arith, probs.mean(0))
    geo = probs.prod(0) ** (1 / 3)
    torch.testing.assert_close(combine_logits(logits, t, "geometric").exp(), geo / geo.sum(-1, keepdim=True))
    models = [torch.nn.Linear(3, 4) for _ in range(2)]
    x = torch.randn(6, 3)
    torch.testing.assert_close(ensemble_logprobs(models, x, 1.0), combine_logits([m(x) for m in models]))
    with pytest.raises(ValueError, match="method"):
        combine_logits(logits, 1.0, "median")


def test_topk_kl():
    p = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.7, 0.1, 0.15, 0.05]], dtype=torch.float64)
    assert topk_kl(p, 4) == 0.0
    # row 0: rest {0.1, 0.1} spread evenly is exact; row 1: rest {0.1, 0.05} vs {0.075, 0.075}
    expected = 0.5 * (0.1 * math.log(0.1 / 0.075) + 0.05 * math.log(0.05 / 0.075))
    assert topk_kl(p, 2) == pytest.approx(expected, rel=1e-9)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Overlapping classes: 2000 clean frames for the teachers, 200 frames with 50% wrong labels for students."""
    root = tmp_path_factory.mktemp("kd")
    rng = np.random.default_rng(0)
    means = rng.standard_normal((C, D))
    make_frame_set(root / "big", rng, means, 40, frames=50)
    make_frame_set(root / "small", rng, means, 4, noise=0.5, frames=50)
    make_frame_set(root / "dev", rng, means, 20, frames=50)
    Cmvn(np.zeros(D), np.ones(D), 1).save(root / "cmvn.json")

    def config(subset: str, **kw) -> TrainConfig:
        d = dict(train_feats=str(root / subset / "feats"), train_labels=str(root / subset / "labels"),
                 dev_feats=str(root / "dev/feats"), dev_labels=str(root / "dev/labels"),
                 cmvn=str(root / "cmvn.json"), model=ModelConfig("tiny", hidden_dim=64), frames=FRAMES,
                 epochs=30, optimizer="adam", lr=3e-3, warmup_steps=0, schedule="constant", patience=0,
                 progress=False)
        d.update(kw)
        return TrainConfig(**d)

    results = [train(config("big", epochs=8, seed=seed), root / f"teacher_{seed}") for seed in (1, 2)]
    teachers = load_teachers([r["best_checkpoint"] for r in results])
    return root, config, teachers


def test_ensemble_frame_accuracy(problem):
    root, _, teachers = problem
    args = (ShardManifest.load(root / "dev/feats", "feats"), ShardManifest.load(root / "dev/labels", "pdf"),
            Cmvn.load(root / "cmvn.json"), FRAMES)
    single = [frame_accuracy([t], *args) for t in teachers]
    ensemble = frame_accuracy(teachers, *args)
    assert ensemble["frames"] == 1000 and all(s["frames"] == 1000 for s in single)
    assert min(s["acc"] for s in single) > 0.6
    assert ensemble["acc"] >= min(s["acc"] for s in single)
    assert ensemble["loss"] <= max(s["loss"] for s in single)   # the mixture's cross-entropy: convexity


def test_cache_soft_targets_one_pass_many_temperatures(problem):
    root, _, teachers = problem
    feats = ShardManifest.load(root / "small/feats", "feats")
    out = {1.0: root / "soft-t1", 3.0: root / "soft-t3"}
    manifests = cache_soft_targets(teachers, feats, Cmvn.load(root / "cmvn.json"), FRAMES, out, k=3)
    for t, manifest in manifests.items():
        assert manifest.meta["temperature"] == t and manifest.meta["k"] == 3 and manifest.meta["num_classes"] == C
        assert [s.keys for s in manifest.shards] == [s.keys for s in feats.shards]
        assert ShardManifest.load(out[t], "soft").num_frames == feats.num_frames
    (utt, a), = list(iter_shard(out[1.0] / "soft-000000.tar"))[:1]
    (_, b), = list(iter_shard(out[3.0] / "soft-000000.tar"))[:1]
    assert a["topk_idx"].shape == (50, 3) and a["topk_idx"].dtype == np.int32 and a["topk_prob"].dtype == np.float16
    assert (np.diff(a["topk_prob"].astype(np.float32), axis=1) <= 0).all()       # sorted
    assert (a["topk_prob"].astype(np.float32).sum(1) <= 1.001).all()
    assert a["topk_prob"][:, 0].mean() > b["topk_prob"][:, 0].mean()              # higher T is softer
    mtime = (out[1.0] / "soft-000000.tar").stat().st_mtime_ns
    cache_soft_targets(teachers, feats, Cmvn.load(root / "cmvn.json"), FRAMES, out, k=3)  # done: no-op
    assert (out[1.0] / "soft-000000.tar").stat().st_mtime_ns == mtime


def test_distilled_student_beats_hard_labels_and_topk_loses_little(problem, tmp_path):
    """Paper section 6 in miniature: few frames with noisy labels; soft targets regularise."""
    root, config, teachers = problem
    feats = ShardManifest.load(root / "small/feats", "feats")
    cmvn = Cmvn.load(root / "cmvn.json")
    topk = cache_soft_targets(teachers, feats, cmvn, FRAMES, {2.0: tmp_path / "top3"}, k=3)[2.0]
    cache_soft_targets(teachers, feats, cmvn, FRAMES, {2.0: tmp_path / "dense"}, k=C)
    hard = train(config("small"), tmp_path / "hard")
    kd = {name: train(config("small", distill=DistillConfig(soft_targets=str(tmp_path / name), hard_weight=0.2)),
                      tmp_path / f"kd-{name}") for name in ("top3", "dense")}
    assert kd["top3"]["best_dev_acc"] > hard["best_dev_acc"] + 0.1, (hard, kd)
    assert abs(kd["top3"]["best_dev_acc"] - kd["dense"]["best_dev_acc"]) < 0.05, kd
    assert topk.meta["k"] == 3
