"""LibriSpeech: download (OpenSLR 11 and 12) and preparation of Kaldi data directories.

Download is resumable (HTTP Range on a ``.part`` file), md5-checked against the official
checksums, and falls back to the next mirror on failure. Archives are unpacked member by
member after checking each one (no absolute paths, no ``..``, no links leaving the target,
no device files) into a temporary folder that is renamed into place only when complete.
An existing copy (``--corpus-dir``) is linked after checking its subsets; the lexicon,
vocabulary and LMs are then fetched the same way, or linked from ``--lexicon`` / ``--lm-dir``.

Preparation reads any corpus in LibriSpeech layout (the real one or the synthetic corpus)
and writes one data dir per subset, skipping unusable utterances with a reason in
``skipped.tsv`` rather than failing the whole subset.

    asrdistill download --target data/corpus --subsets dev-clean test-clean
    asrdistill download --target data/corpus --subsets dev-clean --corpus-dir /data/corpora --lm-dir /data/lm
    asrdistill prepare --corpus data/corpus --out data --subsets dev-clean --nj 4
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import multiprocessing
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import soundfile as sf

from asrdistill import logs
from asrdistill.data.datadir import DataDir
from asrdistill.fileio import clear_done, is_done, mark_done, stage_done, write_skipped

__all__ = [
    "SUBSETS",
    "LM_FILES",
    "LEXICON_FILE",
    "VOCAB_FILE",
    "MD5",
    "MIRRORS",
    "DEFAULT_BASE_URL",
    "LibriSpeechConfig",
    "UnsafeArchiveError",
    "ChecksumError",
    "download_librispeech",
    "download_lm_resources",
    "link_librispeech",
    "download_file",
    "extract_archive",
    "prepare_librispeech",
    "data_dir_name",
]

log = logging.getLogger(__name__)

SUBSETS = (
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
)
LEXICON_FILE = "librispeech-lexicon.txt"
VOCAB_FILE = "librispeech-vocab.txt"
# tgsmall, tgmed, tglarge, fglarge and the LM training text (OpenSLR 11)
LM_FILES = (
    "3-gram.pruned.3e-7.arpa.gz",
    "3-gram.pruned.1e-7.arpa.gz",
    "3-gram.arpa.gz",
    "4-gram.arpa.gz",
    "librispeech-lm-norm.txt.gz",
)
# Official md5 sums (OpenSLR md5sum.txt, as also quoted by the Kaldi/icefall/PaddleSpeech recipes).
MD5 = {
    "train-clean-100.tar.gz": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360.tar.gz": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500.tar.gz": "d1a0fd59409feb2c614ce4d30c387708",
    "dev-clean.tar.gz": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other.tar.gz": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean.tar.gz": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other.tar.gz": "fb5a50374b501bb3bac4815ee91d3135",
    "3-gram.arpa.gz": "74cbb837e582378c26c602e1c8cbcb9c",
    "3-gram.pruned.1e-7.arpa.gz": "9a0f1325bcaf3a0f7b7be4be10823c2a",
    "3-gram.pruned.3e-7.arpa.gz": "8f67ec741827742eee05799ab7605b50",
    "4-gram.arpa.gz": "6abdcd5b055bd482e4f9defe91d40408",
    "librispeech-lexicon.txt": "28f72663f6bfed7cd346283c064c315b",
    "librispeech-vocab.txt": "bf3cc7a50112831ed8b0afa40cae96a5",
    "librispeech-lm-norm.txt.gz": "c83c64c726a1aedfe65f80aa311de402",
}
# Base URLs hold resources/11 and resources/12; names may be given instead of URLs.
MIRRORS = {
    "openslr": "https://www.openslr.org/resources",
    "us": "https://us.openslr.org/resources",
    "eu": "https://openslr.elda.org/resources",
    "cn": "https://openslr.magicdatatech.com/resources",
}
DEFAULT_BASE_URL = MIRRORS["openslr"]
_AUDIO_RESOURCE = "12"
_LM_RESOURCE = "11"
_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A downloaded file whose md5 is not the official one (the file has been deleted)."""


