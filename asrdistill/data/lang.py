"""The ``lang`` directory: phone and word symbol tables and the lexicon.

Layout (a subset of Kaldi's ``data/lang``)::

    phones.txt             <eps> 0, SIL 1, SPN 2, then non-silence phones 3..
    words.txt              <eps> 0, then words (sorted), <UNK> among them
    lexicon.txt            WORD PH1 PH2 ...   (several lines per word allowed)
    silence_phones.txt     SIL, SPN
    nonsilence_phones.txt  one phone per line
    optional_silence.txt   SIL

Disambiguation symbols are not stored here: the decoding graph builder adds
its own. Phones are position-independent; id 0 is never a real phone, so the
aligner's tree can use 0 for "no context" at utterance edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asrdistill.fileio import atomic_open

__all__ = ["Lang", "SIL", "SPN", "UNK"]

SIL = "SIL"
SPN = "SPN"
UNK = "<UNK>"


@dataclass
class Lang:
    """Phone inventory and lexicon; symbol ids follow the list order (``<eps>`` is 0)."""

    phones: list[str]  # ["<eps>", "SIL", "SPN", "AA", ...]
    words: list[str]  # ["<eps>", "<UNK>", "A", ...]
    lexicon: list[tuple[str, tuple[str, ...]]]  # [(word, (phone, ...)), ...]

    def __post_init__(self) -> None:
        if self.phones[:3] != ["<eps>", SIL, SPN]:
            raise ValueError(f"phones must start with <eps>, {SIL}, {SPN}; got {self.phones[:3]}")
        if self.words[0] != "<eps>":
            raise ValueError("words must start with <eps>")
        known = set(self.phones)
        for word, pron in self.lexicon:
            bad = [p for p in pron if p not in known]
            if bad or not pron:
                raise ValueError(f"lexicon entry {word!r} has unknown or no phones: {bad or pron}")

    @property
    def phone_id(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.phones)}

    @property
    def word_id(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @property
    def silence_phones(self) -> list[str]:
        return [SIL, SPN]

    @property
    def nonsilence_phones(self) -> list[str]:
        return self.phones[3:]

    @property
    def num_phones(self) -> int:
        """Real phones (excluding ``<eps>``); ids run 1..num_phones."""
        return len(self.phones) - 1

    def pronunciations(self) -> dict[str, list[tuple[str, ...]]]:
        out: dict[str, list[tuple[str, ...]]] = {}
        for word, pron in self.lexicon:
            out.setdefault(word, []).append(pron)
        return out

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)

        def table(name: str, symbols: list[str]) -> None:
            with atomic_open(directory / name) as f:
                f.writelines(f"{s} {i}\n" for i, s in enumerate(symbols))

        def lines(name: str, rows: list[str]) -> None:
            with atomic_open(directory / name) as f:
                f.writelines(f"{r}\n" for r in rows)

        table("phones.txt", self.phones)
        table("words.txt", self.words)
        lines("lexicon.txt", [f"{w} {' '.join(p)}" for w, p in self.lexicon])
        lines("silence_phones.txt", self.silence_phones)
        lines("nonsilence_phones.txt", self.nonsilence_phones)
        lines("optional_silence.txt", [SIL])
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Lang":
        directory = Path(directory)

        def table(name: str) -> list[str]:
            rows = [
                line.split() for line in (directory / name).read_text(encoding="utf-8").splitlines() if line.strip()
            ]
            symbols = [r[0] for r in sorted(rows, key=lambda r: int(r[1]))]
            if [int(r[1]) for r in sorted(rows, key=lambda r: int(r[1]))] != list(range(len(rows))):
                raise ValueError(f"{directory / name}: ids must be 0..N-1 without gaps")
            return symbols

        lexicon = []
        for line in (directory / "lexicon.txt").read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if parts:
                lexicon.append((parts[0], tuple(parts[1:])))
        return cls(phones=table("phones.txt"), words=table("words.txt"), lexicon=lexicon)
