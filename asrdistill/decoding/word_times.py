"""Word start and end frames from a best path's senone alignment, as Kaldi's word alignment finds them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from asrdistill.aligner.tree import ContextTree
from asrdistill.data.lang import Lang

__all__ = ["word_times"]


def _phone_segments(ali: np.ndarray, tree: ContextTree) -> list[tuple[int, int, int]]:
    """``(phone, start, end)`` runs of a senone alignment: a new phone where the centre phone changes
    or the HMM state goes back (the same phone again)."""
    segs: list[tuple[int, int, int]] = []
    prev_phone, prev_state = -1, -1
    for t, pdf in enumerate(ali.tolist()):
        phone, state = tree.pdf_info[pdf][0] if tree.pdf_info[pdf] else (-1, -1)
        if phone != prev_phone or state < prev_state:
            segs.append((phone, t, t + 1))
        else:
            segs[-1] = (phone, segs[-1][1], t + 1)
        prev_phone, prev_state = phone, state
    return segs


def word_times(
    ali: np.ndarray, words: Sequence[str], lang: Lang, tree: ContextTree
) -> tuple[list[tuple[int, int]], bool]:
    """``([(start_frame, end_frame)] per word, exact)`` from the best path's senone alignment.

    The alignment's phone runs are matched to the words' pronunciations in order
    (optional silence between words), as Kaldi's word alignment does with word
    boundary information. When no pronunciation fits (``exact`` False), the
    frames are shared among the words in proportion to their phone counts.
    """
    if not words:
        return [], True
    segs = _phone_segments(np.asarray(ali), tree)
    prons = lang.pronunciations()
    pid = lang.phone_id
    sil = pid[lang.silence_phones[0]]
    times: list[tuple[int, int]] = []
    i = 0
    for w in words:
        while i < len(segs) and segs[i][0] == sil and not any(p[0] == lang.silence_phones[0] for p in prons.get(w, [])):
            i += 1
        match = None
        for pron in sorted(prons.get(w, []), key=len, reverse=True):
            ids = [pid[p] for p in pron]
            if [s[0] for s in segs[i : i + len(ids)]] == ids:
                match = len(ids)
                break
        if match is None:
            break
        times.append((segs[i][1], segs[i + match - 1][2]))
        i += match
    if len(times) == len(words) and all(s[0] == sil for s in segs[i:]):
        return times, True
    weights = [min((len(p) for p in prons.get(w, [])), default=1) for w in words]
    speech = [s for s in segs if s[0] != sil] or segs
    start, end = (speech[0][1], speech[-1][2]) if speech else (0, len(ali))
    edges = np.round(start + (end - start) * np.cumsum([0] + weights) / sum(weights)).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])], False
