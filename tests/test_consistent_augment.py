"""Consistent augmentation (Beyer et al. 2022): the online teachers score exactly the perturbed input the student
trains on, mixup is a convex combination of two batch rows, cached targets refuse it, and a resumed run draws the
same augmentation."""

from __future__ import annotations

import pytest
import torch
from test_train import _config, _params, data  # noqa: F401 - data: the module-scoped frame set (fixture)

import asrdistill.nnet.train as train_mod
from asrdistill.config import from_dict
from asrdistill.data.frames import Batch, FrameStream
from asrdistill.nnet.consistent import AugmentConfig, Mix, augment, mixed_cross_entropy
from asrdistill.nnet.ensemble import load_teachers
from asrdistill.nnet.model import FrameDNN, ModelConfig
from asrdistill.nnet.targets import train_config
from asrdistill.nnet.train import DistillConfig, train

torch.set_num_threads(1)
W, D = 4, 5  # test_train's frames (left 2, right 1) and feature dim
MIXUP = AugmentConfig(mixup_alpha=0.4)


@pytest.fixture(scope="module")
def teachers(data, tmp_path_factory) -> list[str]:  # noqa: F811 - data is the fixture
    """Two hard-label teachers trained for one epoch (seeds 1 and 2)."""
    root = tmp_path_factory.mktemp("teachers")
    return [train(_config(data, epochs=1, seed=s), root / f"t{s}")["best_checkpoint"] for s in (1, 2)]


def _online(data, teachers, augment_config: AugmentConfig = MIXUP, **kw):  # noqa: F811
    distill = DistillConfig(source="online", teachers=teachers, hard_weight=0.3, augment=augment_config)
    return _config(data, distill=distill, **kw)


def _batch(n: int = 8, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, W * D, generator=gen), torch.arange(n) % 3, None, None)


def test_mixup_is_a_convex_combination_of_two_rows_of_the_batch():
    batch = _batch()
    clean = batch.x.clone()
    out, mix = augment(batch, MIXUP, (0, 0, 0, 0), W)
    assert torch.equal(batch.x, clean)  # the stream's batch is left as it was
    assert sorted(mix.partner.tolist()) == list(range(8))  # the partners are a permutation of the batch
    assert ((mix.weight >= 0) & (mix.weight <= 1)).all() and len(set(mix.weight.tolist())) == 8  # one lam per frame
    w = mix.weight[:, None]
    assert torch.allclose(out.x, w * clean + (1 - w) * clean[mix.partner], atol=1e-6)
    assert not torch.allclose(out.x, clean)
    assert torch.equal(out.y, batch.y)  # labels untouched: the hard loss mixes them

    _, per_batch = augment(batch, AugmentConfig(mixup_alpha=0.4, mixup_per="batch"), (0, 0, 0, 0), W)
    assert len(set(per_batch.weight.tolist())) == 1
    again, same = augment(batch, MIXUP, (0, 0, 0, 0), W)
    other, _ = augment(batch, MIXUP, (0, 0, 0, 1), W)
    assert torch.equal(again.x, out.x) and torch.equal(same.partner, mix.partner)  # the key decides every draw
    assert not torch.equal(other.x, out.x)


def test_frequency_masks_zero_a_band_of_channels_on_every_frame_of_a_window():
    batch = _batch(64)
    out, mix = augment(batch, AugmentConfig(freq_mask=2), (0, 0, 0, 0), W)
    assert mix is None
    x, clean = out.x.view(64, W, D), batch.x.view(64, W, D)
    zeroed = (x == 0).all(dim=1)  # (B, D): channels masked on all W frames
    assert torch.equal(x[~zeroed[:, None, :].expand_as(x)], clean[~zeroed[:, None, :].expand_as(clean)])
    widths = zeroed.sum(1)
    assert widths.max() <= 2 and widths.min() == 0 and widths.max() == 2
    for row in zeroed:  # one contiguous band
        idx = row.nonzero()[:, 0]
        assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)


def test_mixed_cross_entropy_weights_both_labels_as_the_inputs_were_mixed():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    mix = Mix(torch.tensor([1, 0, 3, 2]), torch.tensor([1.0, 0.0, 0.25, 0.5]))
    ce = torch.nn.functional.cross_entropy
    own, other = ce(logits, labels, reduction="none"), ce(logits, labels[mix.partner], reduction="none")
    want = (mix.weight * own + (1 - mix.weight) * other).mean()  # frame i's logits against both its labels
    assert torch.allclose(mixed_cross_entropy(logits, labels, mix), want)


def test_the_hard_term_of_a_mixed_batch_weights_both_labels(teachers):
    """All weight on the hard term: the loss of a mixed batch is the mixed cross-entropy, not the first label's."""
    torch.manual_seed(0)
    student = FrameDNN(ModelConfig("tiny"), W * D, 6)
    batch, mix = augment(_batch(16), MIXUP, (0, 0, 0, 0), W)
    distill = DistillConfig(source="online", teachers=teachers, hard_weight=1.0, augment=MIXUP)
    loss = train_mod.compute_loss(student, batch, distill, load_teachers(teachers), mix=mix)
    assert torch.allclose(loss, mixed_cross_entropy(student(batch.x), batch.y, mix))
    assert not torch.allclose(loss, torch.nn.functional.cross_entropy(student(batch.x), batch.y))


