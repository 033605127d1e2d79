"""Download against a local HTTP server with Range support: resume, checksums, mirrors, unsafe archives."""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data_prep.librispeech as lsp
from asrdistill import cli
from asrdistill.fileio import is_done


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; can cut a response short once."""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.ranges:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # promise everything, send a part, drop the connection
            body, srv.cut_after = body[: srv.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.ranges, srv.cut_after = {}, [], True, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _librispeech_tar(subset: str) -> bytes:
    """A small subset archive in the official layout (``LibriSpeech/<subset>/SPK/CHAP/...``)."""
    members = [_file("LibriSpeech/README.TXT", b"readme\n")]
    for i in range(2):
        audio = io.BytesIO()
        t = np.arange(4000 + 800 * i) / 16000
        sf.write(audio, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000, format="FLAC")
        members.append(_file(f"LibriSpeech/{subset}/1272/128104/1272-128104-{i:04d}.flac", audio.getvalue()))
    members.append(
        _file(
            f"LibriSpeech/{subset}/1272/128104/1272-128104.trans.txt",
            b"1272-128104-0000 MISTER QUILTER\n1272-128104-0001 IS THE APOSTLE\n",
        )
    )
    return _tar(members)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_full_download_unpack_and_skip(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _librispeech_tar("dev-clean")
    lexicon = b"MISTER\tM IH1 S T ER0\n"
    server.files = {
        "/res/12/dev-clean.tar.gz": archive,
        "/res/11/librispeech-lexicon.txt": lexicon,
        "/res/11/librispeech-vocab.txt": b"MISTER\n",
    }
    monkeypatch.setitem(lsp.MD5, "dev-clean.tar.gz", _md5(archive))
    monkeypatch.setitem(lsp.MD5, "librispeech-vocab.txt", _md5(b"MISTER\n"))
    monkeypatch.setitem(lsp.MD5, "librispeech-lexicon.txt", _md5(lexicon))
    target = tmp_path / "corpus"

    assert lsp.download_librispeech(target, ["dev-clean"], base_url=server.url + "/res", lm=False) == target
    chapter = target / "LibriSpeech" / "dev-clean" / "1272" / "128104"
    assert sorted(p.name for p in chapter.iterdir()) == [
        "1272-128104-0000.flac",
        "1272-128104-0001.flac",
        "1272-128104.trans.txt",
    ]
    assert (target / "LibriSpeech" / "README.TXT").read_text() == "readme\n"
    assert (target / "lm" / "librispeech-lexicon.txt").read_bytes() == lexicon
    assert is_done(target / "LibriSpeech", "dev-clean")
    assert (target / "dev-clean.tar.gz").read_bytes() == archive
    assert not list(target.glob(".extract-*")) and not list(target.rglob("*.part"))

    # the unpacked subset prepares as is
    d = lsp.prepare_librispeech(target, ["dev-clean"], tmp_path / "data", nj=1)["dev-clean"]
    assert d.text == {"1272-128104-0000": "MISTER QUILTER", "1272-128104-0001": "IS THE APOSTLE"}
    assert d.utt2dur["1272-128104-0001"] == pytest.approx(0.3)

    # everything is verified: a second run does not touch the network
    n = len(server.requests)
    lsp.download_librispeech(target, ["dev-clean"], base_url=server.url + "/res", lm=False)
    assert len(server.requests) == n


def test_resume_partial_file(server, tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(300_000)
    server.files = {"/f.bin": data}
    (tmp_path / "f.bin.part").write_bytes(data[:123_457])
    out = lsp.download_file("f.bin", [server.url + "/f.bin"], tmp_path, md5=_md5(data))
    assert out.read_bytes() == data
    assert server.requests == [("/f.bin", "bytes=123457-")]
    assert is_done(tmp_path, "download-f.bin") and not (tmp_path / "f.bin.part").exists()


def test_resume_after_dropped_connection(server, tmp_path: Path) -> None:
    data = np.random.default_rng(1).bytes(2_500_000)
    server.files, server.cut_after = {"/f.bin": data}, 1_000_000
    out = lsp.download_file("f.bin", [server.url + "/f.bin"], tmp_path, md5=_md5(data), retry_wait=0)
    assert out.read_bytes() == data
    assert server.requests[0] == ("/f.bin", None)
    assert server.requests[1][1] is not None and int(server.requests[1][1][6:-1]) >= 1_000_000 - (1 << 20)


def test_server_without_range_support_restarts(server, tmp_path: Path) -> None:
    data = np.random.default_rng(2).bytes(50_000)
    server.files, server.ranges = {"/f.bin": data}, False
    (tmp_path / "f.bin.part").write_bytes(b"x" * 20_000)  # would corrupt the file if appended to
    assert lsp.download_file("f.bin", [server.url + "/f.bin"], tmp_path, md5=_md5(data)).read_bytes() == data


def test_complete_part_file_gets_416(server, tmp_path: Path) -> None:
    data = b"0123456789" * 100
    server.files = {"/f.bin": data}
    (tmp_path / "f.bin.part").write_bytes(data)
    assert lsp.download_file("f.bin", [server.url + "/f.bin"], tmp_path, md5=_md5(data)).read_bytes() == data


def test_checksum_mismatch_deletes_file(server, tmp_path: Path) -> None:
    server.files = {"/f.bin": b"tampered content"}
    with pytest.raises(lsp.ChecksumError, match=r"f\.bin: md5 .* differs from the official 0+"):
        lsp.download_file("f.bin", [server.url + "/f.bin"], tmp_path, md5="0" * 32)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    assert not is_done(tmp_path, "download-f.bin")


def test_unknown_checksum_warns(server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server.files = {"/f.bin": b"abc"}
    with caplog.at_level(logging.WARNING):
        lsp.download_file("f.bin", [server.url + "/f.bin"], tmp_path, md5=None)
    assert "no known checksum" in caplog.text and (tmp_path / "f.bin").read_bytes() == b"abc"


def test_mirror_fallback_and_missing_everywhere(server, tmp_path: Path) -> None:
    server.files = {"/good/f.bin": b"payload"}
    urls = [server.url + "/bad/f.bin", server.url + "/good/f.bin"]
    assert lsp.download_file("f.bin", urls, tmp_path, md5=_md5(b"payload")).read_bytes() == b"payload"
    assert [p for p, _ in server.requests] == ["/bad/f.bin", "/good/f.bin"]
    with pytest.raises(OSError, match="download failed from every URL"):
        lsp.download_file("g.bin", [server.url + "/bad/g.bin"], tmp_path, retry_wait=0)


def _symlink(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


GOOD = _file("LibriSpeech/dev-clean/1/2/1-2.trans.txt", b"1-2-0000 A\n")
MALICIOUS = {
    "absolute path": [GOOD, _file("/tmp/asrdistill-evil.txt", b"evil")],
    "dotdot": [GOOD, _file("LibriSpeech/dev-clean/../../../evil.txt", b"evil")],
    "symlink escaping": [
        GOOD,
        _symlink("LibriSpeech/dev-clean/esc", "../../.."),
        _file("LibriSpeech/dev-clean/esc/evil.txt", b"evil"),
    ],
    "absolute symlink": [GOOD, _symlink("LibriSpeech/dev-clean/esc", "/tmp")],
    "hardlink outside": [GOOD, _symlink("LibriSpeech/dev-clean/h", "../outside.txt", hard=True)],
    # each link looks inside on paper; on disk the second resolves through the first to outside
    "symlink chain": [
        GOOD,
        _symlink("LibriSpeech/up", ".."),
        _symlink("LibriSpeech/up/esc", ".."),
        _file("LibriSpeech/up/esc/evil.txt", b"evil"),
    ],
    "device file": [GOOD, _device("LibriSpeech/dev-clean/null")],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archive_rejected(case: str, server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tar(MALICIOUS[case])
    server.files = {"/12/dev-clean.tar.gz": archive}
    monkeypatch.setitem(lsp.MD5, "dev-clean.tar.gz", _md5(archive))
    target = tmp_path / "sandbox" / "corpus"
    target.mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("precious")
    before = _tree(tmp_path)

    with pytest.raises(lsp.UnsafeArchiveError, match="dev-clean.tar.gz: member"):
        lsp.download_librispeech(target, ["dev-clean"], base_url=server.url, lm=False)

    # only the verified archive and its marker are new; nothing unpacked anywhere
    new = _tree(tmp_path) - before
    assert new == {"sandbox/corpus/dev-clean.tar.gz", "sandbox/corpus/.download-dev-clean.tar.gz.done"}
    assert (tmp_path / "outside.txt").read_text() == "precious"
    assert not Path("/tmp/asrdistill-evil.txt").exists()
    assert not is_done(target / "LibriSpeech", "dev-clean")


def test_archive_without_subset_folder(tmp_path: Path) -> None:
    archive = tmp_path / "dev-clean.tar.gz"
    archive.write_bytes(_tar([_file("LibriSpeech/other/x.txt", b"x")]))
    tmp = lsp.extract_archive(archive, tmp_path / "out")
    with pytest.raises(ValueError, match="does not contain LibriSpeech/dev-clean/"):
        lsp._install_subset(tmp, tmp_path / "out", "dev-clean", archive)


def test_unknown_subset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown LibriSpeech subset"):
        lsp.download_librispeech(tmp_path, ["train-clean-1000"], lm=False)


def test_cli_download(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _librispeech_tar("test-clean")
    server.files = {
        "/r/12/test-clean.tar.gz": archive,
        "/r/11/librispeech-lexicon.txt": b"A\tAH0\n",
        "/r/11/librispeech-vocab.txt": b"A\n",
    }
    monkeypatch.setitem(lsp.MD5, "test-clean.tar.gz", _md5(archive))
    monkeypatch.setitem(lsp.MD5, "librispeech-vocab.txt", _md5(b"A\n"))
    monkeypatch.setitem(lsp.MD5, "librispeech-lexicon.txt", _md5(b"A\tAH0\n"))
    argv = [
        "download",
        "--target",
        str(tmp_path),
        "--subsets",
        "test-clean",
        "--no-lm",
        "--remove-archives",
        "--base-url",
        server.url + "/missing",
        "--base-url",
        server.url + "/r",
    ]
    assert cli.main(argv) == 0
    assert is_done(tmp_path / "LibriSpeech", "test-clean") and not (tmp_path / "test-clean.tar.gz").exists()
    assert not is_done(tmp_path, "download-test-clean.tar.gz")
    assert (tmp_path / "LibriSpeech" / "test-clean" / "1272" / "128104" / "1272-128104-0001.flac").is_file()


LEXICON = b"MISTER\tM IH1 S T ER0\nQUILTER\tK W IH1 L T ER0\n"
VOCAB = b"MISTER\nQUILTER\n"
ARPA = b"\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0 </s>\n-99 <s>\n-0.5 MISTER\n\n\\end\\\n"
TGSMALL = "3-gram.pruned.3e-7.arpa.gz"


def _existing_corpus(root: Path, subsets: list[str]) -> Path:
    """``root/LibriSpeech/<subset>/1272/128104`` with two utterances each, as a user's copy would be."""
    for subset in subsets:
        chapter = root / "LibriSpeech" / subset / "1272" / "128104"
        chapter.mkdir(parents=True)
        for i in range(2):
            sf.write(chapter / f"1272-128104-{i:04d}.flac", np.zeros(1600 * (i + 1), np.float32), 16000)
        (chapter / "1272-128104.trans.txt").write_text("1272-128104-0000 MISTER\n1272-128104-0001 MISTER QUILTER\n")
    return root


