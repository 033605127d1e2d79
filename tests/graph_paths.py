"""The senone path a decoding graph must accept for given words: the oracle of the graph and decoder tests.

Not a test module (pytest collects ``test_*.py`` only); ``benchmarks/bench_decode.py``
also uses it to make synthetic posteriors along a sentence's path.
"""

from __future__ import annotations

import numpy as np

from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import ContextTree
from asrdistill.data.lang import Lang


def pdf_sequence(
    prons: list[tuple[str, ...]], lang: Lang, tree: ContextTree, topo: Topology, frames_per_state: int = 1
) -> np.ndarray:
    """Senone per frame for phones ``prons`` (words and silences in order), triphone context
    across word boundaries and 0 at the utterance edges: the path HCLG must accept."""
    if frames_per_state < 1:
        raise ValueError(f"frames_per_state must be >= 1, got {frames_per_state}")
    phones = [lang.phone_id[p] for pron in prons for p in pron]
    out: list[int] = []
    for i, c in enumerate(phones):
        left = phones[i - 1] if i > 0 else 0
        right = phones[i + 1] if i + 1 < len(phones) else 0
        for s in range(topo.num_states[c]):
            out += [tree.pdf(left, c, right, s)] * frames_per_state
    return np.asarray(out, dtype=np.int64)
