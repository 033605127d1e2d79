"""The graph build's memory: what it will need, and the habits that keep its peak there.

* :func:`estimate_graph_memory_gb`: the peak, from the LM's n-grams and the lexicon's
  phones, checked against ``graph.max_memory_gb`` before anything is built.
* Each intermediate graph is written out (:func:`~asrdistill.decoding.const_fst.save_const`),
  freed by its only holder, and read back with :func:`reload` after :func:`trim_heap`:
  so the next graph is not built among the freed one's heap fragments.
* :func:`peak_rss_mb` and :func:`cpu_seconds` are the figures ``graph.json`` records.
"""

from __future__ import annotations

import ctypes
import math
import resource
from pathlib import Path

import kaldifst

from asrdistill.decoding.const_fst import read_vector

__all__ = ["estimate_graph_memory_gb", "available_memory_gb", "trim_heap", "reload", "cpu_seconds", "peak_rss_mb"]

# Peak RSS model fitted to builds of benchmarks/bench_graph.py (BENCHMARKS.md, "HCLG at real size") with a
# 70k-word CMUdict lexicon (74,740 pronunciations, 475,497 phones) and a 2,091-leaf tree at dd8ec89: 1M n-grams ->
# 1.57 GB, 2M -> 2.75 GB (the breadth-first numbering in the writer is the peak), 4M -> 5.12 GB (LG's
# determinisation and minimisation), over the ~40 MB the interpreter holds (no torch); per phone from the
# intercept. Rounded up by ~10-13%: an estimate that errs high.
_BYTES_PER_NGRAM = 1350.0
_BYTES_PER_LEXICON_PHONE = 400.0
_BASE_BYTES = 200e6


def estimate_graph_memory_gb(num_ngrams: int, lexicon_phones: int) -> float:
    """Estimated peak memory (GB) of :func:`~asrdistill.decoding.hclg.build_graph` from the LM's n-grams and the
    lexicon's phones."""
    return (_BASE_BYTES + _BYTES_PER_NGRAM * num_ngrams + _BYTES_PER_LEXICON_PHONE * lexicon_phones) / 1e9


def available_memory_gb() -> float:
    """MemAvailable from /proc/meminfo (inf where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return math.inf


def trim_heap() -> None:
    """Return the heap memory freed with an OpenFst graph to the OS (glibc's ``malloc_trim``).

    Otherwise glibc keeps it, and the numpy arrays of the next pass (their own
    mappings, not the heap) stack on top of it: measured on a 2M-n-gram build,
    ~2 GB of a freed VectorFst stayed resident under the self-loop pass.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def reload(path: Path) -> kaldifst.StdVectorFst:
    """A VectorFst read back from ``path`` after the heap is trimmed (the caller has freed the graph it wrote).

    OpenFst allocates per state; a graph built among the fragments of a freed
    one keeps them resident. Measured on the 4M-n-gram LG (9.7M states): the
    process held 4.1 GB after determinising and minimising it in place, 2.1 GB
    with it written and read back.
    """
    trim_heap()
    return read_vector(path)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
