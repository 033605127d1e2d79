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
    members.append(_file(f"LibriSpeech/{subset}/1272/128104/1272-128104.trans.txt",
                         b"1272-128104-0000 MISTER QUILTER\n1272-128104-0001 IS THE APOSTLE\n"))
    return _tar(members)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_full_download_unpack_and_skip(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _librispeech_tar("dev-clean")
    lexicon = b"MISTER\tM IH1 S T ER0\n"
    server.files = {"/res/12/dev-clean.tar.gz": archive, "/res/11/librispeech-lexicon.txt": lexicon}
    monkeypatch.setitem(lsp.MD5, "dev-clean.tar.gz", _md5(archive))
    monkeypatch.setitem(lsp.MD5, "librispeech-lexicon.txt", _md5(lexicon))
    target = tmp_path / "corpus"

    assert lsp.download_librispeech(target, ["dev-clean"], base_url=server.url + "/res", lm=False) == target
    chapter = target / "LibriSpeech" / "dev-clean" / "1272" / "128104"
    assert sorted(p.name for p in chapter.iterdir()) == [
        "1272-128104-0000.flac", "1272-128104-0001.flac", "1272-128104.trans.txt"]
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
    "symlink escaping": [GOOD, _symlink("LibriSpeech/dev-clean/esc", "../../.."),
                         _file("LibriSpeech/dev-clean/esc/evil.txt", b"evil")],
    "absolute symlink": [GOOD, _symlink("LibriSpeech/dev-clean/esc", "/tmp")],
    "hardlink outside": [GOOD, _symlink("LibriSpeech/dev-clean/h", "../outside.txt", hard=True)],
    # each link looks inside on paper; on disk the second resolves through the first to outside
    "symlink chain": [GOOD, _symlink("LibriSpeech/up", ".."), _symlink("LibriSpeech/up/esc", ".."),
                      _file("LibriSpeech/up/esc/evil.txt", b"evil")],
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
    server.files = {"/r/12/test-clean.tar.gz": archive, "/r/11/librispeech-lexicon.txt": b"A\tAH0\n"}
    monkeypatch.setitem(lsp.MD5, "test-clean.tar.gz", _md5(archive))
    monkeypatch.setitem(lsp.MD5, "librispeech-lexicon.txt", _md5(b"A\tAH0\n"))
    argv = ["download", "--target", str(tmp_path), "--subsets", "test-clean", "--no-lm", "--remove-archives",
            "--base-url", server.url + "/missing", "--base-url", server.url + "/r"]
    assert cli.main(argv) == 0
    assert is_done(tmp_path / "LibriSpeech", "test-clean") and not (tmp_path / "test-clean.tar.gz").exists()
    assert not is_done(tmp_path, "download-test-clean.tar.gz")
    assert (tmp_path / "LibriSpeech" / "test-clean" / "1272" / "128104" / "1272-128104-0001.flac").is_file()
