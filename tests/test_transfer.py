"""A transfer set enlarged with unlabelled audio the teachers label (Li et al. 2014; issue 27).

The synthetic transfer subset never uses a dev or test speaker or voice; the teachers' labels are the ensemble's
decisions; a hard-label run refuses the set (it would make a baseline a student); a distilled run streams the
training set and the transfer set together, and still measures its agreement on the real training set.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_frame_set
from test_distill_progress import FRAMES, C, D, _config, _epochs

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import iter_utterances
from asrdistill.data.shards import ShardManifest
from asrdistill.nnet.checkpoint import comparable
from asrdistill.nnet.ensemble import EnsembleConfig, build_ensemble, ensemble_logprobs, load_teachers, read_members
from asrdistill.nnet.targets import train_config
from asrdistill.nnet.train import DistillConfig, train
from asrdistill.nnet.transfer import label_transfer
from data_prep.synthetic import make_speakers, synthesize_corpus
from data_prep.transfer import TRANSFER, check_transfer_speakers, synthesize_transfer, transfer_speakers

torch.set_num_threads(1)


def _voice(s) -> tuple[str, str]:
    return s.voice, s.variant


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transfer_talkers_are_new_and_never_have_a_dev_or_test_voice(seed: int):
    corpus = make_speakers(seed, 64, 0.08, 0.47)  # many held-out voices: a careless draw would hit one
    talkers = transfer_speakers(corpus, 60, seed)
    held_out = {_voice(s) for s in corpus if s.subset != "train"}
    assert len(talkers) == 60 and all(t.subset == TRANSFER for t in talkers)
    assert not {t.speaker_id for t in talkers} & {s.speaker_id for s in corpus}
    assert not {_voice(t) for t in talkers} & held_out
    assert len({t.speaker_id for t in talkers}) == 60


def test_a_transfer_talker_with_a_held_out_voice_or_a_corpus_id_is_refused():
    corpus = make_speakers(0, 12, 0.2, 0.2)
    talkers = transfer_speakers(corpus, 4, 0)
    test_talker = next(s for s in corpus if s.subset == "test")
    stolen_voice = dataclasses.replace(talkers[0], voice=test_talker.voice, variant=test_talker.variant)
    with pytest.raises(ValueError, match=f"test speaker {test_talker.speaker_id}"):
        check_transfer_speakers(corpus, [stolen_voice, *talkers[1:]])
    stolen_id = dataclasses.replace(talkers[1], speaker_id=test_talker.speaker_id)
    with pytest.raises(ValueError, match="is the corpus' test speaker"):
        check_transfer_speakers(corpus, [stolen_id])


def _speakers_txt(path: Path) -> dict[str, tuple[str, str]]:
    """id -> (subset, espeak voice+variant) of a SPEAKERS.TXT."""
    rows = [line.split("|") for line in path.read_text().splitlines() if not line.startswith(";")]
    return {r[0].strip(): (r[2].strip(), r[4].split()[1]) for r in rows}


def test_synthetic_transfer_subset_is_new_speech_by_new_talkers(tmp_path: Path):
    """Added to a finished corpus in its layout: talkers and voices of no dev/test speaker, sentences no corpus
    utterance reads; the corpus itself is untouched, the subset is reused, and other parameters need --force."""
    from data_prep.librispeech import prepare_librispeech

    ls = synthesize_corpus(tmp_path, 0.01, seed=2, num_speakers=4, nj=1, lm_sentences=100, progress=False)
    before = {p: p.read_bytes() for p in sorted(ls.rglob("*")) if p.is_file()}
    folder = synthesize_transfer(tmp_path, 0.005, nj=1, progress=False)
    assert folder == ls / TRANSFER
    assert before == {p: p.read_bytes() for p in before}  # no corpus file changed
    corpus, new = _speakers_txt(ls / "SPEAKERS.TXT"), _speakers_txt(folder / "SPEAKERS.TXT")
    held_out = {voice for subset, voice in corpus.values() if subset != "train"}
    assert new and not set(new) & set(corpus) and not {v for _, v in new.values()} & held_out
    assert {p.name for p in folder.iterdir() if p.is_dir()} == set(new)
    sentences = lambda subsets: {  # noqa: E731
        line.split(" ", 1)[1]
        for s in subsets
        for t in (ls / s).glob("*/*/*.trans.txt")
        for line in t.read_text().splitlines()
    }
    assert sentences([TRANSFER]) and not sentences([TRANSFER]) & sentences(["train", "dev", "test"])
    data = prepare_librispeech(tmp_path, [TRANSFER], tmp_path / "data")[TRANSFER]
    assert len(data.wav) == len(list(folder.glob("*/*/*.flac"))) and set(data.utt2spk.values()) == set(new)
    stamp = (folder / ".synthetic.done").stat().st_mtime_ns
    assert synthesize_transfer(tmp_path, 0.005, nj=1, progress=False) == folder  # reused
    assert (folder / ".synthetic.done").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="force"):
        synthesize_transfer(tmp_path, 0.01, nj=1, progress=False)


# ------------------------------------------------------------------ teacher labels and training


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Train, dev and an unlabelled transfer set of the same toy task, two teachers and their ensemble (T = 2)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    means = 2 * rng.standard_normal((C, D))
    make_frame_set(root / "train", rng, means, 20, noise=0.3)
    make_frame_set(root / "dev", rng, means, 6)
    make_frame_set(root / "transfer", rng, means, 10, shards=3)
    for split in ("dev", "transfer"):  # other utterance ids than train's: other audio
        for prefix, sub in (("feats", "feats"), ("pdf", "labels")):
            m = ShardManifest.load(root / split / sub, prefix)
            _rename(m, split[0])
    Cmvn(np.zeros(D), np.ones(D), 1).save(root / "cmvn.json")
    members = [train(_config(root, seed=s, epochs=1), root / f"teacher{s}")["best_checkpoint"] for s in (1, 2)]
    cmvn = Cmvn.load(root / "cmvn.json")
    feats = lambda s: ShardManifest.load(root / s / "feats", "feats")  # noqa: E731
    build_ensemble(members, feats("train"), feats("dev"), cmvn, FRAMES, [2.0], root / "ensemble", EnsembleConfig())
    label_transfer(
        root / "ensemble",
        feats("transfer"),
        cmvn,
        FRAMES,
        [2.0],
        root / "labels",
        exclude=[feats("train"), feats("dev")],
    )
    return root


def _rename(manifest: ShardManifest, tag: str) -> None:
    """Give a toy set's utterances ids of their own (make_frame_set numbers every set from 0)."""
    from asrdistill.data.shards import iter_shard, write_shard

    for i, path in enumerate(manifest.shard_paths):
        samples = [(f"{tag}{utt}", s) for utt, s in iter_shard(path)]
        manifest.shards[i] = write_shard(path, samples)
    manifest.save()