class UnsafeArchiveError(ValueError):
    """An archive member that would write outside the target or create a device file."""


@dataclass
class LibriSpeechConfig:
    """``librispeech`` section of a recipe config."""

    subsets: list[str] = field(default_factory=lambda: ["train-clean-100", "dev-clean", "test-clean"])
    base_url: list[str] = field(default_factory=lambda: [DEFAULT_BASE_URL])  # URLs or MIRRORS names, tried in order
    lm: bool = True  # also fetch the official LMs and LM text (lexicon and vocabulary always)
    remove_archives: bool = False  # delete each .tar.gz once unpacked
    nj: int = 4  # processes for preparation


# ----------------------------------------------------------------------------- download


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _base_urls(base_url: str | Sequence[str]) -> list[str]:
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise ValueError("no base URL given")
    return [MIRRORS.get(u, u).rstrip("/") for u in urls]


def _fetch(url: str, part: Path, timeout: float) -> str:
    """Complete ``part`` from ``url`` (HTTP Range from its current size); return the file's md5."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "asrdistill"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part file is complete
            return _md5_file(part)
        raise
    with resp:
        if have and resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise OSError(f"{url}: server resumed at the wrong offset ({resp.headers.get('Content-Range')!r})")
            h, mode = hashlib.md5(), "ab"
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    h.update(block)
        else:
            if have:
                log.info("%s: server ignored the range request, downloading from the start", url)
            h, mode, have = hashlib.md5(), "wb", 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, mode) as f,
            logs.progress(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                leave=False,
            ) as bar,
        ):
            for block in iter(lambda: resp.read(_CHUNK), b""):
                f.write(block)
                h.update(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)
    return h.hexdigest()


def download_file(
    name: str,
    urls: Sequence[str],
    dest_dir: Path,
    md5: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    retry_wait: float = 2.0,
) -> Path:
    """Download ``name`` into ``dest_dir``, resuming a ``.part`` file; verify ``md5`` if known.

    ``urls`` are full URLs of the same file, tried in order; each gets ``retries`` attempts
    that resume where the previous one stopped, ``retry_wait * 2**k`` seconds apart. A file
    verified before (marker present) is neither fetched nor hashed again. On a checksum
    mismatch the file is deleted and :class:`ChecksumError` names it.
    """
    dest_dir = Path(dest_dir)
    dest = dest_dir / name
    marker = f"download-{name}"
    if dest.is_file() and is_done(dest_dir, marker):
        log.info("%s: already downloaded and verified", dest)
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f"{name}.part"
    if dest.is_file():
        log.info("%s: present without a verification marker, checking it", dest)
        digest = _md5_file(dest)
    else:
        errors: list[str] = []
        digest = None
        for url in urls:
            for attempt in range(1, retries + 1):
                try:
                    digest = _fetch(url, part, timeout)
                    break
                except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts are OSErrors
                    errors.append(f"{url} (try {attempt}): {e}")
                    log.warning("%s: download failed (try %d of %d): %s", url, attempt, retries, e)
                    if isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500:
                        break  # not on this server: next mirror
                    if attempt < retries:
                        time.sleep(min(retry_wait * 2 ** (attempt - 1), 60.0))
            if digest is not None:
                break
        if digest is None:
            raise OSError(
                f"{dest}: download failed from every URL ({'; '.join(errors)}); "
                f"any partial file {part} is kept and will be resumed"
            )
        os.replace(part, dest)
    if md5 is None:
        log.warning("%s: no known checksum, not verified (md5 %s)", dest, digest)
    elif digest != md5:
        dest.unlink()
        raise ChecksumError(f"{dest}: md5 {digest} differs from the official {md5}; file deleted, download again")
    mark_done(dest_dir, marker, {"md5": digest, "size": dest.stat().st_size})
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Reject members that could write outside the extraction folder."""
    name = member.name
    path = PurePosixPath(name)
    where = f"{archive}: member {name!r}"
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{where} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{where} has a '..' component")
    if member.isdev():
        raise UnsafeArchiveError(f"{where} is a device file or FIFO")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        if target.is_absolute():
            raise UnsafeArchiveError(f"{where} links to the absolute path {member.linkname!r}")
        # symlinks resolve from the member's folder, hard links from the archive root
        resolved = os.path.normpath(path.parent / target if member.issym() else target)
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(f"{where} links outside the target ({member.linkname!r})")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{where} has an unsupported type {member.type!r}")