def test_augmentation_with_cached_soft_targets_is_refused(data, teachers, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"distill\.augment.*source='online'.*distill\.soft_targets \(exp/soft\)"):
        DistillConfig(soft_targets="exp/soft", augment=AugmentConfig(freq_mask=4))
    with pytest.raises(ValueError, match=r"mixup_alpha must be >= 0"):
        from_dict(DistillConfig, {"source": "online", "teachers": ["t.pt"], "augment": {"mixup_alpha": -1}})
    roots = dict(feats=data, labels=data, train_set="train", dev_set="dev")
    with pytest.raises(ValueError, match=r"distill\.augment"):
        train_config(None, "student", ["train.distill.augment.mixup_alpha=0.4"], soft=tmp_path / "soft", **roots)
    # the command line's --online ENSEMBLE_DIR with --set: online teachers = the members, augmented
    (tmp_path / "members.txt").write_text("\n".join(teachers) + "\n")
    cfg = train_config(None, "student", ["train.distill.augment.mixup_alpha=0.4"], online=tmp_path, **roots)
    assert cfg.distill.source == "online" and cfg.distill.teachers == teachers
    assert cfg.distill.augment == AugmentConfig(mixup_alpha=0.4)


def test_teachers_score_exactly_the_students_augmented_input(data, teachers, tmp_path, monkeypatch):  # noqa: F811
    """Every training step: the teachers' input is the student's, bit for bit, and it is the stream's clean batch
    mixed once as the step's ``mix`` says (a second augmentation, or clean input to the teachers, fails)."""
    steps: list[dict] = []
    real_epoch, real_step, real_forward = FrameStream.epoch, train_mod.train_step, FrameDNN.forward

    def epoch(self, *args, **kwargs):
        for batch in real_epoch(self, *args, **kwargs):
            steps.append({"clean": batch.x.clone(), "student": [], "teachers": []})
            yield batch

    def step(*args, **kwargs):
        steps[-1]["mix"] = args[7] if len(args) > 7 else kwargs["mix"]
        steps[-1]["inside"] = True
        try:
            return real_step(*args, **kwargs)
        finally:
            steps[-1]["inside"] = False

    def forward(self, x):
        if steps and steps[-1].get("inside"):
            steps[-1]["student" if self.training else "teachers"].append(x.detach().clone())
        return real_forward(self, x)

    monkeypatch.setattr(FrameStream, "epoch", epoch)
    monkeypatch.setattr(train_mod, "train_step", step)
    monkeypatch.setattr(FrameDNN, "forward", forward)
    train(_online(data, teachers, AugmentConfig(mixup_alpha=0.4, freq_mask=0), epochs=1), tmp_path / "student")
    trained = [s for s in steps if "mix" in s]
    assert len(trained) == 50  # 800 frames / 16 per batch
    for s in trained:
        (student,), mix, clean = s["student"], s["mix"], s["clean"]
        assert len(s["teachers"]) == 2 and all(torch.equal(t, student) for t in s["teachers"])
        w = mix.weight[:, None]
        assert torch.allclose(student, w * clean + (1 - w) * clean[mix.partner], atol=1e-6)
        assert not torch.allclose(student, clean)


def test_resumed_run_draws_the_same_augmentation(data, teachers, tmp_path, monkeypatch):  # noqa: F811
    """Online teachers + mixup + frequency masks: a run killed mid-epoch and resumed ends with the parameters of an
    uninterrupted one (which learns: chance is 1/6)."""
    config = _online(data, teachers, AugmentConfig(mixup_alpha=0.4, freq_mask=1), epochs=2)
    ref = train(config, tmp_path / "ref")
    assert ref["best_dev_acc"] > 0.5

    real = train_mod.compute_loss
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 80:  # mid epoch 1; the last checkpoint is at step 77
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "compute_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run")
    monkeypatch.setattr(train_mod, "compute_loss", real)
    train(config, tmp_path / "run")
    for name, value in _params(tmp_path / "ref/last.pt").items():
        assert torch.equal(value, _params(tmp_path / "run/last.pt")[name]), name


def test_augmentation_off_leaves_a_runs_identity_as_before_the_option_existed():
    from asrdistill.config import to_dict
    from asrdistill.nnet.checkpoint import comparable
    from asrdistill.nnet.train import DistillConfig, TrainConfig

    off = TrainConfig(distill=DistillConfig(soft_targets="soft_T2"))
    recorded_before = to_dict(off)
    del recorded_before["distill"]["augment"]  # what .train.done and last.pt held before distill.augment existed
    assert comparable(recorded_before) == comparable(off)  # finished students are reused, not retrained
    on = TrainConfig(distill=DistillConfig(source="online", teachers=["t.pt"], augment=AugmentConfig(mixup_alpha=0.4)))
    assert comparable(on)["distill"]["augment"]["mixup_alpha"] == 0.4
