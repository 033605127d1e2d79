"""lhotse manifests in and out: a lhotse corpus goes through import -> features -> decode."""

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest
from lhotse.audio import AudioSource
from test_bundle import SR, _bundle, _system, _tone, recipe  # noqa: F401 - recipe: the shared fixture

from asrdistill.data.datadir import DataDir
from asrdistill.data.features import compute_features
from asrdistill.data.lhotse_io import export_lhotse, import_lhotse
from asrdistill.data.shards import iter_shard
from asrdistill.decoding.bundle import load_system


def _lhotse_corpus(tmp_path):
    """One 2-second stereo recording with two supervisions (lower case, punctuated)."""
    x = _tone(2.0)
    sf.write(tmp_path / "rec.wav", np.stack([x, x], 1), SR)
    rec = Recording.from_file(tmp_path / "rec.wav", recording_id="rec")
    sups = SupervisionSet.from_segments(
        [
            SupervisionSegment("rec-0", "rec", 0.0, 0.8, channel=[0, 1], text="ba, ka!", speaker="spk"),
            SupervisionSegment("rec-1", "rec", 1.0, 0.9, channel=[0, 1], text="ab", speaker="spk"),
        ]
    )
    recs = RecordingSet.from_recordings([rec])
    recs.to_file(tmp_path / "recordings.jsonl.gz")
    sups.to_file(tmp_path / "supervisions.jsonl.gz")
    CutSet.from_manifests(recordings=recs, supervisions=sups).to_file(tmp_path / "cuts.jsonl.gz")
    return x


@pytest.mark.parametrize("manifests", [["cuts.jsonl.gz"], ["recordings.jsonl.gz", "supervisions.jsonl.gz"]])
def test_lhotse_manifests_go_through_import_features_and_decode(recipe, tmp_path, manifests):
    x = _lhotse_corpus(tmp_path)
    data = import_lhotse([tmp_path / m for m in manifests], tmp_path / "data")
    assert data.text == {"rec-0": "BA KA", "rec-1": "AB"} and data.utt2spk == {"rec-0": "spk", "rec-1": "spk"}
    assert (tmp_path / "data" / "text.orig").read_text() == "rec-0 ba, ka!\nrec-1 ab\n"  # as import-data-dir
    assert data.utt2dur == pytest.approx({"rec-0": 0.8, "rec-1": 0.9})
    y, _ = sf.read(data.wav["rec-1"], dtype="float32")
    np.testing.assert_allclose(y, x[SR : int(1.9 * SR)], atol=1e-4)  # the supervision's span, downmixed
    _, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    feats = compute_features(tmp_path / "data", tmp_path / "fbank", system.fbank)
    assert feats.keys == ["rec-0", "rec-1"]
    assert {u: s["feats"].shape[0] for p in feats.shard_paths for u, s in iter_shard(p)} == {"rec-0": 78, "rec-1": 88}
    report = system.decode_corpus(tmp_path / "data", tmp_path / "decode")
    assert set(report.hyps) == {"rec-0", "rec-1"} and report.ref_words == 3 and report.wer is not None


def test_export_round_trips_through_lhotse(tmp_path):
    for i in range(2):
        sf.write(tmp_path / f"{i}.flac", _tone(0.5 + i * 0.25), SR)
    d = tmp_path / "d"
    DataDir(
        wav={f"s-{i}": str(tmp_path / f"{i}.flac") for i in range(2)},
        text={"s-0": "BA", "s-1": "KA AB"},
        utt2spk={"s-0": "s", "s-1": "s"},
    ).save(d)
    paths = export_lhotse(d, tmp_path / "lhotse")
    cuts = load_manifest(paths["cuts"])
    assert sorted(c.id for c in cuts) == ["s-0", "s-1"]
    assert load_manifest(paths["recordings"])["s-1"].duration == pytest.approx(0.75)
    assert load_manifest(paths["supervisions"])["s-1"].text == "KA AB"
    back = import_lhotse([paths["cuts"]], tmp_path / "back")
    assert back.text == {"s-0": "BA", "s-1": "KA AB"} and back.utt2dur == pytest.approx({"s-0": 0.5, "s-1": 0.75})


def test_command_sources_need_the_opt_in(tmp_path):
    _lhotse_corpus(tmp_path)
    rec = Recording(
        id="cmd",
        sources=[AudioSource("command", [0], f"cat {tmp_path / 'rec.wav'}")],
        sampling_rate=SR,
        num_samples=2 * SR,
        duration=2.0,
    )
    RecordingSet.from_recordings([rec]).to_file(tmp_path / "cmd.jsonl.gz")
    with pytest.raises(ValueError, match=r"recording cmd is read by the shell command .*opt-in"):
        import_lhotse([tmp_path / "cmd.jsonl.gz"], tmp_path / "out")
    data = import_lhotse([tmp_path / "cmd.jsonl.gz"], tmp_path / "out", allow_pipes=True)
    assert data.utt2dur == pytest.approx({"cmd": 2.0}) and data.text == {}