def test_teacher_labels_are_the_ensembles_decision_and_say_so(data: Path):
    teachers = load_teachers(read_members(data / "ensemble"))
    labels = ShardManifest.load(data / "labels", "pdf")
    feats = ShardManifest.load(data / "transfer/feats", "feats")
    cmvn = Cmvn.load(data / "cmvn.json")
    got = {utt: y for utt, _, y in iter_utterances(feats, cmvn, FRAMES, labels=labels)}
    assert labels.meta["teacher_labels"] is True and "not an alignment" in labels.meta["labels"]
    assert [s.keys for s in labels.shards] == [s.keys for s in feats.shards] and len(got) == 10
    decisions = 0
    for utt, x, _ in iter_utterances(feats, cmvn, FRAMES):
        want = ensemble_logprobs(teachers, x, 1.0).argmax(-1)
        assert torch.equal(got[utt], want), utt
        decisions += int((want != ensemble_logprobs(teachers[:1], x, 1.0).argmax(-1)).sum())
    assert decisions > 0, "fixture: the ensemble should disagree with its first member somewhere"
    train_soft = ShardManifest.load(data / "ensemble/soft_T2", "soft")
    soft = ShardManifest.load(data / "labels/soft_T2", "soft")
    assert soft.meta["teachers_sha256"] == train_soft.meta["teachers_sha256"] and soft.meta["k"] == train_soft.meta["k"]
    with pytest.raises(ValueError, match="other audio than the training and dev sets"):
        label_transfer(data / "ensemble", feats, cmvn, FRAMES, [2.0], data / "bad", exclude=[feats])


