"""Export to Kaldi tables: senone alignments (as ``ali-to-pdf`` writes them) and any per-utterance matrices.

The counterpart of :mod:`asrdistill.aligner.kaldi_import`: ``pdf.ark``/``pdf.scp``
hold one int32 vector of senone ids per utterance, the form ``import-ali``
reads and Kaldi's ``ali-to-pdf`` writes; :func:`write_ark_scp` also writes the
per-frame log-likelihoods of a bundle (``asrdistill export-ark``). Both files
appear only when complete: the ark is written under a temporary name and the
scp, which records the ark's path and offsets, is rewritten to the final name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import kaldiio
import numpy as np

from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.fileio import atomic_path, write_text_atomic

__all__ = ["write_ark_scp", "export_alignments"]

log = logging.getLogger(__name__)


def write_ark_scp(items: Iterable[tuple[str, np.ndarray]], ark: str | Path) -> tuple[Path, Path, int]:
    """Write ``(key, array)`` pairs to the binary Kaldi archive ``ark`` and its index ``ark`` with ``.scp``.

    Returns ``(ark, scp, count)``; an empty input is an error (Kaldi tools reject empty tables silently).
    """
    ark = Path(ark).resolve()
    scp = ark.with_suffix(".scp")
    count = 0
    with atomic_path(ark) as tmp_ark, atomic_path(scp) as tmp_scp:
        with kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as writer:
            for key, array in items:
                writer(key, np.ascontiguousarray(array))
                count += 1
        if count == 0:
            raise ValueError(f"{ark}: nothing to write")
        lines = tmp_scp.read_text(encoding="utf-8").splitlines()
        fixed = []
        for line in lines:
            key, _, where = line.partition(" ")
            path, _, offset = where.rpartition(":")
            if os.path.abspath(path) != str(tmp_ark):
                raise ValueError(f"{tmp_scp}: unexpected entry {line!r}")
            fixed.append(f"{key} {ark}:{offset}\n")
        tmp_scp.write_text("".join(fixed), encoding="utf-8")
    return ark, scp, count


def export_alignments(labels: ShardManifest, out_dir: str | Path) -> tuple[Path, Path, int]:
    """Senone labels (``pdf`` shards) -> ``out_dir/pdf.ark`` + ``pdf.scp`` (int32 vectors).

    Utterances the aligner could not align (empty arrays) are left out and
    listed in ``out_dir/unaligned.txt``.
    """
    out_dir = Path(out_dir)
    unaligned: list[str] = []

    def items():
        for path in labels.shard_paths:
            for utt, sample in iter_shard(path):
                if "pdf" not in sample:
                    raise ValueError(f"{path}: sample {utt!r} has no pdf.npy")
                if sample["pdf"].size == 0:
                    unaligned.append(utt)
                    continue
                yield utt, sample["pdf"].astype(np.int32)

    ark, scp, n = write_ark_scp(items(), out_dir / "pdf.ark")
    write_text_atomic(out_dir / "unaligned.txt", "".join(f"{u}\n" for u in unaligned))
    log.info("%s: %d alignment(s) (%d unaligned utterance(s) left out)", ark, n, len(unaligned))
    return ark, scp, n
