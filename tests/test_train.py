"""Trainer: exact resume after a kill, clear errors, data_fraction, NaN stop, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_frame_set

import asrdistill.nnet.train as train_mod
from asrdistill import cli
from asrdistill.config import to_dict
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig, FrameData
from asrdistill.data.shards import ShardManifest
from asrdistill.nnet import targets
from asrdistill.nnet.model import ModelConfig
from asrdistill.nnet.train import DistillConfig, TrainConfig, train

torch.set_num_threads(1)
C, D = 6, 5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    means = 2 * rng.standard_normal((C, D))
    make_frame_set(root / "train", rng, means, 20)
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
        model=ModelConfig("tiny", dropout=0.2),
        frames=FrameConfig(left=2, right=1, batch_size=16, buffer_frames=200, prefetch=0),
        epochs=3,
        optimizer="adam",
        lr=3e-3,
        warmup_steps=5,
        schedule="newbob",
        checkpoint_every=7,
        log_every=5,
        progress=False,
    )
    d.update(kw)
    return TrainConfig(**d)


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_after_kill_matches_uninterrupted_run(data, tmp_path, monkeypatch):
    config = _config(data)
    ref = train(config, tmp_path / "ref")
    assert ref["epochs"] == 3 and ref["steps"] == 3 * 50  # 800 frames / 16 per batch
    assert (tmp_path / "ref" / "best.pt").is_file()
    records = [json.loads(line) for line in (tmp_path / "ref/log/metrics.jsonl").read_text().splitlines()]
    assert any("dev_acc" in r for r in records) and any("frames_per_sec" in r for r in records)

    # kill in the middle of epoch 1 (step 80: the last checkpoint is at step 77, mid-epoch)
    real = train_mod.compute_loss
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 80:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "compute_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run")
    monkeypatch.setattr(train_mod, "compute_loss", real)
    ckpt = torch.load(tmp_path / "run/last.pt", map_location="cpu", weights_only=True)
    assert (ckpt["state"]["step"], ckpt["state"]["epoch"], ckpt["state"]["batches_done"]) == (77, 1, 27)

    resumed = train(config, tmp_path / "run")
    for name, ref_value in _params(tmp_path / "ref/last.pt").items():
        assert torch.equal(ref_value, _params(tmp_path / "run/last.pt")[name]), name
    assert resumed["best_dev_acc"] == ref["best_dev_acc"] and resumed["steps"] == ref["steps"]
    assert resumed["best_dev_acc"] > 0.6  # it did learn (chance is 1/6)
    # a finished run is a no-op
    assert train(config, tmp_path / "run") == resumed


def test_resume_with_other_config_names_checkpoint(data, tmp_path):
    train(_config(data, epochs=1), tmp_path)
    (tmp_path / ".train.done").unlink()
    with pytest.raises(ValueError, match=r"last\.pt.*different configuration.*lr"):
        train(_config(data, epochs=1, lr=0.5), tmp_path)


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    real = train_mod.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 12 else loss

    monkeypatch.setattr(train_mod, "compute_loss", poisoned)
    with pytest.raises(FloatingPointError, match="step 12"):
        train(_config(data), tmp_path)
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["state"]["step"] == 7
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_missing_label_shard_is_named(data, tmp_path):
    import shutil

    labels = tmp_path / "labels"
    shutil.copytree(data / "train/labels", labels)
    (labels / "pdf-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="pdf-000001.tar"):
        train(_config(data, train_labels=str(labels)), tmp_path / "run")


def test_soft_target_mismatches_are_named(data, tmp_path):
    soft = ShardManifest(tmp_path / "soft", "soft", meta={"temperature": 1.0, "num_classes": C})
    soft.save()
    with pytest.raises(ValueError, match=r"soft\.manifest\.json.*temperature 1\.0"):
        train(_config(data, distill=DistillConfig(soft_targets=str(tmp_path / "soft"))), tmp_path / "a")
    soft.meta = {"temperature": 2.0, "num_classes": C + 1}
    soft.save()
    with pytest.raises(ValueError, match=r"soft\.manifest\.json.*7 senones"):
        train(_config(data, distill=DistillConfig(soft_targets=str(tmp_path / "soft"))), tmp_path / "b")


def test_online_distillation_and_teacher_mismatch(data, tmp_path):
    teacher = train(_config(data, epochs=1), tmp_path / "teacher")["best_checkpoint"]
    student = train(
        _config(
            data,
            epochs=2,
            model=ModelConfig("tiny", hidden_dim=16),
            distill=DistillConfig(source="online", teachers=[teacher], hard_weight=0.3),
        ),
        tmp_path / "student",
    )
    assert student["best_dev_acc"] > 0.5
    with pytest.raises(ValueError, match=r"teacher.*best\.pt.*6 senones, but the student has 20 / 9"):
        train(
            _config(data, num_classes=9, distill=DistillConfig(source="online", teachers=[teacher])), tmp_path / "bad"
        )


def test_data_fraction_is_a_fixed_subset_of_utterances(data, tmp_path):
    a = train(_config(data, epochs=1, data_fraction=0.3, fraction_passes=1), tmp_path / "a")
    b = train(_config(data, epochs=1, data_fraction=0.3, seed=5), tmp_path / "b")
    sub_a = ShardManifest.load(tmp_path / "a/subset", "pdf")
    sub_b = ShardManifest.load(tmp_path / "b/subset", "pdf")
    assert 0 < sub_a.num_frames < 800 and sub_a.num_frames % 40 == 0
    assert [s.num_frames for s in sub_a.shards] == [s.num_frames for s in sub_b.shards]
    assert a["train_frames"] == sub_a.num_frames
    # by default an epoch on the subset trains about as many frames as one on the full data (800): the one
    # stopping rule then allows a fraction run as many updates as a full-data run
    passes = round(800 / sub_a.num_frames)
    assert passes > 1 and b["train_frames"] == passes * sub_a.num_frames


def test_realigned_labels_make_a_new_subset(data, tmp_path):
    from asrdistill.data.shards import iter_shard, write_shard

    labels = tmp_path / "labels"
    shutil.copytree(data / "train/labels", labels)
    config = _config(data, epochs=1, data_fraction=0.3, train_labels=str(labels))
    train(config, tmp_path / "run")
    man = ShardManifest.load(labels, "pdf")
    for path in man.shard_paths:  # a realignment: same utterances and frame counts, other senones
        rows = [(utt, {"pdf": ((s["pdf"] + 1) % C).astype(np.int32)}) for utt, s in iter_shard(path)]
        write_shard(path, rows)
    train(config, tmp_path / "run")
    subset = ShardManifest.load(tmp_path / "run/subset", "pdf")
    new = {u: s["pdf"] for p in man.shard_paths for u, s in iter_shard(p)}
    kept = [(u, s["pdf"]) for p in subset.shard_paths for u, s in iter_shard(p) if len(s["pdf"])]
    assert kept and all(np.array_equal(pdf, new[u]) for u, pdf in kept)


def test_cli_train_reads_role_section_and_overrides(data, tmp_path):
    """``asrdistill train`` is the one front door: ``train`` refined by the role's section, then ``--set``."""
    for subset in ("train", "dev"):
        shutil.copytree(data / subset / "feats", tmp_path / "fbank" / subset)
        shutil.copytree(data / subset / "labels", tmp_path / "ali" / subset)
    shutil.copy(data / "cmvn.json", tmp_path / "fbank/train/cmvn.json")
    section = {
        k: v
        for k, v in to_dict(_config(data)).items()
        if k not in ("model", "frames", "train_feats", "train_labels", "dev_feats", "dev_labels", "cmvn")
    }
    section["frames"] = {"left": 2, "right": 1, "batch_size": 64}
    section["model"] = {"preset": "tiny"}
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump({"train": section, "student": {"epochs": 5, "frames": {"batch_size": 32}}}))
    argv = [
        "train",
        "--config",
        str(path),
        "--feats",
        str(tmp_path / "fbank"),
        "--labels",
        str(tmp_path / "ali"),
        "--train-set",
        "train",
        "--dev-set",
        "dev",
        "--role",
        "student",
        "--set",
        "train.epochs=1",
        "--out",
        str(tmp_path / "run"),
    ]
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "run/train_result.json").read_text())
    saved = json.loads((tmp_path / "run/train_config.json").read_text())
    assert result["epochs"] == 1 and result["steps"] == 25  # 800 frames / 32 per batch (role), 1 epoch (--set)
    assert saved["frames"]["left"] == 2 and saved["frames"]["batch_size"] == 32