def test_a_hard_label_run_refuses_a_transfer_set(data: Path):
    with pytest.raises(ValueError, match="would be a student"):
        _config(data, transfer=[str(data / "labels")])
    with pytest.raises(ValueError, match="would be a student"):
        train_config(
            None,
            None,
            [],
            feats=data,
            labels=data,
            train_set="train",
            dev_set="dev",
            flags={"transfer": [str(data / "labels")]},
        )
    # a run without a transfer set keeps the identity it had before the field existed
    assert "transfer" not in comparable(_config(data))


def test_a_distilled_run_trains_on_train_and_transfer_frames(data: Path, tmp_path: Path):
    """An epoch covers both sets (its frames are the sum), the stream's manifests are kept in the run, the
    agreement on train is measured on a sample of the real training set, and the result names the transfer set."""
    distill = DistillConfig(temperature=2.0, soft_targets=str(data / "ensemble/soft_T2"))
    train_frames = ShardManifest.load(data / "train/labels", "pdf").num_frames
    transfer_frames = ShardManifest.load(data / "labels", "pdf").num_frames
    both = train(
        _config(data, seed=3, distill=distill, transfer=[str(data / "labels")], monitor_frames=300),
        tmp_path / "both",
    )
    alone = train(_config(data, seed=3, distill=distill, monitor_frames=300), tmp_path / "alone")
    assert [r["epoch_frames"] for r in _epochs(tmp_path / "both")] == [train_frames + transfer_frames] * 2
    assert [r["epoch_frames"] for r in _epochs(tmp_path / "alone")] == [train_frames] * 2
    stream = ShardManifest.load(tmp_path / "both/stream", "feats")  # shard names resolve from the run's folder
    assert len(stream.shards) == 2 + 3 and stream.num_frames == train_frames + transfer_frames
    assert len(ShardManifest.load(tmp_path / "both/stream", "soft").shards) == 5
    sample = ShardManifest.load(tmp_path / "both/monitor_train", "pdf")
    assert sample.meta["subset_of"] == str(ShardManifest.load(data / "train/labels", "pdf").path)
    assert all("train_agree" in r for r in _epochs(tmp_path / "both"))
    assert both["targets"]["transfer"][0]["frames"] == transfer_frames and "transfer" not in alone["targets"]
    done = json.loads((tmp_path / "both/.train.done").read_text())
    assert done["config"]["transfer"] == [str(data / "labels")]


def test_a_transfer_set_from_other_teachers_or_temperature_is_refused(data: Path, tmp_path: Path):
    online = DistillConfig(temperature=2.0, source="online", teachers=[str(data / "teacher1/best.pt")])
    with pytest.raises(ValueError, match="other teachers"):
        train(_config(data, distill=online, transfer=[str(data / "labels")]), tmp_path / "online")
    other_t = DistillConfig(temperature=2.0, soft_targets=str(data / "ensemble/soft_T2"))
    (data / "labels/soft_T2").rename(data / "labels/soft_T3")
    try:
        with pytest.raises(FileNotFoundError, match="soft_T2"):
            train(_config(data, distill=other_t, transfer=[str(data / "labels")]), tmp_path / "other_t")
    finally:
        (data / "labels/soft_T3").rename(data / "labels/soft_T2")


