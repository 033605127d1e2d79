"""Kaldi data dirs as Kaldi writes them: import, validate, fix and split (after Kaldi's ``utils/``).

Kaldi data dirs may hold what :class:`~asrdistill.data.datadir.DataDir` does not:
``wav.scp`` entries that are shell pipes (``sox x.sph -t wav - |``) or ark
offsets, a ``segments`` file cutting recordings into utterances, or
precomputed features in ``feats.scp``. :func:`import_data_dir` reads all of
them through ``kaldiio`` and writes an ordinary data dir (one FLAC per
utterance), so ``features``, the aligner and ``decode`` read it like any other.
A pipe runs a shell command named by the data, so it is executed only when
the caller opts in (``allow_pipes``). Transcripts are normalised once
(:func:`~asrdistill.data.corpus.normalize_transcript`); the original is kept as
``text.orig`` and the rule in ``normalization.json``.

:func:`validate_data_dir`, :func:`fix_data_dir` and :func:`split_data_dir` are
the checks and repairs of Kaldi's ``validate_data_dir.sh``, ``fix_data_dir.sh``
and ``split_data.sh``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio
import numpy as np
import soundfile as sf

from asrdistill.data.corpus import NORMALIZATION, normalize_transcript
from asrdistill.data.datadir import DataDir, check_pipes, is_pipe, read_kv, write_kv
from asrdistill.data.shards import FEATS_PREFIX, ShardManifest, plan_shards, write_shard
from asrdistill.fileio import atomic_open, write_json_atomic, write_skipped

__all__ = [
    "ImportReport",
    "needs_import",
    "import_data_dir",
    "import_feats",
    "validate_data_dir",
    "fix_data_dir",
    "split_data_dir",
]

log = logging.getLogger(__name__)

# per-utterance files (keyed by utterance id) and per-speaker files that fix/split carry along
UTT_FILES = ("text", "utt2spk", "utt2dur", "utt2num_frames", "feats.scp", "segments", "utt2lang", "text.orig")
SPK_FILES = ("spk2gender", "cmvn.scp")


def needs_import(directory: str | Path) -> bool:
    """Whether a data dir holds what only :func:`import_data_dir` reads (segments, pipes, ark offsets)."""
    d = Path(directory)
    if not (d / "wav.scp").is_file():
        return False
    wav = read_kv(d / "wav.scp", duplicates=[])  # a repeated key is skipped by the reader, not an import
    return (d / "segments").is_file() or any(is_pipe(v) or ":" in Path(v).name for v in wav.values())


@dataclass
class ImportReport:
    out_dir: Path
    utterances: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (utt, reason)
    normalized: int = 0


def import_data_dir(src: str | Path, out_dir: str | Path, allow_pipes: bool = False) -> ImportReport:
    """Read the Kaldi data dir ``src`` (pipes, ark offsets, ``segments``) into ``out_dir`` with one FLAC per utterance.

    Utterances whose audio cannot be read are skipped and listed in
    ``out_dir/skipped.tsv``; ``text`` is normalised (original in ``text.orig``).
    """
    src, out_dir = Path(src), Path(out_dir)
    problems = [
        p
        for p in validate_data_dir(src)  # order and spk2utt do not matter here: both are rewritten
        if not p.startswith("warning:") and "not sorted" not in p and "spk2utt" not in p
    ]
    if problems:
        raise ValueError(
            f"{src}: not a consistent data dir: "
            + "; ".join(problems[:5])
            + " (asrdistill fix-data-dir repairs most of these)"
        )
    check_pipes(src / "wav.scp", allow_pipes)
    segments = src / "segments"
    table = kaldiio.load_scp(str(src / "wav.scp"), segments=str(segments) if segments.is_file() else None)
    utt2spk = read_kv(src / "utt2spk")
    text = read_kv(src / "text") if (src / "text").is_file() else {}
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    data = DataDir()
    report = ImportReport(out_dir, 0)
    for utt in sorted(table.keys()):
        try:
            rate, samples = table[utt]
            samples = np.asarray(samples)
            if samples.size == 0:
                raise ValueError("zero-length audio")
        except Exception as e:  # noqa: BLE001 - kaldiio raises many kinds (pipe exit status, bad RIFF, offsets)
            report.skipped.append((utt, f"cannot read audio: {e}"))
            log.warning("%s: skipping %s: %s", src, utt, e)
            continue
        if samples.dtype.kind in "iu":
            samples = samples.astype(np.float32) / 32768.0
        path = audio_dir / f"{utt}.flac"
        with atomic_open(path, "wb") as f:
            sf.write(f, samples, int(rate), format="FLAC")
        data.wav[utt] = str(path.resolve())
        data.utt2spk[utt] = utt2spk[utt]
        data.utt2dur[utt] = samples.shape[0] / float(rate)
        if utt in text:
            data.text[utt] = normalize_transcript(text[utt])
            report.normalized += data.text[utt] != text[utt]
    if not data.wav:
        raise ValueError(f"{src}: no utterance could be read (reasons above)")
    if text:
        missing = [u for u in data.wav if u not in data.text]
        if missing:
            raise ValueError(f"{src / 'text'}: no transcript for {len(missing)} utterances (e.g. {missing[0]})")
        write_kv(out_dir / "text.orig", {u: text[u] for u in data.wav})
    data.save(out_dir)
    write_json_atomic(
        out_dir / "normalization.json",
        {"rule": NORMALIZATION, "changed_utterances": report.normalized, "source": str(src)},
    )
    write_skipped(out_dir / "skipped.tsv", dict(report.skipped))
    report.utterances = len(data.wav)
    log.info(
        "%s -> %s: %d utterance(s), %d skipped, %d transcript(s) changed by normalisation",
        src,
        out_dir,
        report.utterances,
        len(report.skipped),
        report.normalized,
    )
    return report


def import_feats(src: str | Path, out_dir: str | Path, shard_size_mb: float = 200.0) -> ShardManifest:
    """Kaldi ``feats.scp`` of ``src`` -> feature shards in ``out_dir`` (float16, as ``features`` writes them)."""
    src, out_dir = Path(src), Path(out_dir)
    scp = src / "feats.scp"
    if not scp.is_file():
        raise FileNotFoundError(f"{scp}: not found")
    check_pipes(scp, allow_pipes=False)
    table = kaldiio.load_scp(str(scp))
    keys = sorted(table.keys())
    shapes = {}
    for k in keys:
        shapes[k] = np.asarray(table[k]).shape
    dims = {s[1] for s in shapes.values() if len(s) == 2}
    if len(dims) != 1 or any(len(s) != 2 for s in shapes.values()):
        raise ValueError(f"{scp}: matrices must all be (frames, dim) with one dim, got dims {sorted(dims)}")
    (dim,) = dims
    groups = plan_shards({k: shapes[k][0] * dim * 2 + 1024 for k in keys}, shard_size_mb * 1e6)
    manifest = ShardManifest(
        out_dir,
        FEATS_PREFIX,
        meta={"dim": dim, "dtype": "float16", "source": str(scp), "num_utterances": len(keys), "num_skipped": 0},
    )
    for i, group in enumerate(groups):
        samples = ((k, {"feats": np.asarray(table[k], dtype=np.float32).astype(np.float16)}) for k in group)
        manifest.shards.append(write_shard(out_dir / manifest.shard_name(i), samples))
    manifest.save()
    log.info("%s -> %s: %d utterance(s), %d-dim, %d frames", scp, out_dir, len(keys), dim, manifest.num_frames)
    return manifest


def _read(directory: Path, name: str) -> dict[str, str] | None:
    return read_kv(directory / name) if (directory / name).is_file() else None


def _sorted_problem(directory: Path, name: str) -> str | None:
    keys = [
        line.split(" ", 1)[0] for line in (directory / name).read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if keys != sorted(keys):
        return f"{directory / name}: not sorted by key (C locale)"
    return None


def validate_data_dir(directory: str | Path) -> list[str]:
    """Problems of a data dir, each naming the file (empty: valid). ``warning:`` entries do not block use."""
    d = Path(directory)
    if not (d / "wav.scp").is_file() and not (d / "feats.scp").is_file():
        return [f"{d}: neither wav.scp nor feats.scp"]
    if not (d / "utt2spk").is_file():
        return [f"{d / 'utt2spk'}: missing"]
    problems: list[str] = []
    try:
        tables = {n: _read(d, n) for n in ("wav.scp", "utt2spk", "spk2utt", *UTT_FILES)}
    except ValueError as e:  # duplicate keys
        return [str(e)]
    for name, table in tables.items():
        if table is not None and (p := _sorted_problem(d, name)):
            problems.append(p)
    utts = set(tables["utt2spk"])
    for name in UTT_FILES:
        t = tables[name]
        if t is not None and name not in ("utt2spk",) and set(t) != utts:
            missing, extra = sorted(utts - set(t))[:3], sorted(set(t) - utts)[:3]
            problems.append(f"{d / name}: utterances differ from utt2spk (missing {missing}, extra {extra})")
    segments = tables["segments"]
    if tables["wav.scp"] is not None:
        recordings = set(tables["wav.scp"])
        if segments is not None:
            bad = sorted({v.split()[0] for v in segments.values()} - recordings)[:3]
            if bad:
                problems.append(f"{d / 'segments'}: recordings not in wav.scp: {bad}")
            for utt, v in segments.items():
                parts = v.split()
                try:
                    ok = len(parts) == 3 and 0 <= float(parts[1]) < float(parts[2])
                except ValueError:
                    ok = False
                if not ok:
                    problems.append(f"{d / 'segments'}: {utt}: expected '<recording> <start> <end>' with start < end")
                    break
        elif recordings != utts:
            problems.append(
                f"{d / 'wav.scp'}: utterances differ from utt2spk "
                f"(missing {sorted(utts - recordings)[:3]}, extra {sorted(recordings - utts)[:3]})"
            )
        else:
            absent = [
                v
                for v in tables["wav.scp"].values()
                if not is_pipe(v) and ":" not in Path(v).name and not Path(v).is_file()
            ]
            if absent:
                problems.append(f"{d / 'wav.scp'}: {len(absent)} audio file(s) do not exist (e.g. {absent[0]})")
    if tables["spk2utt"] is not None:
        spk2utt = {s: sorted(u.split()) for s, u in tables["spk2utt"].items()}
        expected = DataDir(wav={u: "" for u in utts}, utt2spk=tables["utt2spk"]).spk2utt
        if spk2utt != expected:
            problems.append(f"{d / 'spk2utt'}: does not match utt2spk (regenerate it: fix-data-dir)")
    else:
        problems.append(f"{d / 'spk2utt'}: missing (fix-data-dir writes it from utt2spk)")
    if tables["text"] is not None:
        empty = [u for u, t in tables["text"].items() if not t.strip()]
        if empty:
            problems.append(f"warning: {d / 'text'}: {len(empty)} empty transcript(s) (e.g. {empty[0]})")
        lower = [u for u, t in tables["text"].items() if t != t.upper()]
        if lower:
            problems.append(
                f"warning: {d / 'text'}: {len(lower)} transcript(s) not upper case (e.g. {lower[0]}); "
                "import-data-dir normalises them"
            )
    bad_prefix = [u for u, s in tables["utt2spk"].items() if not u.startswith(s)]
    if bad_prefix:
        problems.append(
            f"warning: {d / 'utt2spk'}: {len(bad_prefix)} utterance ids do not start with their speaker "
            f"id (e.g. {bad_prefix[0]}); Kaldi's sorting assumptions need that prefix"
        )
    return problems


def fix_data_dir(directory: str | Path) -> dict[str, int]:
    """Keep the utterances every per-utterance file has, sort every file, rewrite ``spk2utt``
    (originals in ``.backup/``); returns ``{file: lines removed}``."""
    d = Path(directory)
    utt2spk = read_kv(d / "utt2spk")
    tables = {n: t for n in UTT_FILES if (t := _read(d, n)) is not None}
    keep = set(utt2spk)
    for t in tables.values():
        keep &= set(t)
    wav = _read(d, "wav.scp")
    segments = tables.get("segments")
    if wav is not None:
        if segments is not None:
            keep = {u for u in keep if segments[u].split()[0] in wav}
        else:
            keep &= set(wav)
    backup = d / ".backup"
    backup.mkdir(exist_ok=True)
    removed: dict[str, int] = {}
    for name in ("wav.scp", "spk2utt", *UTT_FILES, *SPK_FILES):
        if (d / name).is_file():
            shutil.copyfile(d / name, backup / name)
    for name, t in [("utt2spk", utt2spk), *tables.items()]:
        kept = {u: v for u, v in t.items() if u in keep}
        removed[name] = len(t) - len(kept)
        write_kv(d / name, kept)
    if wav is not None:
        used = {segments[u].split()[0] for u in keep} if segments is not None else keep
        removed["wav.scp"] = len(wav) - len(used)
        write_kv(d / "wav.scp", {r: v for r, v in wav.items() if r in used})
    kept_utt2spk = {u: s for u, s in utt2spk.items() if u in keep}
    speakers = set(kept_utt2spk.values())
    for name in SPK_FILES:
        if (t := _read(d, name)) is not None:
            write_kv(d / name, {s: v for s, v in t.items() if s in speakers})
    spk2utt = DataDir(wav={u: "" for u in keep}, utt2spk=kept_utt2spk).spk2utt
    write_kv(d / "spk2utt", {s: " ".join(u) for s, u in spk2utt.items()})
    log.info(
        "%s: kept %d utterance(s); removed %s (originals in %s)",
        d,
        len(keep),
        {k: v for k, v in removed.items() if v} or "nothing",
        backup,
    )
    return removed


def split_data_dir(directory: str | Path, num_jobs: int) -> list[Path]:
    """``directory/split<N>/<1..N>``: speakers dealt out in order so each part holds about as many utterances
    (Kaldi's ``split_data.sh``: a speaker never spans two parts)."""
    d = Path(directory)
    if num_jobs < 1:
        raise ValueError(f"split: num_jobs must be >= 1, got {num_jobs}")
    problems = [p for p in validate_data_dir(d) if not p.startswith("warning:")]
    if problems:
        raise ValueError(f"{d}: fix it before splitting: " + "; ".join(problems[:3]))
    utt2spk = read_kv(d / "utt2spk")
    spk2utt = DataDir(wav={u: "" for u in utt2spk}, utt2spk=utt2spk).spk2utt
    if num_jobs > len(spk2utt):
        raise ValueError(f"{d}: cannot split {len(spk2utt)} speaker(s) into {num_jobs} parts")
    total, parts, acc = len(utt2spk), [[] for _ in range(num_jobs)], 0
    for spk in sorted(spk2utt):
        parts[min(acc * num_jobs // total, num_jobs - 1)].append(spk)
        acc += len(spk2utt[spk])
    for i in range(num_jobs):  # a part left empty by a large speaker takes one from its neighbour
        if not parts[i]:
            j = max(range(num_jobs), key=lambda k: len(parts[k]))
            parts[i].append(parts[j].pop())
    tables = {n: t for n in UTT_FILES if n != "utt2spk" and (t := _read(d, n)) is not None}
    wav, segments = _read(d, "wav.scp"), tables.get("segments")
    out: list[Path] = []
    for i, speakers in enumerate(parts, 1):
        sub = d / f"split{num_jobs}" / str(i)
        utts = {u for s in speakers for u in spk2utt[s]}
        write_kv(sub / "utt2spk", {u: utt2spk[u] for u in utts})
        write_kv(sub / "spk2utt", {s: " ".join(spk2utt[s]) for s in speakers})
        for name, t in tables.items():
            write_kv(sub / name, {u: t[u] for u in utts})
        if wav is not None:
            recs = {segments[u].split()[0] for u in utts} if segments is not None else utts
            write_kv(sub / "wav.scp", {r: wav[r] for r in recs})
        for name in SPK_FILES:
            if (t := _read(d, name)) is not None:
                write_kv(sub / name, {s: t[s] for s in speakers if s in t})
        out.append(sub)
    log.info(
        "%s: split into %d part(s) of %s utterance(s)", d, num_jobs, [sum(len(spk2utt[s]) for s in p) for p in parts]
    )
    return out
