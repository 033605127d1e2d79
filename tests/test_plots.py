"""Pictures: training curves from metrics.jsonl, one utterance through several bundles."""

import json
import logging

import pytest

from asrdistill.cli import main
from asrdistill.plots import epoch_records, plot_training_curves, plot_utterance
from test_bundle import _bundle, _system, recipe  # noqa: F401 - recipe: the shared fixture

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(d, epochs):
    (d / "log").mkdir(parents=True)
    rows = [{"step": 10 * e, "epoch": e, "loss": 2.0} for e in range(epochs)]  # step records are not epochs
    rows += [{"epoch": e, "step": 10 * e, "train_loss": 2.0 - e / 10, "dev_loss": 2.5, "dev_acc": 0.3 + e / 100}
             for e in range(epochs)]
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
    bundles = {name: _bundle(recipe, _system(tmp_path / name, task, seed=i), tmp_path / name / "bundle")
               for i, name in enumerate(("teacher", "student"))}
    out = plot_utterance("a", d / "fbank", bundles, tmp_path / "a.png", labels_dir=d / "ali", top=3)
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match=r"feats.manifest.json: no utterance 'zz'"):
        plot_utterance("zz", d / "fbank", bundles, tmp_path / "zz.png")
    for name in bundles:
        _metrics(tmp_path / name, 2)
    assert main(["plot", "--out", str(tmp_path / "pics"), "--systems", str(tmp_path / "teacher"),
                 str(tmp_path / "student"), "--utt", "a", "--feats", str(d / "fbank"), "--labels", str(d / "ali")]) == 0
    assert {p.name for p in (tmp_path / "pics").iterdir() if p.is_file()} == {"curves.png", "utt_a.png"}
