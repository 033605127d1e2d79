"""FSTs as numpy arrays in OpenFst's ConstFst file layout, and the files they travel through.

A ConstFst file is a header, then one fixed-size record per state (:data:`STATE`) and one
per arc (:data:`ARC`, 16 bytes), the arcs grouped by source state. The graph builder's
own passes (building L, the HMM expansion, relabelling, the self-loops) run on these
arrays; OpenFst (kaldifst) reads and writes the same files for the passes it does
(compose, determinise, minimise). Every reader here removes the file it read: the files
are hand-overs between passes, not outputs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import kaldifst
import numpy as np

__all__ = [
    "STATE",
    "ARC",
    "FstArrays",
    "const_header",
    "save_const",
    "read_arrays",
    "write_arrays",
    "read_vector",
    "vector_from_arrays",
    "make_arrays",
    "make_fst",
]

STATE = np.dtype([("final", "<f4"), ("pos", "<u4"), ("narcs", "<u4"), ("niepsilons", "<u4"), ("noepsilons", "<u4")])
ARC = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("weight", "<f4"), ("nextstate", "<i4")])
_MAGIC = 2125659606
_EXPANDED = 0x1  # the only property claimed: OpenFst works out the rest when it needs them


@dataclass
class FstArrays:
    """An FST as arrays: arcs grouped by source state (``states["pos"]`` is each state's first arc)."""

    start: int
    states: np.ndarray  # (S,) STATE; final = inf for non-final states
    arcs: np.ndarray  # (A,) ARC

    def sources(self) -> np.ndarray:
        """(A,) source state of every arc."""
        return np.repeat(np.arange(len(self.states), dtype=np.int32), self.states["narcs"])


def const_header(start: int, num_states: int, num_arcs: int) -> bytes:
    """The header of a ConstFst file (standard arcs, unaligned), as kaldifst writes it."""
    return b"".join(
        [
            struct.pack("<i", _MAGIC),
            struct.pack("<i", 5),
            b"const",
            struct.pack("<i", 8),
            b"standard",
            struct.pack("<iiQqqq", 2, 0, _EXPANDED, start, num_states, num_arcs),
        ]
    )


def save_const(fst: kaldifst.StdFst, path: Path) -> Path:
    """Write ``fst`` as a ConstFst file, so that the caller can free it before reading the file back."""
    kaldifst.StdConstFst(fst).write(str(path))
    return path


def read_arrays(path: Path) -> FstArrays:
    """Arrays of a ConstFst file, which is then removed."""
    with open(path, "rb") as f:
        head = f.read(4096)
    offset = 4
    for _ in range(2):  # fst type and arc type strings
        (n,) = struct.unpack_from("<i", head, offset)
        offset += 4 + n
    if struct.unpack_from("<i", head, 0)[0] != _MAGIC or head[8:13] != b"const":
        raise ValueError(f"{path}: not a ConstFst file")
    _version, flags, _props, start, num_states, num_arcs = struct.unpack_from("<iiQqqq", head, offset)
    if flags & 0x4:  # aligned files pad between sections; kaldifst writes unaligned ones
        raise ValueError(f"{path}: aligned ConstFst files are not supported")
    offset += 40
    states = np.fromfile(path, dtype=STATE, count=num_states, offset=offset)
    arcs = np.fromfile(path, dtype=ARC, count=num_arcs, offset=offset + num_states * STATE.itemsize)
    path.unlink()
    return FstArrays(int(start), states, arcs)


def write_arrays(fst: FstArrays, path: Path) -> Path:
    """Write arrays as a ConstFst file (so the arrays can be freed before OpenFst reads it)."""
    with open(path, "wb") as f:
        f.write(const_header(fst.start, len(fst.states), len(fst.arcs)))
        fst.states.tofile(f)
        fst.arcs.tofile(f)
    return path


def read_vector(path: Path) -> kaldifst.StdVectorFst:
    """A VectorFst from a ConstFst file, which is then removed."""
    out = kaldifst.StdVectorFst(kaldifst.StdConstFst.read(str(path)))
    path.unlink()
    return out


def vector_from_arrays(fst: FstArrays, tmp: Path) -> kaldifst.StdVectorFst:
    """A VectorFst from arrays (through a ConstFst file in ``tmp``)."""
    return read_vector(write_arrays(fst, tmp / "from_arrays.fst"))


def make_arrays(
    num_states: int,
    start: int,
    src: np.ndarray,
    ilabel: np.ndarray,
    olabel: np.ndarray,
    weight: np.ndarray,
    dst: np.ndarray,
    final: np.ndarray,
) -> FstArrays:
    """Arrays from per-arc columns in any order (sorted by source, stably) and (S,) final weights."""
    src = np.asarray(src)
    order = np.argsort(src, kind="stable") if len(src) and np.any(src[1:] < src[:-1]) else None
    arcs = np.empty(len(src), dtype=ARC)
    for name, col in (("ilabel", ilabel), ("olabel", olabel), ("weight", weight), ("nextstate", dst)):
        col = np.asarray(col)
        arcs[name] = col if order is None else col[order]
    del order
    states = np.zeros(num_states, dtype=STATE)
    states["final"] = final
    states["narcs"] = np.bincount(src, minlength=num_states)
    states["pos"][1:] = np.cumsum(states["narcs"][:-1], dtype=np.uint64)
    states["niepsilons"] = np.bincount(src[np.asarray(ilabel) == 0], minlength=num_states)
    states["noepsilons"] = np.bincount(src[np.asarray(olabel) == 0], minlength=num_states)
    return FstArrays(start, states, arcs)


def make_fst(
    num_states: int,
    start: int,
    arcs: list[tuple[int, int, int, float, int]] | np.ndarray,
    finals: dict[int, float],
    tmp: Path,
) -> kaldifst.StdVectorFst:
    """A VectorFst from ``(src, ilabel, olabel, cost, dst)`` rows."""
    a = np.asarray(arcs, dtype=np.float64).reshape(-1, 5)
    final = np.full(num_states, np.inf, dtype=np.float32)
    final[list(finals)] = list(finals.values())
    cols = [a[:, i].astype(np.int64) for i in (0, 1, 2, 4)]
    return vector_from_arrays(make_arrays(num_states, start, cols[0], cols[1], cols[2], a[:, 3], cols[3], final), tmp)