@pytest.fixture()
def lm_server(server, monkeypatch: pytest.MonkeyPatch):
    """The lexicon, vocabulary and one ARPA (tgsmall) under /res/11, with their checksums."""
    files = {lsp.LEXICON_FILE: LEXICON, lsp.VOCAB_FILE: VOCAB, TGSMALL: ARPA}
    server.files = {f"/res/11/{n}": d for n, d in files.items()}
    for name, data in files.items():
        monkeypatch.setitem(lsp.MD5, name, _md5(data))
    monkeypatch.setattr(lsp, "LM_FILES", (TGSMALL,))
    return server


def test_corpus_dir_links_subsets_and_fetches_lexicon_and_lm(lm_server, tmp_path: Path) -> None:
    user = _existing_corpus(tmp_path / "user", ["dev-clean", "test-clean"])
    target = tmp_path / "corpus"
    argv = [
        "download",
        "--target",
        str(target),
        "--subsets",
        "dev-clean",
        "test-clean",
        "--corpus-dir",
        str(user),
        "--base-url",
        lm_server.url + "/res",
    ]
    assert cli.main(argv) == 0
    assert (target / "LibriSpeech").resolve() == (user / "LibriSpeech").resolve()
    assert sorted(p for p, _ in lm_server.requests) == sorted(
        f"/res/11/{n}" for n in (lsp.LEXICON_FILE, lsp.VOCAB_FILE, TGSMALL)
    )
    assert (target / "lm" / lsp.LEXICON_FILE).read_bytes() == LEXICON
    assert (target / "lm" / TGSMALL).read_bytes() == ARPA
    d = lsp.prepare_librispeech(target, ["dev-clean", "test-clean"], tmp_path / "data", nj=1)
    assert d["test-clean"].text["1272-128104-0001"] == "MISTER QUILTER"
    assert not list((user / "LibriSpeech").glob("*.done"))  # the user's copy is left as it was
    n = len(lm_server.requests)  # again: everything verified, no request
    assert cli.main(argv) == 0 and len(lm_server.requests) == n


