"""Hybrid DNN-HMM decoding of senone posteriors with an HCLG graph.

The network gives posteriors p(s | x); the HMM needs likelihoods p(x | s),
which up to a per-frame constant are p(s | x) / p(s). So the decoder's scores
are ``(log p(s|x) - log p(s)) * acoustic_scale`` with priors p(s) from the
training alignments' senone counts, and the acoustic scale (the inverse LM
weight) is tuned on dev and applied unchanged to test.

Posteriors arrive as an iterable of ``(utt_id, log_posteriors (T, num_pdfs))``
from one model or an ensemble, so this module never touches a network.
Utterances are decoded by ``nj`` worker processes forked after the graph is
loaded once, so they share its pages; the dev sweep searches each utterance at
every acoustic scale from one network pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import kaldi_decoder
import kaldifst
import numpy as np

from asrdistill.config import check_integer, check_number
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.decoding.hclg import load_graph_info
from asrdistill.decoding.scoring import WerResult, wer_report
from asrdistill.fileio import atomic_open, write_json_atomic
from asrdistill.logs import progress
from asrdistill.parallel import Executor

__all__ = ["DecodeConfig", "DecodeResult", "SweepResult", "compute_priors", "decode", "sweep", "FRAME_RATE"]

log = logging.getLogger(__name__)

FRAME_RATE = 100.0  # frames per second of audio (10 ms shift)


@dataclass
class DecodeConfig:
    """The search's settings; each is checked when the config is made, so a bad one never reaches the decoder."""

    beam: float = 13.0  # > 0, finite: cost window of the beam search
    max_active: int = 7000  # integer >= min_active: most states kept per frame
    min_active: int = 200  # integer >= 0
    acoustic_scale: float = 0.1  # > 0, finite
    nj: int = 2  # decoding processes, >= 1
    sweep_scales: list[float] = field(default_factory=lambda: [0.06, 0.08, 0.1, 0.12, 0.14])  # each > 0, finite

    def __post_init__(self) -> None:
        check_number("beam", self.beam)
        check_number("acoustic_scale", self.acoustic_scale)
        check_integer("min_active", self.min_active, 0)
        check_integer("max_active", self.max_active, max(self.min_active, 1))
        check_integer("nj", self.nj, 1)
        if not isinstance(self.sweep_scales, (list, tuple)):
            raise ValueError(f"sweep_scales must be a list of positive numbers, got {self.sweep_scales!r}")
        for i, scale in enumerate(self.sweep_scales):
            check_number(f"sweep_scales[{i}]", scale)


@dataclass
class DecodeResult:
    """Word hypotheses plus the figures a run report needs."""

    hyps: dict[str, list[str]]
    partial: list[str]  # utterances that reached no final state (best partial path kept)
    num_frames: int
    decode_seconds: float  # decoder CPU time summed over workers (excludes the network)
    wall_seconds: float
    acoustic_scale: float
    alignments: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # utt -> (T,) int32 senone per frame of the best path

    @property
    def rtf(self) -> float:
        """Real-time factor of the search on one core: decoder seconds per second of audio."""
        return self.decode_seconds / max(self.num_frames / FRAME_RATE, 1e-9)

    def save(self, out_dir: str | Path) -> None:
        """``hyp.txt`` (Kaldi text), ``partial.txt`` and ``decode.json`` in ``out_dir``."""
        out_dir = Path(out_dir)
        with atomic_open(out_dir / "hyp.txt") as f:
            f.writelines(f"{u} {' '.join(w)}".rstrip() + "\n" for u, w in sorted(self.hyps.items()))
        with atomic_open(out_dir / "partial.txt") as f:
            f.writelines(f"{u}\n" for u in self.partial)
        write_json_atomic(
            out_dir / "decode.json",
            {
                "utterances": len(self.hyps),
                "partial": len(self.partial),
                "num_frames": self.num_frames,
                "decode_seconds": round(self.decode_seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3),
                "rtf_per_core": round(self.rtf, 5),
                "acoustic_scale": self.acoustic_scale,
            },
        )


@dataclass
class SweepResult:
    best_scale: float
    wer: dict[float, float]  # dev %WER per acoustic scale
    results: dict[float, WerResult]


