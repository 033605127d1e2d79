"""No code runs from untrusted files, no stale result is reused, no misconfiguration passes silently."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_frame_set

from asrdistill import cli
from asrdistill.config import load_section, parse_overrides, role_section
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.fileio import identity, is_done, mark_done, read_done, write_json_atomic
from asrdistill.nnet.model import FrameDNN, ModelConfig, load_model
from asrdistill.nnet.train import TrainConfig, train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates a file: the proof that a load ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _crafted(path: Path, marker: Path, base: dict | None = None) -> Path:
    torch.save({**(base or {}), "payload": _Payload(marker)}, path)
    return path


def test_crafted_checkpoint_cannot_run_code_through_load_model(tmp_path):
    marker = tmp_path / "PWNED"
    model = FrameDNN(ModelConfig("tiny"), 12, 5)
    ckpt = _crafted(tmp_path / "best.pt", marker, {**model.describe(), "model": model.state_dict()})
    with pytest.raises(ValueError, match=r"best.pt: not a usable FrameDNN checkpoint: refused"):
        load_model(ckpt)
    assert not marker.exists()


def test_crafted_hmm_model_cannot_run_code(tmp_path):
    from asrdistill.aligner.hmm import HmmModel

    marker = tmp_path / "PWNED"
    with pytest.raises(ValueError, match=r"final.pt: not a usable GMM-HMM model: refused"):
        HmmModel.load(_crafted(tmp_path / "final.pt", marker))
    assert not marker.exists()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    means = 2 * rng.standard_normal((4, 3))
    make_frame_set(root / "train", rng, means, 8, frames=20)
    make_frame_set(root / "dev", rng, means, 4, frames=20)
    Cmvn(np.zeros(3), np.ones(3), 1).save(root / "cmvn.json")
    return root


def _config(data: Path, **kw) -> TrainConfig:
    d = dict(
        train_feats=str(data / "train/feats"),
        train_labels=str(data / "train/labels"),
        dev_feats=str(data / "dev/feats"),
        dev_labels=str(data / "dev/labels"),
        cmvn=str(data / "cmvn.json"),
        model=ModelConfig("tiny"),
        frames=FrameConfig(left=1, right=1, batch_size=16, buffer_frames=100, prefetch=0),
        epochs=2,
        optimizer="adam",
        lr=3e-3,
        warmup_steps=0,
        checkpoint_every=3,
        log_every=2,
        progress=False,
    )
    d.update(kw)
    return TrainConfig(**d)


def test_crafted_last_pt_cannot_run_code_through_resume(data, tmp_path):
    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    out.mkdir()
    _crafted(out / "last.pt", marker, {"config": {}, "state": {}})
    with pytest.raises(ValueError, match="last.pt: not a usable checkpoint: refused"):
        train(_config(data), out)
    assert not marker.exists()


def test_checkpoint_holds_only_plain_data_and_resume_does_not_repeat_metrics(data, tmp_path):
    config = _config(data)
    ref = tmp_path / "ref"
    train(config, ref)
    ckpt = torch.load(ref / "last.pt", map_location="cpu", weights_only=True)  # RNG states as tensors
    assert isinstance(ckpt["rng"][0]["numpy"][1], torch.Tensor)  # rank 0: numpy MT keys
    ref_lines = (ref / "log/metrics.jsonl").read_text().splitlines()
    # a run killed after step 7 was logged but before step 9's checkpoint, then resumed from step 6's
    run = tmp_path / "run"
    train(_config(data, epochs=1), run)
    (run / ".train.done").unlink()
    c = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    c["config"]["epochs"] = 2
    torch.save(c, run / "last.pt")
    with open(run / "log/metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": c["state"]["step"] + 1, "epoch": 1, "loss": 9.0}) + "\n")
        f.write('{"step": 99, "epo')  # a line cut by the kill
    train(config, run)
    steps = [(r["step"], "dev_acc" in r) for r in map(json.loads, (run / "log/metrics.jsonl").read_text().splitlines())]
    assert len(steps) == len(set(steps)) == len(ref_lines)
    assert steps == [(r["step"], "dev_acc" in r) for r in map(json.loads, ref_lines)]


def test_finished_training_is_redone_when_config_or_data_change(data, tmp_path, caplog):
    out = tmp_path / "run"
    first = train(_config(data), out)
    assert "fingerprint" in read_done(out, "train") and "fingerprint" not in first
    assert train(_config(data, log_every=1), out) == first  # operational field: reused
    caplog.set_level("INFO")
    second = train(_config(data, lr=1e-3), out)
    assert "train was done from other inputs (changed: config)" in caplog.text
    assert second["steps"] == first["steps"]
    changed = tmp_path / "data2"
    import shutil

    shutil.copytree(data, changed)
    Cmvn(np.ones(3), np.ones(3), 1).save(changed / "cmvn.json")
    caplog.clear()
    train(_config(changed, lr=1e-3, train_feats=str(data / "train/feats")), out)
    assert "(changed: cmvn, config)" in caplog.text  # config: it names the copied folders


def test_identity_changes_with_content_and_ignores_markers(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.json").write_text("1")
    base = identity({"x": 1}, d)
    mark_done(d, "stage", {"x": 1})
    assert identity({"x": 1}, d) == base  # dot-files (markers, temporaries) are not inputs
    assert identity({"x": 2}, d) != base
    (d / "a.json").write_text("2")
    assert identity({"x": 1}, d) != base
    mark_done(tmp_path, "s", {}, {"d": d})
    assert is_done(tmp_path, "s") and read_done(tmp_path, "s")["input_fingerprints"] == {"d": identity(d)}


def test_json_is_strict(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"a": math.nan, "b": [math.inf, 1.5]})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5]}


# --------------------------------------------------------------------------- config and CLI


def test_unknown_section_is_an_error(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown section 'trian'"):
        load_section(conf, "train", TrainConfig)
    with pytest.raises(ValueError, match="unknown section 'trian'"):
        parse_overrides(["trian.epochs=3"])
    with pytest.raises(ValueError, match="unknown section 'studnet'"):
        role_section(None, "train", "studnet")


def test_dotted_nested_override(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  frames: {left: 3, right: 2}\n")
    cfg = load_section(conf, "train", TrainConfig, ["train.frames.left=10", "train.model.preset=tiny"])
    assert cfg.frames.left == 10 and cfg.frames.right == 2 and cfg.model.preset == "tiny"
    with pytest.raises(ValueError, match="lefty"):
        load_section(conf, "train", TrainConfig, ["train.frames.lefty=10"])


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "asrdistill.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def _one_error_line(proc: subprocess.CompletedProcess, cause: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and cause in errors[0], proc.stderr


def test_cli_errors_are_one_line(tmp_path):
    _one_error_line(_cli("config-get", "recipe.train_set"), "needs --config")
    conf = tmp_path / "c.yaml"
    conf.write_text("trian: {}\n")
    _one_error_line(_cli("config-get", "--config", str(conf), "recipe.x"), "unknown section 'trian'")
    # every command reads the executor section first: a bad config is one line there too
    _one_error_line(
        _cli("features", "--config", str(conf), str(tmp_path / "d"), str(tmp_path / "f"), cwd=tmp_path),
        "unknown section 'trian'",
    )
    _one_error_line(
        _cli("features", "--config", str(tmp_path / "missing.yaml"), "d", "f", cwd=tmp_path), "missing.yaml"
    )
    if not torch.cuda.is_available():
        _one_error_line(_cli("mono", "--device", "cuda", "d", "l", "f", "e"), "no CUDA GPU is available")
    proc = _cli("--debug", "config-get", "recipe.train_set")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _kaldi_feats(directory: Path):
    from asrdistill.data.shards import ShardManifest, write_shard

    man = ShardManifest(directory, "feats")
    man.shards.append(
        write_shard(directory / man.shard_name(0), [("utt1", {"feats": np.zeros((5, 4), dtype=np.float16)})])
    )
    man.save()
    return man


def test_scp_pipe_is_not_run_without_opt_in(tmp_path):
    from test_kaldi_import import _tree

    _kaldi_feats(tmp_path / "fbank")
    tree = ["--tree", str(_tree(tmp_path / "tree.json", 4))]
    scp = tmp_path / "pdf.scp"
    scp.write_text("utt1 touch PWNED |\n")
    proc = _cli("import-ali", *tree, str(scp), str(tmp_path / "fbank"), str(tmp_path / "ali"), cwd=tmp_path)
    _one_error_line(proc, "are shell commands")
    assert not (tmp_path / "PWNED").exists()
    assert "--allow-pipes" in _cli("import-ali", "--help").stdout
    # with the opt-in the command runs (and its output is no alignment: a clear error, not exit 0)
    proc = _cli(
        "import-ali", *tree, "--allow-pipes", str(scp), str(tmp_path / "fbank"), str(tmp_path / "ali"), cwd=tmp_path
    )
    assert (tmp_path / "PWNED").exists() and proc.returncode != 0


def test_import_with_every_length_wrong_or_without_a_tree_fails(tmp_path):
    import kaldiio
    from test_kaldi_import import _tree

    _kaldi_feats(tmp_path / "fbank")
    kaldiio.save_ark(str(tmp_path / "pdf.ark"), {"utt1": np.zeros(3, dtype=np.int32)})
    args = [str(tmp_path / "pdf.ark"), str(tmp_path / "fbank"), str(tmp_path / "ali")]
    _one_error_line(
        _cli("import-ali", "--tree", str(_tree(tmp_path / "tree.json", 4)), *args), "no alignment matches the features"
    )
    _one_error_line(_cli("import-ali", *args), "import-ali needs --tree")


def test_every_skipping_command_accepts_force_and_run_sh_passes_it():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    run_sh = (REPO / "recipes/librispeech/run.sh").read_text().replace("\\\n", " ")
    for name in ("synth-corpus", "prepare", "features", "mono", "tri", "align", "train", "ensemble", "evaluate"):
        assert any("--force" in a.option_strings for a in commands[name]._actions), name
        # train may run under torchrun; stages 7, 9, 10 and 12 echo their command lines into a run-jobs file
        starts = (f"asrdistill {name} ", f'echo "{name} ') + (("$train_cmd $common ",) if name == "train" else ())
        calls = [line for line in run_sh.splitlines() if line.strip().startswith(starts)]
        assert calls and all("$force" in line for line in calls), name


def test_run_sh_help_and_caller_relative_paths(tmp_path):
    proc = subprocess.run(["bash", "recipes/librispeech/run.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "--force-stage" in proc.stdout
    proc = subprocess.run(
        ["bash", str(REPO / "recipes/librispeech/run.sh"), "--config", "mine.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and f"no config {tmp_path / 'mine.yaml'}" in proc.stderr


# --------------------------------------------------------------------------- changed inputs are never reused


def test_mono_and_align_redo_when_inputs_change(tmp_path, caplog):
    from test_mono import _cfg, _make_corpus, _write_feats

    from asrdistill.aligner.align import AlignConfig, align_subset
    from asrdistill.aligner.hmm import HmmModel
    from asrdistill.aligner.mono import train_mono

    caplog.set_level("INFO")
    lang, feats, text, _ = _make_corpus(tmp_path, n_utts=20)
    man = _write_feats(tmp_path / "fbank", feats)
    cfg = _cfg(num_iters=2, realign_iters=[1])
    train_mono(man, text, lang, tmp_path / "exp", cfg)
    train_mono(man, text, lang, tmp_path / "exp", _cfg(num_iters=2, realign_iters=[1], nj=2))  # runtime field
    assert "mono already done" in caplog.text and "doing it again" not in caplog.text
    changed = {**text, sorted(text)[0]: "DE"}
    model = train_mono(man, changed, lang, tmp_path / "exp", cfg)
    assert "mono was done from other inputs (changed: text)" in caplog.text

    loaded = HmmModel.load(tmp_path / "exp/final.pt")
    align_subset(man, changed, lang, model, tmp_path / "ali", AlignConfig(nj=1))
    caplog.clear()
    align_subset(man, changed, lang, loaded, tmp_path / "ali", AlignConfig(nj=1))  # the same model, from disk
    assert "align already done" in caplog.text
    align_subset(man, changed, lang, loaded, tmp_path / "ali", AlignConfig(nj=1, optional_silence_prob=0.2))
    assert "(changed: config)" in caplog.text
    caplog.clear()
    feats2 = dict(feats)
    feats2.pop(sorted(feats2)[-1])
    align_subset(
        _write_feats(tmp_path / "fbank", feats2),
        changed,
        lang,
        loaded,
        tmp_path / "ali",
        AlignConfig(nj=1, optional_silence_prob=0.2),
    )
    assert "(changed: feats)" in caplog.text


def test_triphone_training_redone_when_the_monophone_alignment_changes(tmp_path, caplog):
    from test_triphone import _corpus, _lang, _mono_stand_in

    from asrdistill.aligner.tree import TreeConfig
    from asrdistill.aligner.triphone import TriConfig, train_triphone
    from asrdistill.data.shards import ShardManifest, iter_shard, write_shard

    caplog.set_level("INFO")
    lang = _lang()
    feats, text, _, mono_ali = _corpus(tmp_path, "train", 16, seed=1)
    mono = _mono_stand_in(feats)
    cfgs = (
        TreeConfig(num_leaves=20, min_occupancy=20),
        TriConfig(num_iters=2, max_gaussians=30, realign_iters=[1], nj=1),
    )
    train_triphone(mono_ali, feats, text, lang, mono, tmp_path / "tri", *cfgs)
    train_triphone(mono_ali, feats, text, lang, mono, tmp_path / "tri", *cfgs)
    assert "tri already done" in caplog.text and "doing it again" not in caplog.text
    # rewrite one alignment shard without its first utterance's labels (as a changed mono stage would)
    rows = [
        (u, s if i else {k: v[:0] for k, v in s.items()})
        for i, (u, s) in enumerate(iter_shard(mono_ali.shard_paths[0]))
    ]
    mono_ali.shards[0] = write_shard(mono_ali.shard_paths[0], rows)
    mono_ali.save()
    train_triphone(ShardManifest.load(mono_ali.directory, "ali"), feats, text, lang, mono, tmp_path / "tri", *cfgs)
    assert "tri was done from other inputs (changed: mono_ali)" in caplog.text


# --------------------------------------------------------------------------- input limits


def _audio_dir(root: Path, lengths_s: dict[str, float]):
    import soundfile as sf

    from asrdistill.data.datadir import DataDir

    data = DataDir()
    rng = np.random.default_rng(0)
    for utt, seconds in lengths_s.items():
        path = root / "audio" / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000, subtype="PCM_16")
        data.wav[utt], data.text[utt], data.utt2spk[utt] = str(path), "HELLO", utt.split("-")[0]
        data.utt2dur[utt] = seconds
    data.save(root / "data")
    return root / "data", data


def test_duration_limits_nan_checks_and_changed_wav_scp(tmp_path, caplog):
    from asrdistill.data.datadir import DataDir
    from asrdistill.data.features import FbankConfig, compute_cmvn, compute_features

    caplog.set_level("INFO")
    data_dir, data = _audio_dir(tmp_path, {"1-1-0001": 1.0, "1-1-0002": 0.05, "1-1-0003": 4.0})
    cfg = FbankConfig(max_duration=3.0)
    man = compute_features(data_dir, tmp_path / "fbank", cfg)
    assert man.keys == ["1-1-0001"]
    rows = [line.split("\t") for line in (tmp_path / "fbank/skipped.tsv").read_text().splitlines()[1:]]
    assert {r[0]: r[2] for r in rows}.keys() == {"1-1-0002", "1-1-0003"}
    assert all("outside [0.1, 3] s" in r[2] for r in rows)
    # a changed wav.scp (same config, same folder) is recomputed, not reused
    data.wav["1-1-0003"] = data.wav["1-1-0001"]
    data.utt2dur["1-1-0003"] = 1.0
    DataDir.save(data, data_dir)
    caplog.clear()
    man = compute_features(data_dir, tmp_path / "fbank", cfg)
    assert "features was done from other inputs (changed: utt2dur, wav.scp)" in caplog.text
    assert man.keys == ["1-1-0001", "1-1-0003"]

    from asrdistill.data.shards import ShardManifest, write_shard

    bad = ShardManifest(tmp_path / "bad", "feats", meta={"dim": 2})
    x = np.ones((4, 2), np.float16)
    x[1, 0] = np.nan
    bad.shards.append(write_shard(bad.directory / bad.shard_name(0), [("u1", {"feats": x})]))
    bad.save()
    with pytest.raises(ValueError, match="feats-000000.tar: u1: features hold NaN"):
        compute_cmvn(bad)
    (tmp_path / "cmvn.json").write_text(json.dumps({"dim": 2, "count": 3, "mean": [0, None], "var": [1, 1]}))
    with pytest.raises(ValueError, match="cmvn.json: CMVN statistics are not finite"):
        Cmvn.load(tmp_path / "cmvn.json")


def test_known_sections_cover_what_the_commands_and_recipes_read():
    import re

    from asrdistill.config import SECTIONS, read_yaml

    src = "".join(p.read_text() for p in sorted((REPO / "asrdistill/cli").glob("*.py")))
    read = set(re.findall(r'section\(args, "(\w+)"', src)) | set(
        re.findall(r'role_section\(args\.config, "(\w+)"', src)
    )
    run_sh = (REPO / "recipes/librispeech/run.sh").read_text()
    read |= set(re.findall(r"--role (\w+)", run_sh)) | {"recipe"}
    assert read <= set(SECTIONS), read - set(SECTIONS)
    for conf in (REPO / "recipes").glob("*/conf/*.yaml"):
        read_yaml(conf)  # raises on a section no command reads