def test_a_systems_kind_is_its_own_record_not_its_folder_name(data, tmp_path):
    """The results table's kind is what the training recorded (``.train.done``): renaming the folder keeps it, and
    the recipe's ``train.kind=sweep`` relabels a finished run without training it again."""
    from asrdistill.decoding.decode import DecodeConfig
    from asrdistill.evaluate import EvalConfig, evaluate_system

    for subset in ("train", "dev"):
        shutil.copytree(data / subset / "feats", tmp_path / "fbank" / subset)
        shutil.copytree(data / subset / "labels", tmp_path / "ali" / subset)
    shutil.copy(data / "cmvn.json", tmp_path / "fbank/train/cmvn.json")
    config = _config(data, epochs=1)

    def kind(system: Path) -> str:
        data = FrameData(tmp_path / "fbank", tmp_path / "ali", "train", "dev", "dev", config.frames)
        return evaluate_system(
            system, data, data_root=tmp_path / "data", decode_config=DecodeConfig(nj=1), config=EvalConfig(decode=False)
        ).kind

    first = train(config, tmp_path / "student_seed1")  # hard labels: a baseline, whatever the folder says
    assert first["kind"] == "baseline" and kind(tmp_path / "student_seed1") == "baseline"
    (tmp_path / "student_seed1").rename(tmp_path / "ensemble")
    assert kind(tmp_path / "ensemble") == "baseline"
    again = train(dataclasses.replace(config, kind="sweep"), tmp_path / "ensemble")
    assert again["steps"] == first["steps"] and kind(tmp_path / "ensemble") == "sweep"
    assert train_mod.run_kind(_config(data, data_fraction=0.5)) == "fraction_hard"


@pytest.mark.parametrize("fidelity, warned", [(0.5, True), (None, True), (0.99, False)])
def test_training_from_a_lossy_cache_warns_loudly(tmp_path, caplog, fidelity, warned):
    meta = {"temperature": 5.0, "num_classes": C, **({} if fidelity is None else {"fidelity": fidelity})}
    ShardManifest(tmp_path, "soft", [], meta).save()
    with caplog.at_level("WARNING", logger=targets.__name__):
        targets.soft_manifest(DistillConfig(temperature=5.0, soft_targets=str(tmp_path)), C)
    assert any("!!!" in r.getMessage() and "T=5" in r.getMessage() for r in caplog.records) == warned
