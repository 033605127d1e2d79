"""Kaldi data dirs in (pipes, segments, feats.scp), validate/fix/split, and ark/scp out, read back by kaldiio."""

import json

import kaldiio
import numpy as np
import pytest
import soundfile as sf
from test_bundle import SR, _bundle, _system, _tone, recipe  # noqa: F401 - recipe: the shared fixture

from asrdistill.aligner.kaldi_export import export_alignments
from asrdistill.aligner.kaldi_import import import_kaldi_alignments
from asrdistill.data.datadir import DataDir
from asrdistill.data.features import compute_features
from asrdistill.data.kaldi_dir import fix_data_dir, import_data_dir, import_feats, split_data_dir, validate_data_dir
from asrdistill.data.shards import ShardManifest, iter_shard, write_shard
from asrdistill.decoding.bundle import load_system


def _kaldi_dir(tmp_path):
    """Two recordings: one cut by ``segments`` into two utterances, one read through a pipe."""
    rec = tmp_path / "rec"
    rec.mkdir()
    sf.write(rec / "a.wav", _tone(2.0), SR)
    sf.write(rec / "b.wav", _tone(1.0, 300.0), SR)
    d = tmp_path / "kaldi"
    d.mkdir()
    (d / "wav.scp").write_text(f"s1-a {rec / 'a.wav'}\ns2-b cat {rec / 'b.wav'} |\n")
    (d / "segments").write_text("s1-a-0 s1-a 0.0 0.8\ns1-a-1 s1-a 1.0 1.9\ns2-b-0 s2-b 0.1 0.9\n")
    (d / "text").write_text("s1-a-0 hello, world\ns1-a-1 It's me\ns2-b-0 BA\n")
    (d / "utt2spk").write_text("s1-a-0 s1\ns1-a-1 s1\ns2-b-0 s2\n")
    (d / "spk2utt").write_text("s1 s1-a-0 s1-a-1\ns2 s2-b-0\n")
    return d


def test_import_reads_segments_and_pipes_only_when_allowed_and_normalises_text(tmp_path):
    d = _kaldi_dir(tmp_path)
    assert validate_data_dir(d) == [
        f"warning: {d / 'text'}: 2 transcript(s) not upper case (e.g. s1-a-0); import-data-dir normalises them"
    ]
    with pytest.raises(ValueError, match=r"wav.scp: 1 entries are shell commands \(e.g. s2-b\).*opt-in"):
        import_data_dir(d, tmp_path / "out")
    report = import_data_dir(d, tmp_path / "out", allow_pipes=True)
    data = DataDir.load(tmp_path / "out")
    assert report.utterances == 3 and report.normalized == 2
    assert data.text == {"s1-a-0": "HELLO WORLD", "s1-a-1": "IT'S ME", "s2-b-0": "BA"}
    assert data.utt2dur == pytest.approx({"s1-a-0": 0.8, "s1-a-1": 0.9, "s2-b-0": 0.8})
    x, sr = sf.read(data.wav["s1-a-1"], dtype="float32")
    np.testing.assert_allclose(x, _tone(2.0)[SR : int(1.9 * SR)], atol=1e-4)  # the segment's samples
    assert (tmp_path / "out" / "text.orig").read_text().splitlines()[0] == "s1-a-0 hello, world"
    assert json.loads((tmp_path / "out" / "normalization.json").read_text())["changed_utterances"] == 2
    assert validate_data_dir(tmp_path / "out") == []


def test_kaldi_dir_goes_through_features_and_decode(recipe, tmp_path):
    d = _kaldi_dir(tmp_path)
    _, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    out = tmp_path / "decode"
    with pytest.raises(ValueError, match="shell commands"):
        system.decode_corpus(d, out)
    report = system.decode_corpus(d, out, allow_pipes=True)
    assert set(report.hyps) == {"s1-a-0", "s1-a-1", "s2-b-0"}
    assert (out / "report.txt").read_text().startswith("%WER ")
    assert report.oov == {"HELLO": 1, "WORLD": 1, "IT'S": 1, "ME": 1} and report.ref_words == 5
    import_data_dir(d, tmp_path / "imported", allow_pipes=True)
    feats = compute_features(tmp_path / "imported", tmp_path / "fbank", system.fbank)
    assert feats.keys == ["s1-a-0", "s1-a-1", "s2-b-0"] and feats.num_frames == 78 + 88 + 78


