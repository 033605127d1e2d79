"""Import pdf-level Kaldi alignments (``ali-to-pdf`` output, ark or scp) as label shards.

Users with pdf alignments from elsewhere can skip the built-in aligner:
``ali-to-pdf final.mdl "ark:gunzip -c ali.*.gz|" ark,scp:pdf.ark,pdf.scp``, then
import ``pdf.scp`` here. Each alignment is checked against the features' frame
count (Kaldi and our fbank must agree on framing: 25 ms / 10 ms, snip-edges); a
mismatch or a missing alignment leaves an empty array in the shard and a line
in ``skipped.tsv`` naming the utterance and both counts.

pdf ids mean something only with the tree that defined them: the priors, the
decoding graph and every bundle are built from it. So an import names the
asrdistill ``tree.json`` the ids belong to (for example one written by
``asrdistill export-ark`` users round-tripping our labels), bounds the ids by
its senone count and records its sha256 in the manifest; a bundle refuses labels
imported for another tree. A Kaldi ``tree`` file is not read: with Kaldi's own
tree, decode with Kaldi's graph from our log-likelihoods (``asrdistill export-ark``).

    res = import_kaldi_alignments("exp/ali/pdf.scp", feats_manifest, "exp/kaldi_ali/train", "exp/tri/tree.json")
    res.pdf  # ShardManifest "pdf", aligned 1:1 with the feature shards
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import kaldiio
import numpy as np

from asrdistill.aligner.tree import ContextTree, tree_sha256
from asrdistill.data.datadir import check_pipes
from asrdistill.data.shards import PDF_PREFIX, ShardInfo, ShardManifest, iter_shard, write_shard
from asrdistill.fileio import mark_done, read_skipped, stage_done, write_skipped
from asrdistill.logs import progress

__all__ = ["ImportResult", "read_kaldi_int_vectors", "import_kaldi_alignments"]

log = logging.getLogger(__name__)


@dataclass
class ImportResult:
    pdf: ShardManifest
    skipped: dict[str, str]  # utt -> reason (features without a usable alignment)
    unused: list[str]  # alignments for utterances that are not in the features
    num_pdfs: int
    num_frames: int


def read_kaldi_int_vectors(path: str | Path) -> dict[str, np.ndarray]:
    """All int vectors of a Kaldi ``.ark`` or ``.scp`` file (chosen by suffix), as int32 arrays.

    A malformed entry raises ``ValueError`` naming the file and utterance.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Kaldi alignment file not found")
    out: dict[str, np.ndarray] = {}
    for utt, arr in _kaldi_items(path):
        arr = np.asarray(arr)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{path}: {utt}: expected an int vector (ali-to-pdf output), got {arr.dtype} array of shape {arr.shape}"
            )
        if arr.size and arr.min() < 0:
            raise ValueError(f"{path}: {utt}: negative pdf id {int(arr.min())}")
        if utt in out:
            raise ValueError(f"{path}: duplicate utterance {utt!r}")
        out[utt] = arr.astype(np.int32)
    return out


def _kaldi_items(path: Path):
    """kaldiio's ``(utt, array)`` pairs, its assorted errors on corrupt input turned into one naming the file."""
    try:
        items = kaldiio.load_scp(str(path)).items() if path.suffix == ".scp" else kaldiio.load_ark(str(path))
        for utt, arr in items:
            yield utt, arr
    except Exception as e:
        raise ValueError(f"{path}: cannot read Kaldi alignments: {e}") from e


