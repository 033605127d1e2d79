"""Specialists (paper section 5): confusable groups, specialists that beat the generalist on them, the combination."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_frame_set

from asrdistill.aligner.tree import ContextTree, TreeNode
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig, FrameData
from asrdistill.data.lang import Lang
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.nnet.ensemble import posterior_stream
from asrdistill.nnet.model import ModelConfig, load_model
from asrdistill.nnet.specialists import (
    SpecialistConfig,
    cache_combination_targets,
    combine,
    group_senones,
    load_specialists,
    read_groups,
    specialist_stream,
    stream_accuracy,
    train_specialists,
)
from asrdistill.nnet.train import TrainConfig, train

torch.set_num_threads(1)
C, D = 8, 8
PAIRS = ([0, 1], [2, 3])  # classes whose means are close: the generalist confuses them
FRAMES = FrameConfig(left=0, right=0, batch_size=32, buffer_frames=500, prefetch=0)


# --------------------------------------------------------------------------- combination: closed forms


def _random_logp(n: int, c: int, seed: int) -> torch.Tensor:
    return torch.log_softmax(2 * torch.randn(n, c, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_one_specialist_over_all_classes_gives_the_average():
    n = 6
    p_g, p_s = _random_logp(n, C, 0), _random_logp(n, C + 1, 1)
    p_s = torch.cat([torch.log_softmax(p_s[:, :C], -1), torch.full((n, 1), -torch.inf)], dim=1)  # empty dustbin
    rows = torch.arange(n)
    q = combine(p_g, [(torch.arange(C), rows, p_s)], steps=1).exp()
    torch.testing.assert_close(q, (p_g.exp() + p_s[:, :C].exp()) / 2, atol=1e-6, rtol=1e-5)
    # a frame no specialist is active on keeps the generalist's distribution
    q = combine(p_g, [(torch.arange(C), rows[:3], p_s[:3])]).exp()
    torch.testing.assert_close(q[3:], p_g[3:].exp())


def _objective(logq: torch.Tensor, p_g: torch.Tensor, outputs) -> torch.Tensor:
    """KL(p_g || q) + sum_m KL(p_m || q_m), written out class by class (independent of the implementation)."""
    q = logq.exp()
    total = (p_g.exp() * (p_g - logq)).sum(-1)
    for senones, rows, logp in outputs:
        outside = torch.ones(q.shape[-1], dtype=torch.bool)
        outside[senones] = False
        q_m = torch.cat([q[rows][:, senones], q[rows][:, outside].sum(-1, keepdim=True)], dim=-1)
        kl = (logp.exp() * (logp - q_m.log())).sum(-1)
        total = total.index_add(0, rows, kl)
    return total


def test_combination_with_dustbins_is_the_minimiser():
    n = 5
    p_g = _random_logp(n, C, 2)
    outputs = [
        (torch.tensor([0, 1]), torch.tensor([0, 1, 2]), _random_logp(3, 3, 3)),
        (torch.tensor([1, 4, 6]), torch.tensor([1, 3, 4]), _random_logp(3, 4, 4)),
    ]
    logq = combine(p_g, outputs, steps=200)
    torch.testing.assert_close(logq.exp().sum(-1), torch.ones(n))
    # stationary: the gradient of the objective over q's logits vanishes
    z = logq.clone().requires_grad_(True)
    _objective(torch.log_softmax(z, -1), p_g, outputs).sum().backward()
    assert z.grad.abs().max() < 1e-5
    # and every perturbation of q costs more (the objective is convex in q)
    best = _objective(logq, p_g, outputs)
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        other = torch.log_softmax(logq + 0.1 * torch.randn(n, C, generator=g), -1)
        assert bool((_objective(other, p_g, outputs) >= best - 1e-6).all())
    # few steps already get close: each step never increases the objective
    previous = _objective(p_g, p_g, outputs)
    for steps in (1, 2, 5, 10):
        value = _objective(combine(p_g, outputs, steps=steps), p_g, outputs)
        assert bool((value <= previous + 1e-6).all())
        previous = value
    assert float((previous - best).max()) < 1e-3


# --------------------------------------------------------------------------- groups and specialists


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """8 classes, two pairs with close means; a generalist trained briefly (it confuses the pairs)."""
    root = tmp_path_factory.mktemp("spec")
    rng = np.random.default_rng(0)
    means = 3 * rng.standard_normal((C, D))
    for a, b in PAIRS:
        means[b] = means[a] + 1.2 * np.eye(D)[a]
    for name, utts in (("train", 40), ("dev", 20)):
        make_frame_set(root / name, rng, means, utts, frames=50)
    Cmvn(np.zeros(D), np.ones(D), 1).save(root / "cmvn.json")
    cfg = TrainConfig(
        train_feats=str(root / "train/feats"),
        train_labels=str(root / "train/labels"),
        dev_feats=str(root / "dev/feats"),
        dev_labels=str(root / "dev/labels"),
        cmvn=str(root / "cmvn.json"),
        model=ModelConfig("tiny", hidden_dim=32),
        frames=FRAMES,
        epochs=1,
        optimizer="adam",
        lr=3e-3,
        warmup_steps=0,
        schedule="constant",
        patience=0,
        progress=False,
    )
    result = train(cfg, root / "generalist")
    sets = {
        name: (ShardManifest.load(root / name / "feats", "feats"), ShardManifest.load(root / name / "labels", "pdf"))
        for name in ("train", "dev")
    }
    return root, result["best_checkpoint"], sets, Cmvn.load(root / "cmvn.json")


def _data(root: Path) -> FrameData:
    """``root/<set>/{feats,labels}`` (as make_frame_set writes them) seen as ``fbank/<set>`` and ``ali/<set>``."""
    for name in ("train", "dev"):
        for kind, link in (("feats", "fbank"), ("labels", "ali")):
            (root / link).mkdir(exist_ok=True)
            if not (root / link / name).exists():
                (root / link / name).symlink_to(root / name / kind, target_is_directory=True)
    return FrameData(root / "fbank", root / "ali", "train", "dev", frames=FRAMES, cmvn_path=root / "cmvn.json")


def _tree_and_lang() -> tuple[ContextTree, Lang]:
    phones = ["<eps>", "SIL", "SPN", "AA", "AE", "AH", "AO"]
    tree = ContextTree([TreeNode(pdf=0)], C, [[(3 + j // 2, j % 2)] for j in range(C)])  # pdf j: phone 3 + j // 2
    return tree, Lang(phones, ["<eps>"], [])


@pytest.fixture(scope="module")
def grouped(problem):
    root, generalist, sets, cmvn = problem
    config = SpecialistConfig(num_groups=6, max_group_size=4, epochs=6, lr=3e-3)
    tree, lang = _tree_and_lang()
    groups = group_senones(generalist, _data(root), config, root / "spec", tree=tree, lang=lang)
    return root, generalist, sets, cmvn, config, groups


def test_groups_hold_the_confusable_pairs(grouped):
    root, generalist, sets, cmvn, config, groups = grouped
    for pair in PAIRS:
        assert any(set(pair) <= set(g.senones) for g in groups), (pair, [g.senones for g in groups])
    assert all(len(g.senones) <= config.max_group_size for g in groups)
    data = json.loads((root / "spec" / "groups.json").read_text())
    assert data["dev_frames"] == 1000 and data["dev_errors"] > 0
    first = data["groups"][0]
    assert first["phones"][str(first["senones"][0])] == [["AA", "AE", "AH", "AO"][first["senones"][0] // 2]]
    # the pairs are where the generalist errs: the groups cover most of its errors
    assert sum(g["error_share_within"] for g in data["groups"]) > 0.5
    assert read_groups(root / "spec" / "groups.json")[0] == groups
    # unchanged inputs: the file is kept; a changed config clusters again
    mtime = (root / "spec" / "groups.json").stat().st_mtime_ns
    tree, lang = _tree_and_lang()
    group_senones(generalist, _data(root), config, root / "spec", tree=tree, lang=lang)
    assert (root / "spec" / "groups.json").stat().st_mtime_ns == mtime
    other = SpecialistConfig(num_groups=5, max_group_size=4)
    group_senones(generalist, _data(root), other, root / "other", tree=tree, lang=lang)
    assert json.loads((root / "other" / "groups.json").read_text())["info"]["config"]["num_groups"] == 5


@pytest.fixture(scope="module")
def trained(grouped):
    root, generalist, sets, cmvn, config, groups = grouped
    summary = train_specialists(generalist, _data(root), config, root / "spec")
    return root, generalist, sets, cmvn, config, groups, summary


def test_specialists_beat_the_generalist_on_their_groups(trained):
    root, generalist, sets, cmvn, config, groups, summary = trained
    assert not summary["skipped"] and len(summary["trained"]) == len(groups)
    for pair in PAIRS:
        (gid,) = [g.id for g in groups if set(pair) <= set(g.senones)]
        r = summary["trained"][str(gid)]
        assert r["dev_frames"] > 100
        assert r["dev_acc"] > r["generalist_dev_acc"] + 0.03, r
    # a second run reuses the trained specialists
    mtime = (root / "spec" / "spec_00" / "final.pt").stat().st_mtime_ns
    train_specialists(generalist, _data(root), config, root / "spec")
    assert (root / "spec" / "spec_00" / "final.pt").stat().st_mtime_ns == mtime


def test_dustbin_is_corrected_for_oversampling(tmp_path):
    """Uninformative frames: a specialist can learn only the prior, seen as 50:50 in its batches; corrected, 25:75."""
    from asrdistill.data.frames import iter_utterances
    from asrdistill.nnet.specialists import SenoneGroup, load_specialist, train_specialist

    rng = np.random.default_rng(1)
    for name, utts in (("train", 20), ("dev", 10)):
        make_frame_set(tmp_path / name, rng, np.zeros((C, D)), utts, frames=50)
    Cmvn(np.zeros(D), np.ones(D), 1).save(tmp_path / "cmvn.json")
    cfg = TrainConfig(
        train_feats=str(tmp_path / "train/feats"),
        train_labels=str(tmp_path / "train/labels"),
        dev_feats=str(tmp_path / "dev/feats"),
        dev_labels=str(tmp_path / "dev/labels"),
        cmvn=str(tmp_path / "cmvn.json"),
        model=ModelConfig("tiny", hidden_dim=16),
        frames=FRAMES,
        epochs=1,
        optimizer="adam",
        lr=3e-3,
        warmup_steps=0,
        schedule="constant",
        progress=False,
    )
    path = train(cfg, tmp_path / "generalist")["best_checkpoint"]
    sets = [
        ShardManifest.load(tmp_path / n / kind, prefix)
        for n in ("train", "dev")
        for kind, prefix in (("feats", "feats"), ("labels", "pdf"))
    ]
    cmvn = Cmvn.load(tmp_path / "cmvn.json")
    group = SenoneGroup(0, [0, 1])
    result = train_specialist(
        load_model(path), group, _data(tmp_path), SpecialistConfig(epochs=4, lr=3e-3), tmp_path / "spec"
    )
    model = load_specialist(tmp_path / "spec" / "final.pt", generalist=load_model(path)).model
    dustbin = torch.cat(
        [torch.softmax(model(x), -1)[:, -1] for _, x, _ in iter_utterances(sets[2], cmvn, FRAMES, labels=sets[3])]
    )
    share = 1 - result["train_group_share"]
    assert 0.7 < share < 0.8
    assert float(dustbin.mean()) == pytest.approx(share, abs=0.05)


def test_soft_targets_from_the_generalist_train_a_specialist(grouped):
    root, generalist, sets, cmvn, config, groups = grouped
    out = root / "soft"
    out.mkdir()
    (out / "groups.json").write_bytes((root / "spec" / "groups.json").read_bytes())
    soft = SpecialistConfig(num_groups=6, max_group_size=4, epochs=6, lr=3e-3, targets="soft", hard_weight=0.5)
    summary = train_specialists(generalist, _data(root), soft, out)
    r = summary["trained"]["0"]
    assert r["dev_acc"] > r["generalist_dev_acc"], r


def test_combination_is_a_system_like_any_other(trained):
    root, generalist_path, sets, cmvn, config, groups, _ = trained
    generalist = load_model(generalist_path)
    specialists = load_specialists(root / "spec")
    feats, labels = sets["dev"]
    pairs = [g.senones for g in groups]
    base = stream_accuracy(posterior_stream([generalist], feats, cmvn, FRAMES, labels), pairs)
    stream = list(
        specialist_stream(
            generalist, specialists, feats, cmvn, FRAMES, labels, config.top_classes, config.combine_steps
        )
    )
    comb = stream_accuracy(stream, pairs)
    assert comb["frames"] == base["frames"] == 1000
    assert comb["acc_in_groups"] > base["acc_in_groups"] + 0.03, (base, comb)
    assert comb["acc"] > base["acc"], (base, comb)
    for utt, logq, _ in stream:  # the decoder's input: finite log posteriors summing to one
        assert logq.dtype == torch.float32 and bool(torch.isfinite(logq).all())
        torch.testing.assert_close(logq.exp().sum(-1), torch.ones(len(logq)))
    # without any active specialist the system is the generalist
    none = list(specialist_stream(generalist, [], feats, cmvn, FRAMES, labels))
    assert stream_accuracy(none, pairs) == base


def test_combination_targets_cache_for_the_student(trained):
    root, generalist_path, sets, cmvn, config, groups, _ = trained
    generalist, specialists = load_model(generalist_path), load_specialists(root / "spec")
    feats, _ = sets["dev"]
    out = cache_combination_targets(generalist, specialists, feats, cmvn, FRAMES, {2.0: root / "soft_T2"}, config)
    manifest = out[2.0]
    assert manifest.meta["temperature"] == 2.0 and manifest.meta["num_classes"] == C
    assert manifest.num_frames == feats.num_frames
    expected = {
        u: torch.log_softmax(lq / 2, -1)
        for u, lq, _ in specialist_stream(
            generalist, specialists, feats, cmvn, FRAMES, top_classes=config.top_classes, steps=config.combine_steps
        )
    }
    for path in manifest.shard_paths:
        for utt, sample in iter_shard(path):
            assert sample["soft_logp"].dtype == np.float16 and sample["soft_logp"].shape == (50, C)
            np.testing.assert_allclose(sample["soft_logp"].astype(np.float32), expected[utt].numpy(), atol=2e-2)


# --------------------------------------------------------------------------- the commands, end to end


def test_commands_from_groups_to_a_distilled_student(problem, tmp_path):
    import shutil

    import yaml

    from asrdistill.cli import main

    root, _, _, _ = problem
    for name in ("train", "dev"):
        shutil.copytree(root / name / "feats", tmp_path / "fbank" / name)
        shutil.copytree(root / name / "labels", tmp_path / "ali" / name)
    shutil.copy(root / "cmvn.json", tmp_path / "fbank" / "train" / "cmvn.json")
    tree, lang = _tree_and_lang()
    tree.save(tmp_path / "tree.json")
    lang.save(tmp_path / "lang")
    frames = {"left": 0, "right": 0, "batch_size": 32, "buffer_frames": 500, "prefetch": 0}
    config = {
        "train": {
            "frames": frames,
            "model": {"preset": "tiny", "hidden_dim": 32},
            "epochs": 1,
            "optimizer": "adam",
            "lr": 3e-3,
            "warmup_steps": 0,
            "schedule": "constant",
            "patience": 0,
            "progress": False,
            "device": "cpu",
        },
        "specialists": {"num_groups": 6, "max_group_size": 4, "epochs": 6, "lr": 3e-3},
    }
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(config))
    data = [
        "--config",
        str(tmp_path / "conf.yaml"),
        "--feats",
        str(tmp_path / "fbank"),
        "--labels",
        str(tmp_path / "ali"),
        "--train-set",
        "train",
        "--dev-set",
        "dev",
        "--device",
        "cpu",
    ]
    spec = ["--generalist", str(tmp_path / "baseline"), "--out", str(tmp_path / "specialists")]
    assert main(["train", *data, "--out", str(tmp_path / "baseline")]) == 0
    assert (
        main(
            [
                "specialists-groups",
                *data,
                *spec,
                "--tree",
                str(tmp_path / "tree.json"),
                "--lang",
                str(tmp_path / "lang"),
            ]
        )
        == 0
    )
    assert main(["specialists-train", *data, *spec]) == 0
    assert main(["specialists-eval", *data, *spec, "--test-set", "train"]) == 0
    metrics = json.loads((tmp_path / "specialists" / "frame_accuracy.json").read_text())
    assert set(metrics["sets"]) == {"dev", "train"}
    dev = metrics["sets"]["dev"]
    assert dev["generalist+specialists"]["acc_in_groups"] > dev["generalist"]["acc_in_groups"]
    assert main(["specialists-cache", *data, *spec, "--temperatures", "2"]) == 0
    soft = tmp_path / "specialists" / "soft_T2"
    assert main(["train", *data, "--soft", str(soft), "--temperature", "2", "--out", str(tmp_path / "student")]) == 0
    assert json.loads((tmp_path / "student" / "train_result.json").read_text())["best_dev_acc"] > 0.5
    # a generalist with other weights makes the specialists stale: refused, not silently combined
    assert main(["train", *data, "--out", str(tmp_path / "baseline"), "--seed", "7", "--force"]) == 0
    assert main(["specialists-eval", *data, *spec]) == 1


# --------------------------------------------------------------------------- evaluation: a system like any other


def _eval_layout(root, sets: dict, cmvn_path) -> tuple:
    """``fbank/<set>``, ``ali/<set>`` and ``data/<set>/text`` as ``asrdistill evaluate`` reads them."""
    import shutil

    for name, (feats, labels) in sets.items():
        shutil.copytree(feats.directory, root / "fbank" / name)
        shutil.copytree(labels.directory, root / "ali" / name)
        (root / "data" / name).mkdir(parents=True)
        (root / "data" / name / "text").write_text("")
    shutil.copy(cmvn_path, root / "fbank" / "train" / "cmvn.json")
    return root / "fbank", root / "ali", root / "data"


def test_evaluate_scores_a_specialists_folder_through_its_stream(trained, tmp_path):
    """``evaluate`` on exp/specialists: the generalist named by specialists.json, combined with its specialists
    by specialist_stream; frame accuracy as that stream gives it, better than the generalist's own evaluation."""
    from asrdistill.decoding.decode import DecodeConfig
    from asrdistill.evaluate import EvalConfig, evaluate_system
    from asrdistill.results import COMBINED

    root, generalist_path, sets, cmvn, config, groups, _ = trained
    generalist_path = Path(generalist_path)
    roots = _eval_layout(tmp_path, sets, root / "cmvn.json")

    def run(system, combination=config):
        data = FrameData(roots[0], roots[1], "train", "dev", "train", FRAMES)
        return evaluate_system(
            system,
            data,
            data_root=roots[2],
            decode_config=DecodeConfig(nj=1),
            config=EvalConfig(decode=False),
            specialists=combination,
        )

    comb, gen = run(root / "spec"), run(generalist_path.parent)
    generalist, specialists = load_model(generalist_path), load_specialists(root / "spec")
    feats, labels = sets["dev"]
    expected = stream_accuracy(
        specialist_stream(
            generalist, specialists, feats, cmvn, FRAMES, labels, config.top_classes, config.combine_steps
        )
    )
    assert comb.kind == COMBINED and gen.kind == "baseline"  # from its .train.done, whatever its folder is called
    assert comb.dev_frame_acc == pytest.approx(100 * expected["acc"], abs=1e-9)
    assert comb.dev_frame_acc > gen.dev_frame_acc + 1 and comb.test_frame_acc > gen.test_frame_acc
    assert comb.extra["generalist"] == generalist_path.parent.name and comb.extra["specialists"] == len(groups)
    assert comb.params == generalist.num_params() + sum(s.model.num_params() for s in specialists)
    with np.load(root / "spec" / "frames_dev.npz") as z:  # the per-utterance counts the results' intervals read
        assert int(z["labelled"].sum()) == 1000 and 100 * z["correct"].sum() / 1000 == pytest.approx(comb.dev_frame_acc)
    # the combination's settings are part of its identity: the same ones reuse metrics.json, others evaluate again
    mtime = (root / "spec" / "metrics.json").stat().st_mtime_ns
    run(root / "spec")
    assert (root / "spec" / "metrics.json").stat().st_mtime_ns == mtime
    one_step = run(root / "spec", SpecialistConfig(num_groups=6, max_group_size=4, combine_steps=1))
    assert (root / "spec" / "metrics.json").stat().st_mtime_ns != mtime
    assert one_step.extra["inputs"]["combination"] == {"top_classes": 1, "combine_steps": 1}