def test_corpus_dir_with_lm_dir_and_own_lexicon(lm_server, tmp_path: Path) -> None:
    user = _existing_corpus(tmp_path / "user", ["dev-clean"])
    lm_dir = tmp_path / "openslr11"
    lm_dir.mkdir()
    (lm_dir / TGSMALL).write_bytes(ARPA)
    own = tmp_path / "my-lexicon.txt"
    own.write_bytes(b"MISTER M IH S T ER\n")  # not the official file: used as given
    lsp.download_librispeech(
        tmp_path / "corpus",
        ["dev-clean"],
        base_url=lm_server.url + "/res",
        corpus_dir=user / "LibriSpeech",
        lexicon=own,
        lm_dir=lm_dir,
    )
    lm = tmp_path / "corpus" / "lm"
    assert (lm / TGSMALL).resolve() == (lm_dir / TGSMALL).resolve() and is_done(lm, f"download-{TGSMALL}")
    assert (lm / lsp.LEXICON_FILE).read_bytes() == own.read_bytes()
    assert [p for p, _ in lm_server.requests] == [f"/res/11/{lsp.VOCAB_FILE}"]  # only what was not given

    (lm_dir / TGSMALL).write_bytes(ARPA[:-5])  # a truncated copy: checked, rejected, left alone
    with pytest.raises(lsp.ChecksumError, match=f"{TGSMALL}: md5"):
        lsp.download_lm_resources(tmp_path / "lm2", lm_server.url + "/res", local_dir=lm_dir)
    assert (lm_dir / TGSMALL).read_bytes() == ARPA[:-5]


