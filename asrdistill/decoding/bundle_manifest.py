"""A bundle folder as files: its manifest, checksums, copies, and the staged write that replaces it whole.

``manifest.json`` names the format and its version, the asrdistill that wrote it,
what the bundle was made from (``sources``) and the sha256 of every other file.
Both writers (:func:`~asrdistill.decoding.bundle.write_bundle` and the exported
bundle of :mod:`asrdistill.decoding.export`) stage into a folder beside the
target and rename it into place; the reader verifies every checksum first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from asrdistill import __version__
from asrdistill.fileio import write_json_atomic

__all__ = ["BUNDLE_VERSION", "MANIFEST", "sha256_file", "place_copy", "up_to_date", "staged_bundle", "verify_manifest"]

log = logging.getLogger(__name__)

BUNDLE_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks: members and graphs are too big to read at once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def place_copy(src: Path, dst: Path) -> None:
    """``dst`` gets a copy of ``src``: never a hard link, so that editing the bundle cannot edit the experiment."""
    if not src.is_file():
        raise FileNotFoundError(f"{src}: needed for the bundle but missing")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def up_to_date(out_dir: Path, sources: dict) -> bool:
    """Whether ``out_dir`` holds a bundle of this format made from ``sources`` (then it is kept, and logged so)."""
    if not (out_dir / MANIFEST).is_file():
        return False
    old = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    if old.get("version") == BUNDLE_VERSION and old.get("sources") == sources:
        log.info("%s: bundle up to date (sources unchanged)", out_dir)
        return True
    return False


@contextlib.contextmanager
def staged_bundle(out_dir: Path, sources: dict) -> Iterator[Path]:
    """A folder beside ``out_dir`` to write a bundle into; when the block succeeds, its manifest (``sources``:
    what it was made from, every file's sha256) is written and it replaces ``out_dir``; when it fails, it is removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        write_json_atomic(
            tmp / MANIFEST,
            {
                "format": "asrdistill-bundle",
                "version": BUNDLE_VERSION,
                "asrdistill": __version__,
                "sources": sources,
                "files": {f: sha256_file(tmp / f) for f in files},
            },
        )
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_manifest(root: Path) -> dict:
    """The bundle's manifest after checking its version and every file's checksum."""
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found ({root} is not a bundle written by `asrdistill bundle`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format") != "asrdistill-bundle" or manifest.get("version") != BUNDLE_VERSION:
        raise ValueError(
            f"{path}: bundle format {manifest.get('format')!r} version {manifest.get('version')!r} "
            f"(written by asrdistill {manifest.get('asrdistill')}); this asrdistill {__version__} reads "
            f"version {BUNDLE_VERSION}: re-export it with `asrdistill bundle`"
        )
    for name, digest in manifest["files"].items():
        f = root / name
        if not f.is_file():
            raise FileNotFoundError(f"{f}: listed in {path} but missing")
        if sha256_file(f) != digest:
            raise ValueError(f"{f}: sha256 differs from {path} (file changed or corrupted)")
    return manifest
