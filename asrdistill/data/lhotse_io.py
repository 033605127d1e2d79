"""lhotse manifests in and out, so every corpus lhotse prepares can be used, and ours used by lhotse tools.

In: a ``CutSet`` or a ``RecordingSet`` + ``SupervisionSet`` (any manifest
``lhotse.load_manifest`` reads) becomes a data dir with one FLAC per
supervision (lhotse cuts the audio, so offsets, channels and containers it
reads all work; several channels are averaged to mono). Transcripts are
normalised as in every other import. An audio source of type ``command`` runs
a shell command, so it is read only with ``allow_pipes``.

Out: a data dir becomes ``recordings.jsonl.gz``, ``supervisions.jsonl.gz`` and
``cuts.jsonl.gz`` (one recording and one supervision per utterance), checked
with lhotse's own validation before they are written.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from asrdistill.data.corpus import NORMALIZATION, normalize_transcript
from asrdistill.data.datadir import DataDir, write_kv
from asrdistill.fileio import atomic_open, write_json_atomic, write_skipped

__all__ = ["import_lhotse", "export_lhotse"]

log = logging.getLogger(__name__)


def _load_cuts(manifests: Sequence[str | Path]):
    """One ``CutSet`` of supervision-long cuts from the given manifests."""
    from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest

    loaded = [load_manifest(Path(p)) for p in manifests]
    cuts = [m for m in loaded if isinstance(m, CutSet)]
    recs = [m for m in loaded if isinstance(m, RecordingSet)]
    sups = [m for m in loaded if isinstance(m, SupervisionSet)]
    other = [str(p) for p, m in zip(manifests, loaded) if not isinstance(m, (CutSet, RecordingSet, SupervisionSet))]
    if other:
        raise ValueError(f"{other[0]}: not a CutSet, RecordingSet or SupervisionSet manifest")
    if cuts and (recs or sups):
        raise ValueError(f"{manifests}: give either cuts or recordings (+ supervisions), not both")
    if cuts:
        cutset = CutSet.from_cuts(c for cs in cuts for c in cs)
    elif recs:
        cutset = CutSet.from_manifests(
            recordings=RecordingSet.from_recordings(r for rs in recs for r in rs),
            supervisions=SupervisionSet.from_segments(s for ss in sups for s in ss) if sups else None,
        )
    else:
        raise ValueError(f"{manifests}: supervisions without recordings")
    if any(len(c.supervisions) > 0 for c in cutset):
        cutset = cutset.trim_to_supervisions(keep_overlapping=False)
    return cutset


def import_lhotse(manifests: Sequence[str | Path], out_dir: str | Path, allow_pipes: bool = False) -> DataDir:
    """Write the data dir ``out_dir`` (audio in ``out_dir/audio``) for lhotse ``manifests``.

    Cuts whose audio cannot be loaded are skipped and listed in ``skipped.tsv``.
    Transcripts are normalised as :func:`import_data_dir` does them (the originals in
    ``text.orig``, the rule in ``normalization.json``).
    """
    out_dir = Path(out_dir)
    cuts = _load_cuts(manifests)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    data = DataDir()
    skipped: list[tuple[str, str]] = []
    orig: dict[str, str] = {}  # transcripts as the manifests give them (whitespace runs made one space)
    changed = 0
    for cut in cuts:
        sup = cut.supervisions[0] if cut.supervisions else None
        whole = cut.has_recording and cut.start == 0 and abs(cut.duration - cut.recording.duration) < 1e-3
        utt = (sup.id if sup is not None else cut.recording_id if whole else cut.id).replace(" ", "_")
        commands = [s for s in cut.recording.sources if s.type == "command"] if cut.has_recording else []
        if commands and not allow_pipes:
            raise ValueError(
                f"{manifests}: recording {cut.recording.id} is read by the shell command "
                f"{commands[0].source!r}; that needs an explicit opt-in (--allow-pipes)"
            )
        try:
            samples = np.asarray(cut.load_audio(), dtype=np.float32)  # (channels, samples)
            if samples.size == 0:
                raise ValueError("zero-length audio")
        except Exception as e:  # noqa: BLE001 - lhotse raises many kinds (missing file, decoder errors)
            skipped.append((utt, str(e)))
            log.warning("skipping cut %s: %s", utt, e)
            continue
        path = out_dir / "audio" / f"{utt}.flac"
        with atomic_open(path, "wb") as f:
            sf.write(f, samples.mean(axis=0), int(cut.sampling_rate), format="FLAC")
        data.wav[utt] = str(path.resolve())
        data.utt2spk[utt] = sup.speaker if sup is not None and sup.speaker else utt
        data.utt2dur[utt] = samples.shape[1] / float(cut.sampling_rate)
        if sup is not None and sup.text is not None:
            text = " ".join(" ".join(s.text for s in cut.supervisions if s.text).split())
            orig[utt] = text
            data.text[utt] = normalize_transcript(text)
            changed += data.text[utt] != text
    if not data.wav:
        raise ValueError(f"{manifests}: no cut could be read (reasons above)")
    if data.text and set(data.text) != set(data.wav):
        missing = sorted(set(data.wav) - set(data.text))
        raise ValueError(f"{manifests}: {len(missing)} cut(s) have no transcript (e.g. {missing[0]})")
    data.save(out_dir)
    if orig:
        write_kv(out_dir / "text.orig", orig)
    write_json_atomic(
        out_dir / "normalization.json",
        {"rule": NORMALIZATION, "changed_utterances": changed, "source": [str(m) for m in manifests]},
    )
    write_skipped(out_dir / "skipped.tsv", dict(skipped))
    log.info("%s -> %s: %d utterance(s), %d skipped", [str(m) for m in manifests], out_dir, len(data.wav), len(skipped))
    return data


def _save(manifest, path: Path) -> None:
    """``manifest`` to ``path`` (``*.jsonl.gz``) as ``to_file`` writes it there, gzipped JSON lines of its
    ``to_dicts()``, through :func:`atomic_open` (``to_file`` picks the format from the name, which a temporary
    does not end in, so the format is written here)."""
    if not path.name.endswith(".jsonl.gz"):
        raise ValueError(f"{path}: lhotse manifests are written as .jsonl.gz")
    with (
        atomic_open(path, "wb") as raw,
        gzip.GzipFile(path.name, "wb", fileobj=raw) as gz,
        io.TextIOWrapper(gz, encoding="utf-8") as f,
    ):
        for item in manifest.to_dicts():
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


def export_lhotse(data_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """``recordings``/``supervisions``/``cuts.jsonl.gz`` in ``out_dir`` for the data dir ``data_dir``."""
    from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.qa import validate_recordings_and_supervisions

    data = DataDir.load(data_dir)
    recordings, supervisions = [], []
    for utt in data.utt_ids:
        try:
            rec = Recording.from_file(data.wav[utt], recording_id=utt)
        except Exception as e:  # noqa: BLE001 - any unreadable file: name it
            raise ValueError(f"{data.wav[utt]}: cannot describe {utt} as a lhotse recording ({e})") from e
        recordings.append(rec)
        supervisions.append(
            SupervisionSegment(
                id=utt,
                recording_id=utt,
                start=0.0,
                duration=rec.duration,
                text=data.text.get(utt),
                speaker=data.utt2spk.get(utt),
            )
        )
    recs, sups = RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions)
    validate_recordings_and_supervisions(recs, sups)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.jsonl.gz" for name in ("recordings", "supervisions", "cuts")}
    _save(recs, paths["recordings"])
    _save(sups, paths["supervisions"])
    _save(
        CutSet.from_cuts(
            MonoCut(id=s.id, start=0.0, duration=r.duration, channel=0, recording=r, supervisions=[s])
            for r, s in zip(recordings, supervisions)
        ),
        paths["cuts"],
    )
    log.info("%s -> %s: %d recording(s) and supervision(s)", data_dir, out_dir, len(recordings))
    return paths
