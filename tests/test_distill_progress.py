"""How far a model is from its ensemble, epoch by epoch, and what ended its training.

Distillation is function matching: a student is judged by how close it comes to
its teachers (KL, top-1 agreement), and a schedule must not stop it while it is
still improving. These tests check the measure on a case with a known answer,
that every distilled run records it, and that a cut-off run is flagged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_frame_set

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.data.shards import ShardManifest
from asrdistill.nnet.ensemble import EnsembleConfig, build_ensemble, frame_accuracy, reference_posteriors
from asrdistill.nnet.model import FrameDNN, ModelConfig
from asrdistill.nnet.train import DistillConfig, TrainConfig, still_improving, train

torch.set_num_threads(1)
C, D = 6, 5
FRAMES = FrameConfig(left=2, right=1, batch_size=16, buffer_frames=200, prefetch=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    means = 2 * rng.standard_normal((C, D))
    make_frame_set(root / "train", rng, means, 20, noise=0.3)
    make_frame_set(root / "dev", rng, means, 6)
    Cmvn(np.zeros(D), np.ones(D), 1).save(root / "cmvn.json")
    return root


def _config(data: Path, **kw) -> TrainConfig:
    d = dict(
        train_feats=str(data / "train/feats"),
        train_labels=str(data / "train/labels"),
        dev_feats=str(data / "dev/feats"),
        dev_labels=str(data / "dev/labels"),
        cmvn=str(data / "cmvn.json"),
        model=ModelConfig("tiny"),
        frames=FRAMES,
        epochs=2,
        optimizer="adam",
        lr=3e-3,
        warmup_steps=5,
        schedule="cosine",
        patience=0,
        checkpoint_every=1000,
        log_every=1000,
        progress=False,
    )
    d.update(kw)
    return TrainConfig(**d)


def _sets(data: Path, name: str) -> tuple[ShardManifest, ShardManifest]:
    return ShardManifest.load(data / name / "feats", "feats"), ShardManifest.load(data / name / "labels", "pdf")


def _epochs(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "log" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "dev_acc" in r]


def test_agreement_and_kl_against_a_known_reference(data):
    """Against itself a model has KL 0 and agrees on every frame; against a reference that always puts 0.9 on
    senone 0, the agreement is the share of frames the model gives to senone 0 and the KL is computed by hand."""
    feats, labels = _sets(data, "dev")
    cmvn = Cmvn.load(data / "cmvn.json")
    torch.manual_seed(0)
    model = FrameDNN(ModelConfig("tiny"), FRAMES.window * D, C).eval()
    own = reference_posteriors([model], feats, labels, cmvn, FRAMES)
    same = frame_accuracy([model], feats, labels, cmvn, FRAMES, reference=own)
    assert same["agree"] == 1.0 and abs(same["kl"]) < 1e-3  # fp16 storage of the reference

    p = np.full(C, 0.1 / (C - 1))
    p[0] = 0.9
    fixed = {utt: torch.from_numpy(np.log(np.tile(p, (len(x), 1)))).half() for utt, x in own.items()}
    got = frame_accuracy([model], feats, labels, cmvn, FRAMES, reference=fixed)
    logq = torch.cat([own[u].float() for u in own]).numpy()  # the model's own log posteriors
    ref = np.log(p.astype(np.float16).astype(np.float32))
    assert got["agree"] == pytest.approx(np.mean(logq.argmax(1) == 0))
    assert got["kl"] == pytest.approx(np.mean((np.exp(ref) * (ref - logq)).sum(1)), abs=2e-3)
    assert got["acc"] == same["acc"]  # accuracy does not depend on the reference


def test_still_improving_flags_a_run_whose_last_epoch_was_still_gaining():
    rising = [{"dev_acc": a} for a in (0.30, 0.40, 0.45, 0.47)]
    levelled = [{"dev_acc": a} for a in (0.30, 0.40, 0.45, 0.4505)]
    fell = [{"dev_acc": a} for a in (0.30, 0.46, 0.45, 0.455)]
    assert still_improving(rising, 0.001)
    assert not still_improving(levelled, 0.001)
    assert not still_improving(fell, 0.001)
    assert not still_improving(rising[:1], 0.001)


def test_a_stop_rule_that_ends_a_still_improving_run_is_caught(data, tmp_path):
    """newbob with a huge stop threshold stops after its second halving epoch whatever the gain: if the run was
    still gaining there, the result says so, and the last epoch's record names the rule that ended it."""
    config = _config(
        data,
        schedule="newbob",
        epochs=6,
        optimizer="sgd",
        lr=0.02,
        warmup_steps=0,
        newbob_threshold=1.0,
        stop_threshold=1.0,
        patience=0,
    )
    result = train(config, tmp_path / "cut")
    epochs = _epochs(tmp_path / "cut")
    assert result["end_reason"] == "newbob_stop" and epochs[-1]["end"] == "newbob_stop"
    assert len(epochs) == 3 < config.epochs
    gained = epochs[-1]["dev_acc"] - max(r["dev_acc"] for r in epochs[:-1])
    assert gained > config.improve_tol, "fixture: the cut-off run should still be gaining at its last epoch"
    assert result["still_improving"]
    assert all("end" not in r for r in epochs[:-1])


def test_every_distilled_run_records_its_closeness_to_the_ensemble_each_epoch(data, tmp_path):
    """Cached soft targets from an ensemble folder (stage 8): the student finds its teachers through the folder
    and logs KL and agreement on dev and on a train sample each epoch; a hard-label run with ``reference`` too;
    one without logs none. The budget, not a stop rule, ended both."""
    members = [train(_config(data, seed=s, epochs=1), tmp_path / f"t{s}")["best_checkpoint"] for s in (1, 2)]
    (train_feats, _), (dev_feats, _) = _sets(data, "train"), _sets(data, "dev")
    build_ensemble(
        members,
        train_feats,
        dev_feats,
        Cmvn.load(data / "cmvn.json"),
        FRAMES,
        [2.0],
        tmp_path / "ensemble",
        EnsembleConfig(topk=0),
    )
    student = train(
        _config(data, seed=3, distill=DistillConfig(temperature=2.0, soft_targets=str(tmp_path / "ensemble/soft_T2"))),
        tmp_path / "student",
    )
    independent = train(_config(data, seed=4, reference=str(tmp_path / "ensemble")), tmp_path / "independent")
    alone = train(_config(data, seed=5), tmp_path / "alone")
    keys = {"dev_kl", "dev_agree", "train_kl", "train_agree", "train_acc"}
    for out, result in ((tmp_path / "student", student), (tmp_path / "independent", independent)):
        epochs = _epochs(out)
        assert len(epochs) == 2 and all(keys <= r.keys() for r in epochs), out
        assert all(0 <= r["dev_agree"] <= 1 and r["dev_kl"] >= 0 for r in epochs)
        assert epochs[-1]["end"] == "budget" == result["end_reason"] and result["budget"] == 2
    assert not keys & _epochs(tmp_path / "alone")[-1].keys() and alone["end_reason"] == "budget"
    # the train sample is what the student was taught on: it matches its teachers there better than on dev
    last = _epochs(tmp_path / "student")[-1]
    assert last["train_agree"] >= last["dev_agree"] - 0.1
