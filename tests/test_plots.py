"""Pictures: training curves from metrics.jsonl, one utterance through several bundles."""

import json
import logging

import pytest
from test_bundle import _bundle, _system, recipe  # noqa: F401 - recipe: the shared fixture

from asrdistill.cli import main
from asrdistill.plots import epoch_records, plot_training_curves, plot_utterance

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(d, epochs):
    (d / "log").mkdir(parents=True)
    rows = [{"step": 10 * e, "epoch": e, "loss": 2.0} for e in range(epochs)]  # step records are not epochs
    rows += [
        {"epoch": e, "step": 10 * e, "train_loss": 2.0 - e / 10, "dev_loss": 2.5, "dev_acc": 0.3 + e / 100}
        for e in range(epochs)
    ]
    (d / "log" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_training_curves_of_trained_systems(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    _metrics(tmp_path / "baseline", 3)
    _metrics(tmp_path / "student", 5)
    (tmp_path / "ensemble").mkdir()
    out = plot_training_curves([tmp_path / "baseline", tmp_path / "ensemble", tmp_path / "student"], tmp_path / "c.png")
    assert out.read_bytes()[:8] == PNG
    assert [r["epoch"] for r in epoch_records(tmp_path / "student")] == [0, 1, 2, 3, 4]  # epoch records only
    assert "ensemble: no per-epoch metrics" in caplog.text and "['baseline', 'student']" in caplog.text
    with pytest.raises(ValueError, match="has log/metrics.jsonl with epoch records"):
        plot_training_curves([tmp_path / "ensemble"], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_utterance_picture_from_bundles_and_the_command(recipe, tmp_path):
    d, task = recipe
    bundles = {
        name: _bundle(recipe, _system(tmp_path / name, task, seed=i), tmp_path / name / "bundle")
        for i, name in enumerate(("teacher", "student"))
    }
    out = plot_utterance("a", d / "fbank", bundles, tmp_path / "a.png", labels_dir=d / "ali", top=3)
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match=r"feats.manifest.json: no utterance 'zz'"):
        plot_utterance("zz", d / "fbank", bundles, tmp_path / "zz.png")
    for name in bundles:
        _metrics(tmp_path / name, 2)
    assert (
        main(
            [
                "plot",
                "--out",
                str(tmp_path / "pics"),
                "--systems",
                str(tmp_path / "teacher"),
                str(tmp_path / "student"),
                "--utt",
                "a",
                "--feats",
                str(d / "fbank"),
                "--labels",
                str(d / "ali"),
            ]
        )
        == 0
    )
    assert {p.name for p in (tmp_path / "pics").iterdir() if p.is_file()} == {"curves.png", "utt_a.png"}


def test_utterance_picture_runs_the_networks_on_that_utterance_alone(recipe, tmp_path, monkeypatch):
    import numpy as np

    from asrdistill.data.shards import ShardManifest, write_shard
    from asrdistill.decoding.bundle import System

    d, task = recipe
    rng = np.random.default_rng(0)
    feats = ShardManifest(tmp_path / "fbank", "feats", meta=ShardManifest.load(d / "fbank", "feats").meta)
    feats.shards.append(
        write_shard(
            tmp_path / "fbank" / "feats-000000.tar",
            [(u, {"feats": rng.normal(size=(40, 40)).astype(np.float16)}) for u in ("a", "b", "c", "d")],
        )
    )
    feats.save()
    seen = []
    posteriors = System.posteriors

    def spy(self, manifest):
        seen.append(manifest.keys)
        return posteriors(self, manifest)

    monkeypatch.setattr(System, "posteriors", spy)
    bundles = {"student": _bundle(recipe, _system(tmp_path / "student", task), tmp_path / "student" / "bundle")}
    plot_utterance("c", tmp_path / "fbank", bundles, tmp_path / "c.png")
    assert seen == [["c"]]


def test_the_readme_plot_example_names_a_test_utterance_of_the_default_recipe():
    import re
    from pathlib import Path

    import yaml

    from data_prep.synthetic import _plan, make_speakers

    repo = Path(__file__).resolve().parents[1]
    utt = re.search(r"asrdistill plot .*?--utt (\S+)", (repo / "README.md").read_text(), re.S).group(1)
    r = yaml.safe_load((repo / "recipes/librispeech/conf/synthetic_cpu.yaml").read_text())["recipe"]
    speakers = make_speakers(r["corpus_seed"], r["num_speakers"], r["dev_fraction"], r["test_fraction"])
    _, _, where = _plan(
        repo / "unused",
        speakers,
        r["hours"],
        r["corpus_seed"],
        r["dev_fraction"],
        r["test_fraction"],
        r.get("vocab_size", 0),
    )
    assert where.get(utt, ("none",))[0] == "test", utt