def compute_priors(pdf_manifests: Sequence[ShardManifest], num_pdfs: int, floor: float = 1e-8) -> np.ndarray:
    """Log senone priors (num_pdfs,) from the ``<utt>.pdf.npy`` counts of aligned label shards.

    Senones never seen in the alignments get ``floor`` rather than a zero
    prior, whose log would make their likelihood infinite.
    """
    counts = np.zeros(num_pdfs, dtype=np.int64)
    paths = [p for m in pdf_manifests for p in m.shard_paths]
    for path in progress(paths, desc="priors", unit="shard"):
        for utt, sample in iter_shard(path):
            if "pdf" not in sample:
                raise ValueError(f"{path}: sample {utt!r} has no pdf.npy")
            pdf = sample["pdf"]
            if pdf.size and (pdf.min() < 0 or pdf.max() >= num_pdfs):
                raise ValueError(
                    f"{path}: {utt} has senone ids in [{pdf.min()}, {pdf.max()}], outside 0..{num_pdfs - 1}"
                )
            counts += np.bincount(pdf, minlength=num_pdfs)
    total = counts.sum()
    if total == 0:
        raise ValueError(f"no aligned frames in {[str(m.path) for m in pdf_manifests]}: cannot estimate priors")
    unseen = int((counts == 0).sum())
    if unseen:
        log.warning("%d of %d senones never occur in the alignments; prior floored at %g", unseen, num_pdfs, floor)
    return np.log(np.maximum(counts / total, floor)).astype(np.float32)


# --- worker side: one read-only graph shared by every worker ---------------------------------------

_worker: dict = {}


def _load_graph(graph_dir: str, config: DecodeConfig) -> None:
    """Load HCLG into this process; forked workers then share its pages instead of reading a copy each."""
    path = Path(graph_dir) / "HCLG.fst"
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if _worker.get("graph") != key:  # kept for the next call (sweep then test decode the same graph)
        try:
            fst = kaldifst.StdConstFst.read(str(path))  # None (and a line on stderr) for a file it cannot parse
        except Exception as e:  # noqa: BLE001 - the binding raises what its C++ code throws
            fst, reason = None, " ".join(str(e).split()) or type(e).__name__
        else:
            reason = "bad header or content"
        if fst is None:
            raise ValueError(f"{path}: not a usable decoding graph (an OpenFst const FST): {reason}")
        _worker["fst"] = fst
        _worker["graph"] = key
    _worker["opts"] = kaldi_decoder.FasterDecoderOptions(
        beam=config.beam, max_active=config.max_active, min_active=config.min_active
    )


def _decode_one(
    item: tuple[str, np.ndarray, tuple[float, ...]],
) -> tuple[str, list[tuple[list[int], bool, float, np.ndarray]], int]:
    """(utt, per acoustic scale (word ids, reached a final state, decoder seconds, alignment), frames).

    ``item`` carries the unscaled log-likelihoods (log posterior - log prior), so one
    network pass serves every scale. HCLG's input labels are senone + 1 and every
    frame reads exactly one, so the best path's input symbols are the frame
    alignment (empty if no path).
    """
    utt, loglik, scales = item
    if loglik.shape[0] == 0:
        return utt, [([], False, 0.0, np.zeros(0, np.int32)) for _ in scales], 0
    out = []
    for scale in scales:
        t0 = time.process_time()
        decoder = kaldi_decoder.FasterDecoder(_worker["fst"], _worker["opts"])
        decoder.decode(kaldi_decoder.DecodableCtc(loglik * np.float32(scale)))
        final = decoder.reached_final()
        ok, best = decoder.get_best_path(use_final_probs=final)
        words: list[int] = []
        labels: list[int] = []
        if ok:
            ok, labels, words, _ = kaldifst.get_linear_symbol_sequence(best)
        ali = np.asarray(labels, dtype=np.int32) - 1 if ok else np.zeros(0, np.int32)
        out.append((list(words) if ok else [], bool(final and ok), time.process_time() - t0, ali))
    return utt, out, loglik.shape[0]