def test_an_online_student_streams_the_transfer_set_with_its_teachers_own_decisions(data: Path, tmp_path: Path):
    """Online distillation needs no soft cache: the teachers run on the transfer frames too; the teacher labels
    only serve the hard term."""
    members = [str(m) for m in read_members(data / "ensemble")]
    online = DistillConfig(temperature=2.0, source="online", teachers=members)
    train(_config(data, seed=4, epochs=1, distill=online, transfer=[str(data / "labels")]), tmp_path / "online")
    frames = sum(ShardManifest.load(d, "pdf").num_frames for d in (data / "train/labels", data / "labels"))
    assert [r["epoch_frames"] for r in _epochs(tmp_path / "online")] == [frames]
    assert not (tmp_path / "online/stream/soft.manifest.json").exists()


def test_cli_label_transfer_then_train_with_it(data: Path, tmp_path: Path, caplog):
    """The recipe's commands: ``label-transfer`` on a set under --feats, then ``train --transfer`` (a student; the
    same flag on a hard-label run is refused before anything is written)."""
    import shutil

    import yaml

    from asrdistill import cli

    for subset in ("train", "dev", "transfer"):
        shutil.copytree(data / subset / "feats", tmp_path / "fbank" / subset)
    for subset in ("train", "dev"):
        shutil.copytree(data / subset / "labels", tmp_path / "ali" / subset)
    shutil.copy(data / "cmvn.json", tmp_path / "fbank/train/cmvn.json")
    conf = tmp_path / "conf.yaml"
    frames = {"left": FRAMES.left, "right": FRAMES.right, "batch_size": 16, "buffer_frames": 200, "prefetch": 0}
    conf.write_text(yaml.safe_dump({"train": {"frames": frames, "model": {"preset": "tiny"}, "epochs": 1}}))
    common = ["--config", str(conf), "--feats", str(tmp_path / "fbank"), "--labels", str(tmp_path / "ali")]
    common += ["--train-set", "train", "--dev-set", "dev", "--threads", "1"]
    out = tmp_path / "labels"
    argv = ["label-transfer", *common, "--ensemble", str(data / "ensemble"), "--transfer-set", "transfer"]
    assert cli.main([*argv, "--temperatures", "2", "--out", str(out)]) == 0
    assert ShardManifest.load(out, "pdf").num_frames == ShardManifest.load(data / "labels", "pdf").num_frames
    student = ["train", *common, "--soft", str(data / "ensemble/soft_T2"), "--temperature", "2"]
    assert cli.main([*student, "--transfer", str(out), "--out", str(tmp_path / "student")]) == 0
    saved = json.loads((tmp_path / "student/train_config.json").read_text())
    assert saved["transfer"] == [str(out)]
    assert cli.main(["train", *common, "--transfer", str(out), "--out", str(tmp_path / "baseline")]) != 0
    assert "would be a student" in caplog.text and not (tmp_path / "baseline").exists()


def test_a_transfer_set_with_other_feature_settings_is_refused(data: Path, tmp_path: Path):
    import shutil

    shutil.copytree(data / "transfer/feats", tmp_path / "feats")
    feats = ShardManifest.load(tmp_path / "feats", "feats")
    feats.meta["frame_shift_ms"] = 20  # the training set's features have none recorded
    feats.save()
    cmvn = Cmvn.load(data / "cmvn.json")
    label_transfer(data / "ensemble", feats, cmvn, FRAMES, [2.0], tmp_path / "labels")
    distill = DistillConfig(temperature=2.0, soft_targets=str(data / "ensemble/soft_T2"))
    with pytest.raises(ValueError, match="frame_shift_ms 20"):
        train(_config(data, distill=distill, transfer=[str(tmp_path / "labels")]), tmp_path / "run")