def test_decode_of_an_inconsistent_kaldi_dir_names_the_bad_lines_and_decodes_the_rest(recipe, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for utt in ("u1", "u2"):
        sf.write(d / f"{utt}.wav", _tone(0.8), SR)
    (d / "wav.scp").write_text(f"u1 {d / 'u1.wav'}\nu2 {d / 'u2.wav'}\n")
    (d / "text").write_text("u1 a\nu2 a\nu3 a\n")  # u3: no audio
    (d / "utt2spk").write_text("u1 s1\nghost s1\n")  # u2 missing, ghost: no audio
    _, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    report = system.decode_corpus(d, tmp_path / "decode")
    assert set(report.hyps) == {"u1", "u2"}
    skipped = (tmp_path / "decode/skipped.tsv").read_text()
    assert f"u3\t{d / 'text'}\tlisted in text but not in wav.scp" in skipped
    assert f"ghost\t{d / 'utt2spk'}\tlisted in utt2spk but not in wav.scp" in skipped


def test_validate_names_the_file_and_fix_keeps_the_common_utterances(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", _tone(0.3), SR)
    (d / "wav.scp").write_text("".join(f"spk-{i} {tmp_path / f'{i}.wav'}\n" for i in (2, 0, 1)))
    (d / "utt2spk").write_text("spk-0 spk\nspk-1 spk\nspk-2 spk\n")
    (d / "text").write_text("spk-0 A\nspk-1 B\n")
    problems = validate_data_dir(d)
    assert f"{d / 'wav.scp'}: not sorted by key (C locale)" in problems
    assert any(p.startswith(f"{d / 'text'}: utterances differ from utt2spk (missing ['spk-2']") for p in problems)
    assert f"{d / 'spk2utt'}: missing (fix-data-dir writes it from utt2spk)" in problems
    removed = fix_data_dir(d)
    assert removed["utt2spk"] == 1 and removed["wav.scp"] == 1 and removed["text"] == 0
    assert validate_data_dir(d) == [] and (d / ".backup" / "wav.scp").is_file()
    assert (d / "spk2utt").read_text() == "spk spk-0 spk-1\n"


def test_split_never_splits_a_speaker(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    sf.write(tmp_path / "x.wav", _tone(0.3), SR)
    utts = {f"s{s}-{i}": f"s{s}" for s, n in ((1, 4), (2, 1), (3, 3)) for i in range(n)}
    DataDir(wav={u: str(tmp_path / "x.wav") for u in utts}, text={u: "A" for u in utts}, utt2spk=utts).save(d)
    parts = split_data_dir(d, 2)
    assert [p.name for p in parts] == ["1", "2"] and parts[0].parent.name == "split2"
    seen = [DataDir.load(p) for p in parts]
    assert sorted(u for s in seen for u in s.wav) == sorted(utts)
    assert all(not (set(a.utt2spk.values()) & set(b.utt2spk.values())) for a, b in [(seen[0], seen[1])])
    assert all(validate_data_dir(p) == [] for p in parts)
    assert [len(s.wav) for s in seen] == [4, 4]  # s1 | s2 + s3: balanced by utterances
    with pytest.raises(ValueError, match="cannot split 3 speaker"):
        split_data_dir(d, 4)


def test_feats_scp_is_imported_as_feature_shards(tmp_path):
    rng = np.random.default_rng(0)
    mats = {f"u{i}": rng.normal(size=(10 + i, 40)).astype(np.float32) for i in range(3)}
    d = tmp_path / "d"
    d.mkdir()
    kaldiio.save_ark(str(d / "feats.ark"), mats, scp=str(d / "feats.scp"))
    m = import_feats(d, tmp_path / "fbank")
    got = {u: s["feats"] for p in m.shard_paths for u, s in iter_shard(p)}
    assert m.meta["dim"] == 40 and set(got) == set(mats)
    for u in mats:
        np.testing.assert_array_equal(got[u], mats[u].astype(np.float16))


def test_exported_arks_are_read_back_by_kaldiio(recipe, tmp_path):
    d, task = recipe
    _, tree, _, _ = task
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    feats = ShardManifest.load(d / "fbank", "feats")
    ark, scp, n = system.export_loglikes(feats, tmp_path / "ark")
    loglikes = kaldiio.load_scp(str(scp))
    ((utt, logpost),) = list(system.posteriors(feats))
    assert n == 1 and list(loglikes) == [utt]
    np.testing.assert_allclose(loglikes[utt], logpost - system.log_priors, rtol=1e-6)

    labels = ShardManifest(tmp_path / "ali", "pdf")
    pdfs = np.random.default_rng(0).integers(0, tree.num_pdfs, 50).astype(np.int32)
    labels.shards.append(
        write_shard(
            tmp_path / "ali" / "pdf-000000.tar", [(utt, {"pdf": pdfs}), ("unaligned", {"pdf": np.zeros(0, np.int32)})]
        )
    )
    _, pdf_scp, _ = export_alignments(labels, tmp_path / "ark")
    np.testing.assert_array_equal(kaldiio.load_scp(str(pdf_scp))[utt], pdfs)
    assert (tmp_path / "ark" / "unaligned.txt").read_text() == "unaligned\n"
    tree.save(tmp_path / "tree.json")
    back = import_kaldi_alignments(pdf_scp, feats, tmp_path / "reimported", tmp_path / "tree.json")
    ((_, sample),) = list(iter_shard(back.pdf.shard_paths[0]))
    np.testing.assert_array_equal(sample["pdf"], pdfs)  # import-ali reads what export-ark wrote
