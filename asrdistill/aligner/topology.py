"""HMM topology: left-to-right states per phone, with self-loop probabilities.

Shared by the aligner (which estimates the self-loops from alignments) and the
decoding graph (whose H transducer needs the same states and transitions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from asrdistill.fileio import write_json_atomic

__all__ = ["Topology"]


@dataclass
class Topology:
    """``num_states[p]`` states for phone id ``p`` (index 0, ``<eps>``, unused).

    ``self_loop[p][s]`` is the probability of staying in state ``s`` of phone
    ``p``; leaving goes to state ``s + 1`` (or out of the phone from the last).
    """

    num_states: list[int]
    self_loop: list[list[float]]

    @classmethod
    def uniform(
        cls,
        num_phones: int,
        states: int = 3,
        silence_states: int = 3,
        silence_ids: tuple[int, ...] = (1, 2),
        self_loop: float = 0.75,
    ) -> "Topology":
        """Initial topology for ``num_phones`` real phones (ids 1..num_phones)."""
        n = [0] + [silence_states if p in silence_ids else states for p in range(1, num_phones + 1)]
        return cls(n, [[self_loop] * k for k in n])

    @property
    def max_states(self) -> int:
        return max(self.num_states)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, {"num_states": self.num_states, "self_loop": self.self_loop})

    @classmethod
    def load(cls, path: str | Path) -> "Topology":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(list(data["num_states"]), [list(x) for x in data["self_loop"]])
