"""Import of Kaldi pdf alignments (ark and scp written with kaldiio) into label shards."""

import kaldiio
import numpy as np
import pytest

from asrdistill.aligner.kaldi_import import import_kaldi_alignments, read_kaldi_int_vectors
from asrdistill.aligner.tree import ContextTree, TreeNode, tree_sha256
from asrdistill.data.shards import ShardManifest, iter_aligned, write_shard
from asrdistill.decoding.hclg import check_labels_match_graph
from asrdistill.fileio import read_skipped


def _tree(path, num_pdfs):
    """A tree with ``num_pdfs`` leaves (a chain of questions on the centre phone)."""
    nodes = []
    for pdf in range(num_pdfs - 1):
        nodes += [
            TreeNode(pos=1, values=frozenset({pdf + 1}), yes=len(nodes) + 1, no=len(nodes) + 2),
            TreeNode(pdf=pdf),
        ]
    nodes.append(TreeNode(pdf=num_pdfs - 1))
    ContextTree(nodes, num_pdfs, [[(p + 1, 0)] for p in range(num_pdfs)]).save(path)
    return path


def _feats(directory):
    rng = np.random.default_rng(0)
    lengths = {"u1": 5, "u2": 7, "u3": 4, "u4": 6}
    man = ShardManifest(directory, "feats")
    for i, keys in enumerate([["u1", "u2"], ["u3", "u4"]]):
        man.shards.append(
            write_shard(
                directory / man.shard_name(i),
                ((k, {"feats": rng.normal(size=(lengths[k], 40)).astype(np.float16)}) for k in keys),
            )
        )
    man.save()
    return man, lengths


@pytest.mark.parametrize("form", ["ark", "scp"])
def test_import_checks_frames_and_keeps_shards_aligned(tmp_path, form):
    man, lengths = _feats(tmp_path / "fbank")
    alis = {
        "u1": np.array([0, 0, 3, 3, 5], dtype=np.int32),
        "u2": np.array([1, 2, 2], dtype=np.int32),  # 3 frames for 7: mismatch
        "u4": np.arange(6, dtype=np.int32),
        "zz": np.array([9], dtype=np.int32),  # not in the features
    }  # u3: no alignment
    ark = tmp_path / "pdf.ark"
    kaldiio.save_ark(str(ark), alis, scp=str(tmp_path / "pdf.scp"))
    src = tmp_path / f"pdf.{form}"
    tree = _tree(tmp_path / "tree.json", 10)
    res = import_kaldi_alignments(src, man, tmp_path / "ali", tree)
    assert res.num_pdfs == 10 and res.unused == ["zz"] and res.num_frames == 11
    assert set(res.skipped) == {"u2", "u3"}
    assert "3 frames" in res.skipped["u2"] and "7" in res.skipped["u2"]
    assert read_skipped(tmp_path / "ali/skipped.tsv") == res.skipped
    got = {}
    for f, p in zip(man.shard_paths, res.pdf.shard_paths):
        assert p.name == f.name.replace("feats", "pdf")
        for utt, s in iter_aligned([f, p]):
            got[utt] = s["pdf"]
            assert s["pdf"].dtype == np.int32
            assert s["pdf"].shape[0] in (0, lengths[utt])
    assert np.array_equal(got["u1"], alis["u1"]) and np.array_equal(got["u4"], alis["u4"])
    assert got["u2"].size == 0 and got["u3"].size == 0
    meta = ShardManifest.load(tmp_path / "ali", "pdf").meta
    assert meta["num_pdfs"] == 10 and meta["tree_sha256"] == tree_sha256(tree)
    # a finished import is reused; force redoes it
    again = import_kaldi_alignments(src, man, tmp_path / "ali", tmp_path)
    assert again.skipped == res.skipped and again.num_pdfs == 10


def test_ids_beyond_the_tree_and_labels_for_another_tree_are_refused(tmp_path):
    man, _ = _feats(tmp_path / "fbank")
    kaldiio.save_ark(str(tmp_path / "pdf.ark"), {"u1": np.array([0, 0, 3, 3, 9], dtype=np.int32)})
    with pytest.raises(ValueError, match="pdf id 9 >= 8, the senone count of .*another tree"):
        import_kaldi_alignments(tmp_path / "pdf.ark", man, tmp_path / "ali", _tree(tmp_path / "small.json", 8))
    with pytest.raises(FileNotFoundError, match="no tree.json"):
        import_kaldi_alignments(tmp_path / "pdf.ark", man, tmp_path / "ali", tmp_path / "nowhere")
    res = import_kaldi_alignments(tmp_path / "pdf.ark", man, tmp_path / "ali", _tree(tmp_path / "ours.json", 12))
    graph = tmp_path / "graph"
    graph.mkdir()
    (graph / "graph.json").write_text(f'{{"num_pdfs": 12, "tree_sha256": "{tree_sha256(tmp_path / "ours.json")}"}}')
    check_labels_match_graph(res.pdf.meta, graph, tmp_path / "ali")  # the same tree: fine
    (graph / "graph.json").write_text('{"num_pdfs": 12, "tree_sha256": "0123"}')
    with pytest.raises(ValueError, match="labels are for the tree .*ours.json.*another tree"):
        check_labels_match_graph(res.pdf.meta, graph, tmp_path / "ali")
    # a changed tree file is a changed input: the import is redone, not reused
    _tree(tmp_path / "ours.json", 11)
    again = import_kaldi_alignments(tmp_path / "pdf.ark", man, tmp_path / "ali", tmp_path / "ours.json")
    assert again.num_pdfs == 11


def test_bad_alignment_files(tmp_path):
    man, _ = _feats(tmp_path / "fbank")
    with pytest.raises(FileNotFoundError, match="missing.ark"):
        read_kaldi_int_vectors(tmp_path / "missing.ark")
    kaldiio.save_ark(str(tmp_path / "float.ark"), {"u1": np.zeros((5, 2), dtype=np.float32)})
    with pytest.raises(ValueError, match="float.ark: u1: expected an int vector"):
        read_kaldi_int_vectors(tmp_path / "float.ark")
    kaldiio.save_ark(str(tmp_path / "big.ark"), {"u1": np.array([0, 1, 2, 3, 50], dtype=np.int32)})
    with pytest.raises(ValueError, match="u1: pdf id 50 >= 40"):
        import_kaldi_alignments(tmp_path / "big.ark", man, tmp_path / "out", _tree(tmp_path / "tree.json", 40))
    (tmp_path / "junk.ark").write_bytes(b"u1 \x00Bgarbage")
    with pytest.raises(ValueError, match="junk.ark"):
        read_kaldi_int_vectors(tmp_path / "junk.ark")
