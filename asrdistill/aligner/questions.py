"""Phone-set questions for the decision tree: ARPAbet phonetic classes and data-driven clusters.

A question is a set of phone ids; the tree asks whether the left or right
context phone is in it. Hand-written classes carry phonetic knowledge that
generalises to unseen triphones; automatic clusters (bottom-up merging of the
per-phone Gaussians with the least likelihood loss, the hierarchy Kaldi's
``cluster-phones`` builds) adapt to whatever the data and phone set are. Both
include every singleton and the "silence or utterance edge" set, where ``0``
means no phone at an utterance edge.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from asrdistill.aligner.stats import TriphoneStats, gaussian_loglike

__all__ = ["ARPABET_CLASSES", "arpabet_questions", "cluster_questions", "phone_questions"]

_VOWELS = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW"
ARPABET_CLASSES: dict[str, frozenset[str]] = {
    name: frozenset(members.split())
    for name, members in {
        "vowel": _VOWELS,
        "consonant": "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH",
        "stop": "B D G K P T",
        "affricate": "CH JH",
        "fricative": "DH F HH S SH TH V Z ZH",
        "sibilant": "CH JH S SH Z ZH",
        "nasal": "M N NG",
        "liquid": "L R",
        "glide": "W Y",
        "approximant": "L R W Y",
        "sonorant": _VOWELS + " L M N NG R W Y",
        "obstruent": "B CH D DH F G HH JH K P S SH T TH V Z ZH",
        "front_vowel": "AE EH EY IH IY",
        "central_vowel": "AH ER",
        "back_vowel": "AA AO OW UH UW",
        "high_vowel": "IH IY UH UW",
        "mid_vowel": "AH EH ER EY OW",
        "low_vowel": "AA AE AO AW AY",
        "diphthong": "AW AY EY OW OY",
        "rounded": "AO OW OY UH UW W",
        "rhotic": "ER R",
        "voiced": _VOWELS + " B D DH G JH L M N NG R V W Y Z ZH",
        "voiced_obstruent": "B D DH G JH V Z ZH",
        "unvoiced": "CH F HH K P S SH T TH",
        "labial": "B F M P V W",
        "bilabial": "B M P",
        "labiodental": "F V",
        "dental": "DH TH",
        "coronal": "CH D DH JH L N R S SH T TH Z ZH",
        "alveolar": "D L N S T Z",
        "postalveolar": "CH JH SH ZH",
        "palatal": "CH JH SH Y ZH",
        "velar": "G K NG",
        "dorsal": "G K NG W Y",
        "glottal": "HH",
        "voiced_stop": "B D G",
        "unvoiced_stop": "K P T",
        "voiced_fricative": "DH V Z ZH",
        "unvoiced_fricative": "F HH S SH TH",
    }.items()
}


def _base(phone: str) -> str:
    """``AH1`` -> ``AH``, ``T_B`` -> ``T``: classes hold stress- and position-free names."""
    return re.sub(r"\d+$", "", phone.split("_")[0]).upper()


def _dedup(sets: Iterable[frozenset[int]]) -> list[frozenset[int]]:
    seen: dict[frozenset[int], None] = {}
    for s in sets:
        if s:
            seen.setdefault(s, None)
    return list(seen)


def _basic(phones: list[str]) -> list[frozenset[int]]:
    """Singletons (with 0 for the utterance edge) and the silence(-or-edge) sets."""
    ids = range(len(phones))
    sil = frozenset(i for i, p in enumerate(phones) if p in ("SIL", "SPN"))
    return [frozenset([i]) for i in ids] + [sil, sil | {0}]


def arpabet_questions(phones: list[str]) -> list[frozenset[int]]:
    """Questions from :data:`ARPABET_CLASSES` over ``phones`` (index = id, ``phones[0]`` is ``<eps>``).

    Classes with no member in the phone set are dropped, so a non-ARPAbet phone
    set simply gets the singletons and silence sets.
    """
    classes = [
        frozenset(i for i, p in enumerate(phones) if i > 0 and _base(p) in members)
        for members in ARPABET_CLASSES.values()
    ]
    return _dedup(_basic(phones) + classes)


def cluster_questions(stats: TriphoneStats, phones: list[str], var_floor: float = 0.01) -> list[frozenset[int]]:
    """Hierarchy of phone sets by bottom-up merging of per-phone Gaussians.

    Each phone is described by one Gaussian per HMM state (pooled over its
    contexts); at each step the two clusters whose merge loses the least
    log-likelihood are merged, and every cluster formed is a question.
    """
    num_states = int(stats.contexts[:, 3].max()) + 1 if len(stats) else 1
    n_ph, dim = len(phones), stats.dim
    cnt = np.zeros((n_ph, num_states))
    s1 = np.zeros((n_ph, num_states, dim))
    s2 = np.zeros((n_ph, num_states, dim))
    c, s = stats.contexts[:, 1], stats.contexts[:, 3]
    np.add.at(cnt, (c, s), stats.count)
    np.add.at(s1, (c, s), stats.sum)
    np.add.at(s2, (c, s), stats.sumsq)
    seen = [p for p in range(1, n_ph) if cnt[p].sum() > 0]
    members = [frozenset([p]) for p in seen]
    cnt, s1, s2 = cnt[seen], s1[seen], s2[seen]

    def objf(k, a, b) -> np.ndarray:  # per cluster, summed over states
        return gaussian_loglike(k, a, b, var_floor).sum(-1)

    own = objf(cnt, s1, s2)
    # loss[i, j]: log-likelihood lost by merging clusters i and j (inf on/below the diagonal)
    loss = own[:, None] + own[None, :] - objf(cnt[:, None] + cnt[None], s1[:, None] + s1[None], s2[:, None] + s2[None])
    loss[np.tril_indices(len(seen))] = np.inf
    alive = np.ones(len(seen), dtype=bool)
    formed: list[frozenset[int]] = []
    for _ in range(len(seen) - 1):
        i, j = np.unravel_index(np.argmin(loss), loss.shape)
        members[i] = members[i] | members[j]
        formed.append(members[i])
        cnt[i] += cnt[j]
        s1[i] += s1[j]
        s2[i] += s2[j]
        own[i] = objf(cnt[i], s1[i], s2[i])
        alive[j] = False
        loss[j, :] = loss[:, j] = np.inf
        row = own[i] + own - objf(cnt[i] + cnt, s1[i] + s1, s2[i] + s2)
        row[~alive] = np.inf
        row[i] = np.inf
        loss[i, :] = np.where(np.arange(len(seen)) > i, row, np.inf)
        loss[:, i] = np.where(np.arange(len(seen)) < i, row, np.inf)
    return _dedup(_basic(phones) + formed)


def phone_questions(
    kind: str, phones: list[str], stats: TriphoneStats, var_floor: float = 0.01
) -> list[frozenset[int]]:
    """Questions of ``kind`` ``'arpabet'``, ``'auto'`` or ``'both'``."""
    if kind == "arpabet":
        return arpabet_questions(phones)
    if kind == "auto":
        return cluster_questions(stats, phones, var_floor)
    if kind == "both":
        return _dedup(arpabet_questions(phones) + cluster_questions(stats, phones, var_floor))
    raise ValueError(f"questions must be 'arpabet', 'auto' or 'both', got {kind!r}")
