"""Pictures: training curves of every system, and one utterance seen by several systems.

``asrdistill plot --out DIR --systems exp/baseline_seed1 exp/ensemble exp/student_seed1``
writes ``DIR/curves.png`` (train loss, dev loss and dev frame accuracy per
epoch, from each system's ``log/metrics.jsonl``; training frame accuracy is not
logged, so it is not drawn). With ``--utt U --feats data/fbank/test`` (and
``--labels exp/tri_ali/test`` for the alignment) it also writes
``DIR/utt_U.png``: the log-mel spectrogram (``librosa.display``) with the
aligned phones, then, per system (its ``bundle``), the posteriors of the
senones the systems together find most probable in that utterance, so one
sees what the ensemble adds and how much of it the student kept.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest, iter_shard, write_shard
from asrdistill.fileio import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from asrdistill.decoding.bundle import System

__all__ = ["epoch_records", "plot_training_curves", "plot_utterance"]

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def epoch_records(system_dir: Path) -> list[dict]:
    """The per-epoch records (those with ``dev_acc``) of a trained system's ``log/metrics.jsonl``; [] if none."""
    path = system_dir / "log" / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from e
        if "dev_acc" in rec:
            rows.append(rec)
    return rows


def plot_training_curves(system_dirs: Sequence[str | Path], out_png: str | Path) -> Path:
    """Train loss, dev loss and dev frame accuracy per epoch of every system that was trained."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    drawn = []
    for d in map(Path, system_dirs):
        rows = epoch_records(d)
        if not rows:
            log.info("%s: no per-epoch metrics (not trained here, e.g. an ensemble); not drawn", d)
            continue
        epochs = [r["epoch"] + 1 for r in rows]
        for ax, key, scale in ((axes[0], "train_loss", 1), (axes[1], "dev_loss", 1), (axes[2], "dev_acc", 100)):
            ax.plot(epochs, [r[key] * scale if key in r else np.nan for r in rows], marker="o", ms=3, label=d.name)
        drawn.append(d.name)
    if not drawn:
        plt.close(fig)
        raise ValueError(f"none of {[str(d) for d in system_dirs]} has log/metrics.jsonl with epoch records")
    from matplotlib.ticker import MaxNLocator

    for ax, title in zip(
        axes,
        (
            "train loss (each system's objective: KD loss for students)",
            "dev loss (cross-entropy)",
            "dev frame accuracy (%)",
        ),
    ):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, Path(out_png))
    plt.close(fig)
    log.info("%s: training curves of %s", path, drawn)
    return path


def _find(manifest: ShardManifest, utt: str) -> tuple[int, dict]:
    for i, shard in enumerate(manifest.shards):
        if utt in shard.keys:
            for key, sample in iter_shard(manifest.shard_paths[i]):
                if key == utt:
                    return i, sample
    raise ValueError(f"{manifest.path}: no utterance {utt!r}")


def _posteriors(utt: str, feats: ShardManifest, sample: dict, systems: dict[str, System]) -> dict[str, np.ndarray]:
    """Each system's posteriors (T, senones) of ``utt``, computed from a shard of that utterance alone: the
    networks see it and nothing else of its shard."""
    posts: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="asrdistill-plot-") as tmp:
        one = ShardManifest(Path(tmp), feats.prefix, meta=feats.meta)
        one.shards.append(write_shard(Path(tmp) / one.shard_name(0), [(utt, {"feats": sample["feats"]})]))
        for name, system in systems.items():
            ((u, logp),) = system.posteriors(one)
            posts[name] = np.exp(logp)  # (T, senones)
    return posts


def _spectrogram(ax: Axes, utt: str, feats: np.ndarray, system: System, pdf: np.ndarray | None) -> None:
    """The utterance's log-mel filterbank on ``ax``, with the aligner's phones (boundaries and names) over it when
    its alignment ``pdf`` is known."""
    import librosa.display

    shift = system.fbank.frame_shift_ms / 1000.0
    librosa.display.specshow(
        feats.astype(np.float32).T,
        sr=system.fbank.sample_rate,
        hop_length=system.fbank.shift_samples,
        x_axis="time",
        y_axis="mel",
        fmin=20.0,
        fmax=system.fbank.sample_rate / 2,
        ax=ax,
        cmap="magma",
    )
    ax.set_title(f"{utt}: log-mel filterbank" + (" and the aligner's phones" if pdf is not None else ""))
    if pdf is not None:
        phones = [system.tree.pdf_info[p][0][0] if system.tree.pdf_info[p] else 0 for p in pdf]
        starts = [0] + [i for i in range(1, len(phones)) if phones[i] != phones[i - 1]]
        for s, e in zip(starts, starts[1:] + [len(phones)]):
            ax.axvline(s * shift, color="white", lw=0.6, alpha=0.7)
            ax.text(
                (s + e) / 2 * shift,
                system.fbank.sample_rate / 2 * 0.55,
                system.lang.phones[phones[s]],
                color="white",
                ha="center",
                fontsize=7,
            )


def plot_utterance(
    utt: str,
    feats_dir: str | Path,
    bundles: dict[str, str | Path],
    out_png: str | Path,
    labels_dir: str | Path | None = None,
    top: int = 6,
) -> Path:
    """Spectrogram + alignment + each system's posteriors of the ``top`` most probable senones of ``utt``.

    ``bundles`` maps a label (``baseline``, ``ensemble``, ``student``) to a bundle folder.
    """
    from asrdistill.decoding.bundle import load_system

    if not bundles:
        raise ValueError("plot_utterance: no systems to show")
    feats = ShardManifest.load(feats_dir, FEATS_PREFIX)
    _, sample = _find(feats, utt)
    systems = {name: load_system(path) for name, path in bundles.items()}
    posts = _posteriors(utt, feats, sample, systems)
    first = next(iter(systems.values()))
    total = sum(p.sum(0) for p in posts.values())
    best = np.argsort(total)[::-1][:top]
    pdf = None
    if labels_dir is not None:
        labels = ShardManifest.load(labels_dir, PDF_PREFIX)
        _, lab = _find(labels, utt)
        pdf = lab["pdf"] if lab["pdf"].size else None

    plt = _pyplot()
    shift = first.fbank.frame_shift_ms / 1000.0
    t = np.arange(sample["feats"].shape[0]) * shift
    fig, axes = plt.subplots(1 + len(posts), 1, figsize=(12, 2.6 * (1 + len(posts))), sharex=True)
    _spectrogram(axes[0], utt, sample["feats"], first, pdf)
    colors = plt.cm.tab10(np.arange(len(best)) % 10)
    for ax, (name, p) in zip(axes[1:], posts.items()):
        for c, s in zip(colors, best):
            ax.plot(t, p[:, s], color=c, lw=1.0, label=f"senone {s}")
        if pdf is not None:
            hit = np.isin(pdf, best)
            ax.scatter(
                t[hit], np.full(hit.sum(), 1.03), c=[colors[list(best).index(s)] for s in pdf[hit]], s=2, marker="s"
            )
        ax.set_ylim(0, 1.07)
        ax.set_ylabel("posterior")
        ax.set_title(
            f"{name}: posteriors of the {len(best)} most probable senones"
            + (" (squares on top: the alignment's senone)" if pdf is not None else ""),
            fontsize=9,
        )
    axes[1].legend(fontsize=7, ncol=len(best), loc="upper right")
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    path = _save(fig, Path(out_png))
    plt.close(fig)
    log.info("%s: %s with %s", path, utt, list(posts))
    return path