def import_kaldi_alignments(
    ali: str | Path,
    feats: ShardManifest,
    out_dir: str | Path,
    tree: str | Path,
    force: bool = False,
    allow_pipes: bool = False,
) -> ImportResult:
    """Write ``pdf-NNNNNN.tar`` shards (``<utt>.pdf.npy``) for ``feats`` from Kaldi pdf alignments.

    ``tree``: the ``tree.json`` (or a folder holding it) whose senones the ids
    are; ids beyond its senone count are an error. An ``.scp`` whose entries
    are shell commands is refused unless ``allow_pipes``.
    """
    out_dir, ali = Path(out_dir), Path(ali)
    tree = _tree_file(Path(tree))
    if ali.suffix == ".scp" and ali.is_file():
        check_pipes(ali, allow_pipes)
    num_pdfs = ContextTree.load(tree).num_pdfs
    inputs = {"ali": ali, "feats": [feats.path, feats.shard_paths], "tree": tree}
    if stage_done(out_dir, "kaldi_import", inputs, force) is not None:
        pdf = ShardManifest.load(out_dir, PDF_PREFIX)
        return ImportResult(
            pdf, read_skipped(out_dir / "skipped.tsv"), [], int(pdf.meta.get("num_pdfs", 0)), pdf.num_frames
        )
    t0 = time.time()
    alis = _read_for_tree(ali, num_pdfs, tree)
    infos, skipped, frames = _write_pdf_shards(alis, feats, out_dir)
    known = set(feats.keys)
    unused = sorted(u for u in alis if u not in known)
    pdf = ShardManifest(
        out_dir,
        PDF_PREFIX,
        infos,
        {"num_pdfs": num_pdfs, "source": str(ali), "tree": str(tree), "tree_sha256": tree_sha256(tree)},
    )
    pdf.save()
    write_skipped(out_dir / "skipped.tsv", skipped)
    mark_done(out_dir, "kaldi_import", {"source": str(ali), "num_pdfs": num_pdfs, "skipped": len(skipped)}, inputs)
    if skipped:
        log.warning(
            "%s: %d utterance(s) without a usable alignment, e.g. %s (see skipped.tsv)",
            out_dir,
            len(skipped),
            list(skipped.items())[:3],
        )
    if unused:
        log.warning("%s: %d alignment(s) for utterances not in the features, e.g. %s", ali, len(unused), unused[:3])
    log.info("imported %d frames, %d pdfs in %.1f s", frames, num_pdfs, time.time() - t0)
    return ImportResult(pdf, skipped, unused, num_pdfs, frames)


def _tree_file(tree: Path) -> Path:
    """``tree`` itself or the ``tree.json`` in that folder; its absence is the user's error, said plainly."""
    if tree.is_dir():
        tree = tree / "tree.json"
    if not tree.is_file():
        raise FileNotFoundError(
            f"{tree}: no tree.json; give the asrdistill tree whose senones the alignment ids are (e.g. exp/tri)"
        )
    return tree


def _read_for_tree(ali: Path, num_pdfs: int, tree: Path) -> dict[str, np.ndarray]:
    """The alignments of ``ali``, refused as a whole if any id is beyond the tree's senones (another tree's ids)."""
    alis = read_kaldi_int_vectors(ali)
    top = max((int(a.max()) for a in alis.values() if a.size), default=-1) + 1
    if top > num_pdfs:
        bad = next(u for u, a in alis.items() if a.size and a.max() >= num_pdfs)
        raise ValueError(
            f"{ali}: {bad}: pdf id {int(alis[bad].max())} >= {num_pdfs}, the senone count of {tree}: "
            "these alignments were made with another tree"
        )
    return alis


def _write_pdf_shards(
    alis: dict[str, np.ndarray], feats: ShardManifest, out_dir: Path
) -> tuple[list[ShardInfo], dict[str, str], int]:
    """One pdf shard per feature shard, same keys in the same order; a missing or mis-sized alignment is empty.

    Returns the shard infos, the skipped utterances (utt -> reason) and the labelled frame count.
    """
    skipped: dict[str, str] = {}
    infos = []
    frames = 0
    empty = np.zeros(0, dtype=np.int32)
    for info, path in progress(list(zip(feats.shards, feats.shard_paths)), desc="import alignments", unit="shard"):
        rows = []
        for utt, sample in iter_shard(path):
            t = int(sample["feats"].shape[0])
            a = alis.get(utt)
            if a is None:
                skipped[utt] = "no alignment in the Kaldi file"
                a = empty
            elif a.shape[0] != t:
                skipped[utt] = f"alignment has {a.shape[0]} frames but the features have {t}"
                a = empty
            frames += a.shape[0]
            rows.append((utt, {"pdf": a}))
        if not info.name.startswith(feats.prefix):
            raise ValueError(f"{feats.path}: shard {info.name!r} does not start with prefix {feats.prefix!r}")
        infos.append(write_shard(out_dir / (PDF_PREFIX + info.name[len(feats.prefix) :]), rows, frames_field="pdf"))
    return infos, skipped, frames