def extract_archive(archive: Path, dest_dir: Path) -> Path:
    """Unpack ``archive`` safely into a new temporary folder in ``dest_dir`` and return it.

    Every member is checked before it is written (see :class:`UnsafeArchiveError`), and
    extraction also uses tarfile's ``data`` filter, which resolves links on disk. On any
    error the temporary folder is removed, so nothing of the archive remains.
    """
    archive = Path(archive)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".extract-{archive.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with (
            tarfile.open(archive, "r:*") as tf,
            logs.progress(unit=" files", desc=f"unpack {archive.name}", leave=False) as bar,
        ):
            for member in tf:
                _check_member(member, archive)
                try:
                    tf.extract(member, tmp, filter="data")
                except tarfile.FilterError as e:
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} rejected: {e}") from e
                bar.update(1)
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{archive}: cannot unpack ({e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _install_subset(tmp: Path, root: Path, subset: str, archive: Path) -> None:
    """Move ``LibriSpeech/<subset>`` (and the shared top-level docs) from ``tmp`` into ``root``."""
    src = tmp / "LibriSpeech" / subset
    if not src.is_dir():
        raise ValueError(f"{archive}: does not contain LibriSpeech/{subset}/")
    libri = root / "LibriSpeech"
    libri.mkdir(parents=True, exist_ok=True)
    dst = libri / subset
    if dst.exists():  # left by an interrupted run before the marker was written
        shutil.rmtree(dst)
    os.replace(src, dst)
    for doc in (tmp / "LibriSpeech").iterdir():
        if doc.is_file() and not (libri / doc.name).exists():
            os.replace(doc, libri / doc.name)


def download_lm_resources(
    lm_dir: Path,
    base_url: str | Sequence[str] = DEFAULT_BASE_URL,
    lm: bool = True,
    lexicon: Path | None = None,
    local_dir: Path | None = None,
    lm_files: Sequence[str] | None = None,
) -> Path:
    """Put the lexicon, the vocabulary and (with ``lm``) the official LMs into ``lm_dir``.

    ``lm_files`` names the official LM files wanted (default: all of :data:`LM_FILES`, ~4 GB);
    a recipe asks only for the ARPA it decodes with.

    Each file comes, in this order of preference, from ``lexicon`` (the lexicon only: any
    ``WORD PH1 ...`` file, linked, not checksummed), from ``local_dir`` (a folder holding
    OpenSLR 11 files under their official names: linked and md5-checked) or from the
    mirrors (resumable, md5-checked). A missing file is an error naming it and where it
    was looked for. Returns ``lm_dir``.
    """
    lm_dir = Path(lm_dir)
    bases = _base_urls(base_url)
    if local_dir is not None and not Path(local_dir).is_dir():
        raise FileNotFoundError(f"{local_dir}: LM folder not found (--lm-dir)")
    wanted = LM_FILES if lm_files is None else tuple(lm_files)
    unknown = [n for n in wanted if n not in LM_FILES]
    if unknown:
        raise ValueError(f"unknown OpenSLR 11 LM file(s) {unknown}; known: {list(LM_FILES)}")
    for name in (LEXICON_FILE, VOCAB_FILE, *(wanted if lm else ())):
        source = None
        if name == LEXICON_FILE and lexicon is not None:
            if not Path(lexicon).is_file():
                raise FileNotFoundError(f"{lexicon}: lexicon file not found (--lexicon)")
            _link(Path(lexicon), lm_dir / name)
            log.info("%s -> %s (user lexicon, not checksummed)", lm_dir / name, lexicon)
            continue
        if local_dir is not None and (Path(local_dir) / name).is_file():
            source = Path(local_dir) / name
            if not (lm_dir / name).is_file() or (lm_dir / name).resolve() != source.resolve():
                clear_done(lm_dir, f"download-{name}")
                _link(source, lm_dir / name)
        elif local_dir is not None:
            log.info("%s: not in %s, downloading it", name, local_dir)
        download_file(name, [f"{b}/{_LM_RESOURCE}/{name}" for b in bases], lm_dir, MD5.get(name))
    return lm_dir


def _link(src: Path, dst: Path) -> None:
    """Point ``dst`` at ``src`` (absolute symlink), replacing whatever ``dst`` was."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(src).resolve())
    os.replace(tmp, dst)


def link_librispeech(corpus_dir: Path, target_dir: Path, subsets: Sequence[str]) -> Path:
    """Use an existing LibriSpeech: link ``target_dir/LibriSpeech`` to it after checking ``subsets``.

    ``corpus_dir`` is the folder holding ``LibriSpeech/`` or that folder itself. Every
    subset folder must be present (the error lists the missing ones); nothing is copied.
    """
    root = _corpus_root(corpus_dir).resolve()
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown LibriSpeech subset(s) {unknown}; known: {list(SUBSETS)}")
    missing = [s for s in subsets if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{root}: subset folder(s) not found: {missing} "
            f"(download them with 'asrdistill download' without --corpus-dir)"
        )
    target = Path(target_dir) / "LibriSpeech"
    if target.is_dir() and not target.is_symlink():
        if target.resolve() == root:
            return Path(target_dir)
        raise FileExistsError(f"{target}: already holds a corpus (not a link); remove it or use it as --corpus-dir")
    _link(root, target)
    log.info("%s -> %s (%s)", target, root, " ".join(subsets))
    return Path(target_dir)


def download_librispeech(
    target_dir: Path,
    subsets: Sequence[str],
    base_url: str | Sequence[str] = DEFAULT_BASE_URL,
    lm: bool = True,
    remove_archives: bool = False,
    corpus_dir: Path | None = None,
    lexicon: Path | None = None,
    lm_dir: Path | None = None,
    lm_files: Sequence[str] | None = None,
) -> Path:
    """Download and unpack ``subsets`` into ``target_dir/LibriSpeech``, plus the lexicon.

    With ``corpus_dir`` an existing LibriSpeech is linked instead (:func:`link_librispeech`).
    The lexicon and vocabulary always go to ``target_dir/lm``, the official LMs too with
    ``lm`` (:func:`download_lm_resources`, which also takes ``lexicon``, ``lm_dir`` and ``lm_files``).
    ``base_url`` is a resources root (``.../resources``) or a :data:`MIRRORS` name, or a
    list of them tried in order. Subsets already unpacked (marker
    ``LibriSpeech/.<subset>.done``) are skipped. Returns ``target_dir``.
    """
    target_dir = Path(target_dir)
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown LibriSpeech subset(s) {unknown}; known: {list(SUBSETS)}")
    bases = _base_urls(base_url)
    if corpus_dir is not None:
        link_librispeech(corpus_dir, target_dir, subsets)
        subsets = []
    libri = target_dir / "LibriSpeech"
    for subset in subsets:
        if is_done(libri, subset) and (libri / subset).is_dir():
            log.info("%s: already downloaded and unpacked", libri / subset)
            continue
        name = f"{subset}.tar.gz"
        archive = download_file(name, [f"{b}/{_AUDIO_RESOURCE}/{name}" for b in bases], target_dir, MD5.get(name))
        tmp = extract_archive(archive, target_dir)
        try:
            _install_subset(tmp, target_dir, subset, archive)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        mark_done(libri, subset, {"archive": name, "md5": MD5.get(name)})
        if remove_archives:
            archive.unlink()
            clear_done(target_dir, f"download-{name}")
        log.info("%s: ready", libri / subset)
    download_lm_resources(target_dir / "lm", bases, lm=lm, lexicon=lexicon, local_dir=lm_dir, lm_files=lm_files)
    return target_dir


# ----------------------------------------------------------------------------- preparation

_UTT_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class _Chapter:
    """One chapter's usable utterances and the reasons for the rest (picklable worker result)."""

    wav: dict[str, str] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    dur: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (utt, file, reason)


def _read_transcripts(path: Path, out: _Chapter) -> dict[str, str]:
    """``UTT WORD ...`` lines; bad lines are recorded in ``out.skipped`` and the rest kept."""
    texts: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        data = path.read_bytes()
    except OSError as e:
        out.skipped.append(("-", str(path), f"cannot read transcript file ({e})"))
        return texts
    for lineno, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            utt = raw.split(maxsplit=1)[0].decode("ascii", errors="replace")
            out.skipped.append((utt, f"{path}:{lineno}", f"not UTF-8 ({e.reason} at byte {e.start})"))
            texts.setdefault(utt, "")  # known but unusable: its audio is not reported again as untranscribed
            continue
        utt, *tokens = line.split()
        words = " ".join(tokens).upper()
        if not _UTT_ID.match(utt):
            out.skipped.append((utt, f"{path}:{lineno}", "bad utterance id"))
        elif utt in texts:  # a conflict: neither line is trusted
            out.skipped.append(
                (utt, f"{path}:{lineno}", f"duplicate utterance id (also on line {lines[utt]}); both left out")
            )
            texts[utt] = ""
        elif not words:
            out.skipped.append((utt, f"{path}:{lineno}", "empty transcript"))
            texts[utt] = ""
        else:
            texts[utt] = words
        lines.setdefault(utt, lineno)
    return texts


def _scan_chapter(chapter: Path) -> _Chapter:
    """Pair each ``*.flac`` of a ``SPK/CHAP`` folder with its line in ``SPK-CHAP.trans.txt``."""
    out = _Chapter()
    prefix = f"{chapter.parent.name}-{chapter.name}-"
    trans = chapter / f"{prefix[:-1]}.trans.txt"
    texts: dict[str, str] = {}
    if trans.is_file():
        texts = _read_transcripts(trans, out)
    else:
        out.skipped.append(("-", str(trans), "transcript file not found"))
    for utt in [u for u in texts if texts[u] and not u.startswith(prefix)]:
        out.skipped.append((utt, str(trans), f"utterance id not of this folder (expected prefix {prefix})"))
        texts[utt] = ""  # reported: neither used nor reported again
    audio = {p.name[: -len(".flac")]: p for p in chapter.glob("*.flac")}
    for utt in sorted(set(audio) - set(texts)):
        out.skipped.append((utt, str(audio[utt]), "no transcript"))
    for utt, words in texts.items():
        if not words:
            continue  # already reported
        path = audio.get(utt)
        if path is None:
            out.skipped.append((utt, str(chapter / f"{utt}.flac"), "transcript for missing audio"))
            continue
        try:
            if path.stat().st_size == 0:  # libsndfile writes a 0-sample FLAC as an empty file
                out.skipped.append((utt, str(path), "zero-length audio (empty file)"))
                continue
            info = sf.info(str(path))
        except Exception as e:  # libsndfile raises several types for bad headers
            out.skipped.append((utt, str(path), f"unreadable audio ({type(e).__name__}: {e})".replace("\n", " ")))
            continue
        if info.frames <= 0 or info.samplerate <= 0:
            out.skipped.append((utt, str(path), "zero-length audio"))
            continue
        out.wav[utt] = str(path.resolve())
        out.text[utt] = words
        out.dur[utt] = info.frames / info.samplerate
    return out


def _corpus_root(corpus_dir: Path) -> Path:
    corpus_dir = Path(corpus_dir)
    if (corpus_dir / "LibriSpeech").is_dir():
        return corpus_dir / "LibriSpeech"
    if corpus_dir.is_dir():
        return corpus_dir
    raise FileNotFoundError(f"{corpus_dir}: corpus folder not found")


def data_dir_name(subset: str) -> str:
    """Kaldi convention: ``train-clean-100`` -> ``train_clean_100``."""
    return subset.replace("-", "_")


def _source_inputs(src: Path) -> dict:
    """A subset's folder and its transcripts (every audio file is not fingerprinted: 28k+ files per subset)."""
    return {"source": str(src.resolve()), "transcripts": sorted(src.glob("*/*/*.trans.txt"))}


def _prepare_subset(src: Path, out: Path, nj: int, inputs: dict) -> DataDir:
    chapters = sorted(c for s in src.iterdir() if s.is_dir() for c in s.iterdir() if c.is_dir())
    if not chapters:
        raise ValueError(f"{src}: no SPEAKER/CHAPTER folders")
    data = DataDir()
    skipped: list[tuple[str, str, str]] = []
    bar = dict(total=len(chapters), unit=" chapters", desc=f"prepare {src.name}", leave=False)
    if nj > 1:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold threads
        with ctx.Pool(min(nj, len(chapters))) as pool:
            results = list(logs.progress(pool.imap(_scan_chapter, chapters, chunksize=4), **bar))
    else:
        results = list(logs.progress(map(_scan_chapter, chapters), **bar))
    for chapter, res in zip(chapters, results):
        skipped.extend(res.skipped)
        speaker = chapter.parent.name
        for utt in res.wav:  # ids are unique: each starts with its own SPK-CHAP-
            data.wav[utt] = res.wav[utt]
            data.text[utt] = res.text[utt]
            data.utt2spk[utt] = speaker
            data.utt2dur[utt] = res.dur[utt]
    if not data.wav:
        raise ValueError(f"{src}: no usable utterances ({len(skipped)} skipped, e.g. {skipped[:3]})")
    data.save(out)
    write_skipped(out / "skipped.tsv", skipped)
    hours = sum(data.utt2dur.values()) / 3600
    reasons = Counter(r.split(" (")[0] for _, _, r in skipped)
    mark_done(
        out,
        "prepare",
        {"source": str(src), "utterances": len(data.wav), "skipped": len(skipped), "hours": round(hours, 3)},
        inputs,
    )
    log.info(
        "%s -> %s: %d utterances, %d speakers, %.2f h; %d skipped%s",
        src,
        out,
        len(data.wav),
        len(data.spk2utt),
        hours,
        len(skipped),
        f" ({', '.join(f'{n} {r}' for r, n in reasons.most_common())}; see {out / 'skipped.tsv'})" if skipped else "",
    )
    for u, p, r in skipped[:10]:
        log.warning("skipped %s: %s: %s", u, p, r)
    return data


def prepare_librispeech(
    corpus_dir: Path,
    subsets: Sequence[str],
    out_dir: Path,
    nj: int = 1,
    force: bool = False,
) -> dict[str, DataDir]:
    """Write ``out_dir/<subset with '-' -> '_'>`` data dirs; return them keyed by subset name.

    ``corpus_dir`` is the folder holding ``LibriSpeech/`` or that folder itself. A subset
    whose data dir is complete (``.prepare.done``) from the same source (its folder and
    transcripts) is loaded, not redone, unless ``force``.
    Each data dir gets ``skipped.tsv`` (utt_id, file, reason) of what was left out.
    """
    root = _corpus_root(corpus_dir)
    missing = [s for s in subsets if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: subset folder(s) not found: {missing}")
    result: dict[str, DataDir] = {}
    for subset in subsets:
        out = Path(out_dir) / data_dir_name(subset)
        inputs = _source_inputs(root / subset)
        if stage_done(out, "prepare", inputs, force) is not None:
            result[subset] = DataDir.load(out)
            continue
        result[subset] = _prepare_subset(root / subset, out, max(1, nj), inputs)
    return result