def _load_words(graph_dir: Path) -> list[str]:
    rows = [line.split() for line in (graph_dir / "words.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    words = [""] * len(rows)
    for w, i in rows:
        words[int(i)] = w
    return words


def _unscaled(
    posteriors: Iterable[tuple[str, np.ndarray]],
    log_priors: np.ndarray,
    num_pdfs: int,
    scales: tuple[float, ...],
    graph_dir: Path,
) -> Iterator[tuple[str, np.ndarray, tuple[float, ...]]]:
    for utt, logpost in posteriors:
        logpost = np.asarray(logpost)
        if logpost.ndim != 2 or logpost.shape[1] != num_pdfs:
            raise ValueError(
                f"{utt}: posterior matrix has shape {logpost.shape}, but the graph {graph_dir} "
                f"has {num_pdfs} senones (width must be {num_pdfs})"
            )
        yield utt, np.ascontiguousarray(logpost - log_priors, dtype=np.float32), scales


def _decode_scales(
    graph_dir: Path,
    posteriors: Iterable[tuple[str, np.ndarray]],
    log_priors: np.ndarray,
    config: DecodeConfig,
    scales: Sequence[float],
) -> dict[float, DecodeResult]:
    """Decode every utterance once per acoustic scale, reading the posteriors once."""
    num_pdfs = int(load_graph_info(graph_dir)["num_pdfs"])
    if log_priors.shape != (num_pdfs,):
        raise ValueError(f"log priors have shape {log_priors.shape}, but the graph {graph_dir} has {num_pdfs} senones")
    scales = tuple(scales)
    words = _load_words(graph_dir)
    items = _unscaled(posteriors, log_priors.astype(np.float32), num_pdfs, scales, graph_dir)
    hyps: list[dict[str, list[str]]] = [{} for _ in scales]
    alignments: list[dict[str, np.ndarray]] = [{} for _ in scales]
    partial: list[list[str]] = [[] for _ in scales]
    seconds = [0.0] * len(scales)
    frames = 0
    t0 = time.perf_counter()
    bar = progress(
        desc=f"decode (scale{'s' if len(scales) > 1 else ''} {' '.join(f'{x:g}' for x in scales)})",
        unit="utt",
        mininterval=1.0,
    )

    def collect(results: Iterable[tuple[str, list[tuple[list[int], bool, float, np.ndarray]], int]]) -> None:
        nonlocal frames
        for utt, per_scale, t in results:
            if utt in hyps[0]:
                raise ValueError(f"utterance {utt!r} appears twice in the posteriors")
            for k, (ids, final, secs, ali) in enumerate(per_scale):
                hyps[k][utt] = [words[i] for i in ids]
                alignments[k][utt] = ali
                if not final:
                    partial[k].append(utt)
                seconds[k] += secs
            frames += t
            bar.update(1)
            bar.set_postfix(frames=frames, partial=len(partial[0]), refresh=False)

    _load_graph(str(graph_dir), config)
    # forked local workers find the graph already loaded (its pages shared); Dask workers load their own
    with Executor(
        config.nj, initializer=_load_graph, initargs=(str(graph_dir), config), start_method="fork"
    ) as executor:
        collect(executor.map(_decode_one, items))
    bar.close()
    wall = time.perf_counter() - t0
    out = {}
    for k, scale in enumerate(scales):
        if partial[k]:
            log.warning(
                "scale %g: %d of %d utterances reached no final state; their best partial hypotheses "
                "are kept (e.g. %s)",
                scale,
                len(partial[k]),
                len(hyps[k]),
                partial[k][0],
            )
        out[scale] = DecodeResult(hyps[k], partial[k], frames, seconds[k], wall, scale, alignments[k])
    return out


def decode(
    graph_dir: str | Path, posteriors: Iterable[tuple[str, np.ndarray]], log_priors: np.ndarray, config: DecodeConfig
) -> DecodeResult:
    """Decode every utterance; one whose search reaches no final state keeps its best partial path.

    A posterior matrix whose width is not the graph's senone count raises a
    ``ValueError`` naming both.
    """
    return _decode_scales(Path(graph_dir), posteriors, log_priors, config, [config.acoustic_scale])[
        config.acoustic_scale
    ]


def sweep(
    graph_dir: str | Path,
    dev_posteriors: Callable[[], Iterable[tuple[str, np.ndarray]]],
    log_priors: np.ndarray,
    dev_refs: dict[str, str],
    config: DecodeConfig,
    out_dir: str | Path,
) -> SweepResult:
    """Decode dev at each of ``config.sweep_scales``; the lowest-WER scale wins (ties: the first).

    ``dev_posteriors`` is called once: each utterance's posteriors (one network
    pass) are searched at every scale, so they stream without a cache. Each
    scale's decode and WER report go to ``out_dir/scale_<s>/``; the summary to
    ``out_dir/sweep.json``.
    """
    if not config.sweep_scales:
        raise ValueError("sweep_scales is empty")
    out_dir = Path(out_dir)
    decoded = _decode_scales(Path(graph_dir), dev_posteriors(), log_priors, config, config.sweep_scales)
    results: dict[float, WerResult] = {}
    for scale, res in decoded.items():
        sub = out_dir / f"scale_{scale:g}"
        res.save(sub)
        results[scale] = wer_report(dev_refs, {u: " ".join(w) for u, w in res.hyps.items()}, sub)
        log.info("acoustic scale %g: %s (%d partial)", scale, results[scale].summary(), len(res.partial))
    best = min(config.sweep_scales, key=lambda s: results[s].wer)
    wer = {s: r.wer for s, r in results.items()}
    write_json_atomic(
        out_dir / "sweep.json",
        {
            "best_scale": best,
            "wer": {f"{s:g}": w for s, w in wer.items()},
            "results": {f"{s:g}": asdict(r) for s, r in results.items()},
        },
    )
    return SweepResult(best, wer, results)