def test_corpus_dir_missing_subset_or_resources_named(lm_server, tmp_path: Path) -> None:
    user = _existing_corpus(tmp_path / "user", ["dev-clean"])
    with pytest.raises(FileNotFoundError, match=r"subset folder\(s\) not found: \['train-clean-100', 'test-clean'\]"):
        lsp.download_librispeech(
            tmp_path / "c",
            ["train-clean-100", "dev-clean", "test-clean"],
            base_url=lm_server.url + "/res",
            corpus_dir=user,
        )
    assert not (tmp_path / "c" / "LibriSpeech").exists()
    del lm_server.files[f"/res/11/{lsp.LEXICON_FILE}"]
    with pytest.raises(OSError, match=r"librispeech-lexicon.txt: download failed from every URL"):
        lsp.download_librispeech(tmp_path / "c", ["dev-clean"], base_url=lm_server.url + "/res", corpus_dir=user)
    with pytest.raises(FileNotFoundError, match=r"nowhere.txt: lexicon file not found \(--lexicon\)"):
        lsp.download_lm_resources(tmp_path / "c" / "lm", lm_server.url + "/res", lexicon=tmp_path / "nowhere.txt")


def test_truncated_archive_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "dev-clean.tar.gz"
    archive.write_bytes(_librispeech_tar("dev-clean")[:-200])
    with pytest.raises(ValueError, match=r"dev-clean.tar.gz: cannot unpack"):
        lsp.extract_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_only_the_configured_lm_is_fetched(lm_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A recipe decoding with tgsmall fetches tgsmall, not the other ~4 GB of OpenSLR 11."""
    monkeypatch.setattr(lsp, "LM_FILES", (TGSMALL, "3-gram.pruned.1e-7.arpa.gz", "4-gram.arpa.gz"))
    user = _existing_corpus(tmp_path / "user", ["dev-clean"])
    argv = [
        "download",
        "--target",
        str(tmp_path / "corpus"),
        "--subsets",
        "dev-clean",
        "--corpus-dir",
        str(user),
        "--base-url",
        lm_server.url + "/res",
        "--lm-files",
        TGSMALL,
    ]
    assert cli.main(argv) == 0
    assert sorted(p for p, _ in lm_server.requests) == sorted(
        f"/res/11/{n}" for n in (lsp.LEXICON_FILE, lsp.VOCAB_FILE, TGSMALL)
    )
    with pytest.raises(ValueError, match=r"unknown OpenSLR 11 LM file\(s\) \['3-gram.pruned.9e-9.arpa.gz'\]"):
        lsp.download_lm_resources(tmp_path / "lm", lm_server.url + "/res", lm_files=["3-gram.pruned.9e-9.arpa.gz"])
