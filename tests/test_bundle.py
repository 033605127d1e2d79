"""Model bundles: written, verified, loaded, and decoding a folder of new audio with bad files in it."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from graph_paths import pdf_sequence
from test_decode import UTTS
from test_graph import toy_task

from asrdistill.data.corpus import normalize_transcript, read_corpus
from asrdistill.data.features import Cmvn, FbankConfig
from asrdistill.data.shards import ShardManifest, iter_shard, write_shard
from asrdistill.decoding.bundle import load_system, word_times, write_bundle
from asrdistill.decoding.decode import DecodeConfig
from asrdistill.nnet.model import FrameDNN, ModelConfig

SR = 16000
LEFT = RIGHT = 1


def _system(d, task, num_classes=None, seed=0):
    """A 'trained' system folder: best.pt in the layout nnet.train writes (random weights)."""
    _, tree, _, _ = task
    torch.manual_seed(seed)
    model = FrameDNN(ModelConfig(preset="tiny"), (LEFT + 1 + RIGHT) * 40, num_classes or tree.num_pdfs)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            **model.describe(),
            "model": model.state_dict(),
            "config": {"frames": {"left": LEFT, "right": RIGHT}},
            "epoch": 1,
            "step": 1,
            "dev": {},
        },
        d / "best.pt",
    )
    return d


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """Toy lang/tree/graph, training 'features' (manifest + CMVN) and alignments, and a system."""
    d = tmp_path_factory.mktemp("bundle")
    task = toy_task(d)
    _, tree, _, _ = task
    rng = np.random.default_rng(0)
    feats = ShardManifest(d / "fbank", "feats", meta={"dim": 40, "config": FbankConfig().extraction_dict()})
    feats.shards.append(
        write_shard(d / "fbank" / "feats-000000.tar", [("a", {"feats": rng.normal(size=(50, 40)).astype(np.float16)})])
    )
    feats.save()
    Cmvn(mean=np.zeros(40), var=np.ones(40), count=50).save(d / "fbank" / "cmvn.json")
    labels = ShardManifest(d / "ali", "pdf")
    labels.shards.append(
        write_shard(d / "ali" / "pdf-000000.tar", [("a", {"pdf": rng.integers(0, tree.num_pdfs, 50).astype(np.int32)})])
    )
    labels.save()
    (d / "exp").mkdir()
    shutil.copy(d / "tree.json", d / "exp" / "tree.json")
    shutil.copy(d / "topo.json", d / "exp" / "topo.json")
    return d, task


def _bundle(recipe, system, out, **kw):
    d, _ = recipe
    return write_bundle(
        system,
        out,
        feats_dir=d / "fbank",
        labels_dir=d / "ali",
        tree_dir=d / "exp",
        graph_dir=d / "graph",
        lang_dir=d / "lang",
        decode_config=DecodeConfig(nj=1),
        **kw,
    )


def _tone(seconds, freq=440.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(1).normal(size=t.size)).astype(np.float32)


def test_bundle_decodes_a_folder_with_bad_files_and_scores_references(recipe, tmp_path):
    d, task = recipe
    bundle = _bundle(recipe, _system(tmp_path / "student", task), tmp_path / "student" / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {
        "members/0.pt",
        "cmvn.json",
        "priors.npy",
        "tree.json",
        "topo.json",
        "graph/HCLG.fst",
        "graph/words.txt",
        "lang/lexicon.txt",
        "system.json",
    } <= set(manifest["files"])

    corpus = tmp_path / "corpus" / "spk" / "ch"
    corpus.mkdir(parents=True)
    x = _tone(1.0)
    sf.write(corpus / "spk-ch-0001.flac", x, SR)
    sf.write(corpus / "spk-ch-0002.flac", np.stack([x, x], 1), SR)  # stereo: downmixed
    sf.write(corpus / "spk-ch-0003.wav", _tone(1.0)[::2], SR // 2)  # 8 kHz: resampled
    sf.write(corpus / "spk-ch-0004.wav", np.zeros(0, np.float32), SR)  # empty
    sf.write(corpus / "spk-ch-0005.flac", _tone(3.0), SR)  # longer than max_seconds
    (corpus / "spk-ch-0006.flac").write_bytes(b"not audio")
    (corpus / "spk-ch.trans.txt").write_text(
        "spk-ch-0001 ba, ka!\nspk-ch-0002 Ka ZORK\nspk-ch-0003 ab\nspk-ch-0004 ba\nspk-ch-0005 ba\nspk-ch-0006 ba\n"
    )
    out = tmp_path / "decode"
    report = load_system(bundle).decode_corpus(tmp_path / "corpus", out, max_seconds=2.0)

    text = dict(line.split(" ", 1) if " " in line else (line, "") for line in (out / "text").read_text().splitlines())
    assert set(text) == {"spk-ch-0001", "spk-ch-0002", "spk-ch-0003"}
    assert text["spk-ch-0001"] == text["spk-ch-0002"]  # the stereo copy decodes like the mono file
    feats = {u: x["feats"] for p in ShardManifest.load(out / "fbank", "feats").shard_paths for u, x in iter_shard(p)}
    np.testing.assert_array_equal(feats["spk-ch-0001"], feats["spk-ch-0002"])  # downmixed to the same samples
    skipped = {row.split("\t")[0]: row.split("\t")[2] for row in (out / "skipped.tsv").read_text().splitlines()[1:]}
    assert set(skipped) == {"spk-ch-0004", "spk-ch-0005", "spk-ch-0006"}
    assert "zero-length" in skipped["spk-ch-0004"] and "longer than the maximum 2 s" in skipped["spk-ch-0005"]
    ctm = [line.split() for line in (out / "ctm").read_text().splitlines()]
    assert len(ctm) == sum(len(t.split()) for t in text.values())
    assert all(r[1] == "1" and float(r[2]) >= 0 and float(r[3]) > 0 for r in ctm)
    lines = (out / "report.txt").read_text().splitlines()
    assert (
        lines[0].startswith("%WER ") and "/ 5," in lines[0]
    )  # BA KA | KA ZORK | AB: lower case and punctuation normalised
    assert lines[2].startswith("OOV 1 of 5 reference words") and report.oov == {"ZORK": 1}
    assert lines[3].startswith("3 utterance(s) with references not scored")
    log = (out / "log" / "decode.log").read_text()
    assert "decode config" in log and "utterance(s) decoded" in log and "spk-ch-0006" in log

    other = tmp_path / "other"  # the same output folder for another corpus: nothing of the first run survives
    other.mkdir()
    sf.write(other / "new.wav", _tone(0.7, 200.0), SR)
    load_system(bundle).decode_corpus(other, out)
    assert [line.split()[0] for line in (out / "text").read_text().splitlines()] == ["new"]
    assert not (out / "report.txt").exists() and not (out / "wer").exists()


def test_transcribe_files_and_a_folder(recipe, tmp_path):
    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    (tmp_path / "audio").mkdir()
    for name in ("one.wav", "two.flac"):
        sf.write(tmp_path / "audio" / name, _tone(0.8), SR)
    files = system.transcribe([tmp_path / "audio" / "one.wav", tmp_path / "audio" / "two.flac"]).hyps
    folder = system.transcribe(tmp_path / "audio").hyps
    assert set(folder) == {"one", "two"} and folder["one"] == folder["two"]
    assert sorted(files.values()) == sorted(folder.values())


def test_ensemble_members_are_copied_in(recipe, tmp_path):
    d, task = recipe
    exp = tmp_path / "exp"
    for i in (1, 2):
        _system(exp / f"teacher_{i}", task, seed=i)
    (exp / "ensemble").mkdir()
    # as build_ensemble writes it (relative to the ensemble folder), and an absolute path
    (exp / "ensemble" / "members.txt").write_text(f"../teacher_1/best.pt\n{exp / 'teacher_2/best.pt'}\n")
    bundle = _bundle(recipe, exp / "ensemble", tmp_path / "bundle")
    shutil.rmtree(exp)  # the bundle needs nothing outside itself
    system = load_system(bundle)
    assert (
        len(system.models) == 2
        and system.models[0].state_dict()["output.bias"].ne(system.models[1].state_dict()["output.bias"]).any()
    )


def test_load_rejects_a_changed_file_another_version_and_a_mismatched_tree(recipe, tmp_path):
    d, task = recipe
    bundle = _bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b")
    changed = tmp_path / "changed"
    shutil.copytree(bundle, changed)
    np.save(changed / "priors.npy", np.zeros(16, np.float32))
    with pytest.raises(ValueError, match=r"changed/priors.npy: sha256 differs"):
        load_system(changed)
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**m, "version": 0}))
    with pytest.raises(ValueError, match=r"old/manifest.json: bundle format 'asrdistill-bundle' version 0"):
        load_system(old)
    with pytest.raises(ValueError, match=r"best.pt: 17 senones, but .*tree.json has 16"):
        _bundle(recipe, _system(tmp_path / "wide", task, num_classes=17), tmp_path / "b2")
    assert not (tmp_path / "b2").exists()  # nothing half-written


def test_bundle_refuses_a_graph_built_from_another_tree(recipe, tmp_path):
    d, task = recipe
    other = tmp_path / "other_tree"
    other.mkdir()
    tree = json.loads((d / "tree.json").read_text())
    tree["pdf_info"][0] = tree["pdf_info"][1]
    (other / "tree.json").write_text(json.dumps(tree))
    shutil.copy(d / "topo.json", other / "topo.json")
    with pytest.raises(ValueError, match=r"graph: built from .*tree.json, whose content differs from .*other_tree"):
        write_bundle(
            _system(tmp_path / "s", task),
            tmp_path / "b",
            feats_dir=d / "fbank",
            labels_dir=d / "ali",
            tree_dir=other,
            graph_dir=d / "graph",
            lang_dir=d / "lang",
            decode_config=DecodeConfig(nj=1),
        )


def test_rewrite_is_skipped_while_sources_are_unchanged(recipe, tmp_path):
    d, task = recipe
    system = _system(tmp_path / "s", task)
    bundle = _bundle(recipe, system, tmp_path / "b")
    before = (bundle / "manifest.json").stat().st_mtime_ns
    _bundle(recipe, system, tmp_path / "b")
    assert (bundle / "manifest.json").stat().st_mtime_ns == before
    _system(tmp_path / "s", task, seed=1)  # retrained: new weights
    _bundle(recipe, system, tmp_path / "b")
    assert (bundle / "manifest.json").stat().st_mtime_ns != before
    before = (bundle / "manifest.json").stat().st_mtime_ns
    ali = tmp_path / "ali"  # realigned: the same utterances and frame counts, other senones
    shutil.copytree(d / "ali", ali)
    write_shard(ali / "pdf-000000.tar", [("a", {"pdf": np.zeros(50, np.int32)})])
    write_bundle(
        system,
        bundle,
        feats_dir=d / "fbank",
        labels_dir=ali,
        tree_dir=d / "exp",
        graph_dir=d / "graph",
        lang_dir=d / "lang",
        decode_config=DecodeConfig(nj=1),
    )
    assert (bundle / "manifest.json").stat().st_mtime_ns != before
    assert np.argmax(np.load(bundle / "priors.npy")) == 0


def test_word_times_follow_the_alignment(recipe):
    _, (lang, tree, topo, _) = recipe
    prons, words = UTTS["u1"][0], UTTS["u1"][1].split()  # SIL, BA, KA, AB, SIL; 9 frames per phone
    ali = pdf_sequence(prons, lang, tree, topo, 3)
    assert word_times(ali, words, lang, tree) == ([(9, 27), (27, 45), (45, 63)], True)
    times, exact = word_times(ali, ["KA", "KA"], lang, tree)  # not what the path says: spread evenly
    assert not exact and times == [(9, 36), (36, 63)]


def test_read_corpus_layouts_and_normalisation(tmp_path):
    assert normalize_transcript("it's  a 'Test', isn't-it?") == "IT'S A TEST ISN'T IT"
    sf.write(tmp_path / "a.wav", _tone(0.5), SR)
    c = read_corpus(tmp_path)
    assert c.layout == "audio" and c.data.wav == {"a": str((tmp_path / "a.wav").resolve())} and not c.refs
    kd = tmp_path / "kaldi"
    kd.mkdir()
    (kd / "wav.scp").write_text(f"u1 {tmp_path / 'a.wav'}\n")
    (kd / "utt2spk").write_text("u1 s1\n")
    (kd / "text").write_text("u1 hello, world\n")
    c = read_corpus(kd)
    assert c.layout == "kaldi" and c.refs == {"u1": "HELLO WORLD"} and c.normalized == 1
    (kd / "wav.scp").write_text("u1 sox in.wav -t wav - |\n")
    with pytest.raises(ValueError, match=r"wav.scp: 1 entries are shell commands .* explicit opt-in"):
        read_corpus(kd)


def test_evaluation_is_redone_when_its_data_change(recipe, tmp_path):
    """metrics.json is reused only for the same weights, features, labels, transcripts and graph."""
    from asrdistill.data.frames import FrameConfig, FrameData
    from asrdistill.evaluate import EvalConfig, evaluate_system

    d, task = recipe
    for s in ("train", "dev", "test"):
        shutil.copytree(d / "fbank", tmp_path / "fbank" / s)
        shutil.copytree(d / "ali", tmp_path / "ali" / s)
        (tmp_path / "data" / s).mkdir(parents=True)
        (tmp_path / "data" / s / "text").write_text("a A\n")
    system = _system(tmp_path / "sys", task)

    def run():
        data = FrameData(
            tmp_path / "fbank", tmp_path / "ali", "train", "dev", "test", FrameConfig(left=LEFT, right=RIGHT)
        )
        evaluate_system(
            system, data, data_root=tmp_path / "data", decode_config=DecodeConfig(nj=1), config=EvalConfig(decode=False)
        )
        return (system / "metrics.json").stat().st_mtime_ns

    first = run()
    assert run() == first  # nothing changed: reused
    (tmp_path / "data/test/text").write_text("a THE\n")
    second = run()
    assert second != first  # other reference text: evaluated again
    path = tmp_path / "ali/dev/pdf-000000.tar"
    ((utt, sample),) = list(iter_shard(path))
    write_shard(path, [(utt, {"pdf": (sample["pdf"] + 1) % task[1].num_pdfs})])
    assert run() != second  # realigned dev labels: evaluated again


def test_bundle_files_are_copies_not_links_to_the_experiment(recipe, tmp_path):
    d, task = recipe
    bundle = _bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b")
    for name, source in (
        ("tree.json", d / "exp" / "tree.json"),
        ("topo.json", d / "exp" / "topo.json"),
        ("graph/HCLG.fst", d / "graph" / "HCLG.fst"),
        ("lang/lexicon.txt", d / "lang" / "lexicon.txt"),
    ):
        assert (bundle / name).stat().st_nlink == 1 and not (bundle / name).samefile(source), name
    before = (d / "exp" / "tree.json").read_bytes()
    with open(bundle / "tree.json", "ab") as f:  # an in-place edit of the bundle
        f.write(b" ")
    assert (d / "exp" / "tree.json").read_bytes() == before


def _tampered(bundle, out, name, write):
    """A copy of ``bundle`` whose file ``name`` is rewritten by ``write(path)`` and whose manifest says so."""
    from asrdistill.decoding.bundle import _sha256

    shutil.copytree(bundle, out)
    write(out / name)
    m = json.loads((out / "manifest.json").read_text())
    m["files"][name] = _sha256(out / name)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


class _Payload:
    """Unpickling this creates a file: proof that loading ran code from the bundle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_every_load_failure_names_the_file_and_never_advises_turning_a_safety_off(recipe, tmp_path):
    d, task = recipe
    bundle = _bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b")
    marker = tmp_path / "PWNED"
    cases = {
        "members/0.pt": (lambda p: torch.save({"model": _Payload(marker)}, p), "not a usable bundle member .*refused"),
        "priors.npy": (
            lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
            "not a usable senone prior file .*Object arrays",
        ),
        "tree.json": (lambda p: p.write_text("{not json"), "not a usable senone tree"),
        "graph/graph.json": (lambda p: p.write_text("{}"), "not a usable graph description: missing field 'num_pdfs'"),
        "system.json": (lambda p: p.write_text('{"system": "s"}'), "not a usable bundle description: missing field"),
    }
    for i, (name, (write, message)) in enumerate(cases.items()):
        bad = _tampered(bundle, tmp_path / f"bad{i}", name, write)
        with pytest.raises(ValueError, match=rf"{bad / name}: {message}") as e:
            load_system(bad)
        assert "weights_only" not in str(e.value) and "allow_pickle" not in str(e.value).replace(
            "Object arrays cannot be loaded when allow_pickle=False", ""
        )
        assert "trust" not in str(e.value) and "add_safe_globals" not in str(e.value)
    assert not marker.exists()
    system = load_system(_tampered(bundle, tmp_path / "badfst", "graph/HCLG.fst", lambda p: p.write_bytes(b"junk")))
    sf.write(tmp_path / "a.wav", _tone(0.8), SR)
    with pytest.raises(ValueError, match=r"badfst/graph/HCLG.fst: not a usable decoding graph"):
        system.transcribe([tmp_path / "a.wav"])