def test_evaluate_decodes_generalist_plus_specialists_through_the_graph(tmp_path):
    """The WER path: a specialists folder over the toy task's senones decodes through HCLG like any system
    (dev acoustic-scale sweep, test decode, per-utterance errors for the intervals)."""
    import math

    from test_graph import toy_task

    from asrdistill.data.datadir import DataDir
    from asrdistill.decoding.decode import DecodeConfig
    from asrdistill.evaluate import evaluate_system

    _, tree, _, _ = toy_task(tmp_path / "task")
    rng = np.random.default_rng(3)
    c, d = tree.num_pdfs, 40
    means = 3 * rng.standard_normal((c, d))
    for name, utts in (("train", 24), ("dev", 8), ("test", 8)):
        make_frame_set(tmp_path / "sets" / name, rng, means, utts, frames=40)
    Cmvn(np.zeros(d), np.ones(d), 1).save(tmp_path / "cmvn.json")
    sets = {
        name: (
            ShardManifest.load(tmp_path / "sets" / name / "feats", "feats"),
            ShardManifest.load(tmp_path / "sets" / name / "labels", "pdf"),
        )
        for name in ("train", "dev", "test")
    }
    feats_root, labels_root, data_root = _eval_layout(tmp_path, sets, tmp_path / "cmvn.json")
    for name in ("dev", "test"):  # references: the toy lexicon's words
        utts = sets[name][0].keys
        DataDir(
            wav={u: f"{u}.flac" for u in utts},
            text={u: "BA KA" for u in utts},
            utt2spk={u: u.split("-")[0] for u in utts},
        ).save(data_root / name)
    cfg = TrainConfig(
        train_feats=str(feats_root / "train"),
        train_labels=str(labels_root / "train"),
        dev_feats=str(feats_root / "dev"),
        dev_labels=str(labels_root / "dev"),
        cmvn=str(feats_root / "train" / "cmvn.json"),
        model=ModelConfig("tiny", hidden_dim=16),
        frames=FRAMES,
        epochs=1,
        optimizer="adam",
        lr=3e-3,
        warmup_steps=0,
        schedule="constant",
        progress=False,
    )
    generalist = train(cfg, tmp_path / "exp" / "baseline_seed1")["best_checkpoint"]
    config = SpecialistConfig(num_groups=2, max_group_size=8, epochs=1)
    data = FrameData(feats_root, labels_root, "train", "dev", "test", FRAMES)
    group_senones(generalist, data, config, tmp_path / "exp" / "specialists")
    assert train_specialists(generalist, data, config, tmp_path / "exp" / "specialists")["trained"]
    result = evaluate_system(
        tmp_path / "exp" / "specialists",
        data,
        data_root=data_root,
        graph_dir=tmp_path / "task" / "graph",
        decode_config=DecodeConfig(nj=1, sweep_scales=[0.1, 0.2]),
        specialists=config,
    )
    assert all(
        math.isfinite(v)
        for v in (result.dev_wer, result.test_wer, result.dev_frame_acc, result.test_frame_acc, result.decode_rtf)
    )
    assert result.extra["acoustic_scale"] in (0.1, 0.2)
    per_utt = json.loads((tmp_path / "exp" / "specialists" / "decode_test" / "wer.json").read_text())["per_utt"]
    assert set(per_utt) == set(sets["test"][0].keys)
