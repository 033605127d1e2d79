"""Users' own audio folders: every input file is decoded or listed with its reason, never both, never neither."""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_bundle import SR, _bundle, _system, _tone, recipe  # noqa: F401 - recipe is a fixture

from asrdistill.decoding.bundle import load_system

MAX_SECONDS = 2.0


def _unescape(field: str) -> bytes:
    """A file name as files.tsv / skipped.tsv write it, back to its bytes."""
    out, i = bytearray(), 0
    while i < len(field):
        if field[i] == "\\":
            nxt = field[i + 1]
            if nxt == "x":
                out.append(int(field[i + 2 : i + 4], 16))
                i += 4
                continue
            out += {"\\": b"\\", "t": b"\t", "n": b"\n", "r": b"\r"}[nxt]
            i += 2
            continue
        out += field[i].encode("utf-8")
        i += 1
    return bytes(out)


def awkward_folder(root: Path) -> set[bytes]:
    """At least 30 inputs named like audio, of every awkward kind; returns their paths (bytes)."""
    root.mkdir()
    good = _tone(0.8)
    for name in (
        "good.wav",
        "x.wav",
        "x.flac",
        "a b.flac",
        "a_b.flac",
        "new\nline.wav",
        "tab\tname.wav",
        " lead.wav",
        "trail .wav",
        "UPPER.WAV",
        ".wav",
        "émoji🎤.flac",
        "sub-x.wav.flac",
        "back\\slash.wav",
        "a:b.wav",
        "pipe|.wav",
        "-dash.wav",
        "cr\r.wav",
        "sep\u2028.wav",
        "unreadable.wav",
    ):
        sf.write(root / name, good, SR, format="WAV" if name.lower().endswith(".wav") else "FLAC")
    (root / "sub").mkdir()
    sf.write(root / "sub" / "x.wav", good, SR)  # a third stem x, and sub-x.wav.flac collides
    with open(os.fsencode(root) + b"/caf\xe9.wav", "wb") as f:  # a name that is not UTF-8
        f.write((root / "good.wav").read_bytes())
    (root / "unreadable.wav").chmod(0)
    (root / "loop.wav").symlink_to(root / "loop.wav")
    (root / "dangling.flac").symlink_to(root / "nowhere.flac")
    (root / "link.wav").symlink_to(root / "good.wav")
    (root / "loopdir").symlink_to(root)  # a folder loop, not followed
    (root / "folder.wav").mkdir()
    sf.write(root / "folder.wav" / "inner.wav", good, SR)
    os.mkfifo(root / "fifo.wav")
    sf.write(root / "empty.wav", np.zeros(0, np.float32), SR)
    (root / "junk.flac").write_bytes(b"not audio at all")
    (root / "truncated.flac").write_bytes((root / "x.flac").read_bytes()[:200])
    sf.write(root / "long.flac", _tone(MAX_SECONDS + 1), SR)
    sf.write(root / "stereo.wav", np.stack([good, good], 1), SR)
    sf.write(root / "8k.wav", _tone(0.8)[::2], SR // 2)
    sf.write(root / "nan.wav", np.full(SR, np.nan, np.float32), SR, subtype="FLOAT")
    sf.write(root / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(root / "short.wav", good[:160], SR)
    sf.write(root / "24bit.wav", good, SR, subtype="PCM_24")
    (root / "notes.txt").write_text("not an input")
    inputs = {
        os.fsencode(Path(d) / n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if n.lower().endswith((".wav", ".flac"))
    }
    assert len(inputs) >= 30
    return inputs


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n")[1:] if line]


def check_invariant(out: Path, inputs: set[bytes]) -> tuple[dict[bytes, str], set[str], set[str]]:
    """Every input in files.tsv once with a unique id, and that id in exactly one of text and skipped.tsv."""
    files = _rows(out / "files.tsv")
    ids = {_unescape(f): u for f, u, _, _ in files}
    assert len(files) == len(ids) == len(set(ids.values())) and set(ids) == inputs
    text = {line.split(" ", 1)[0] for line in (out / "text").read_text(encoding="utf-8").split("\n") if line}
    skipped = [row[0] for row in _rows(out / "skipped.tsv")]
    assert len(skipped) == len(set(skipped)) and not text & set(skipped)
    assert text | set(skipped) == set(ids.values())
    assert {u: o for _, u, o, _ in files} == {**{u: "decoded" for u in text}, **{u: "skipped" for u in skipped}}
    return ids, text, set(skipped)


def test_every_awkward_input_is_decoded_or_skipped_exactly_once(recipe, tmp_path):  # noqa: F811
    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    root = tmp_path / "mine"
    inputs = awkward_folder(root)
    out = tmp_path / "out"
    report = system.decode_corpus(root, out, max_seconds=MAX_SECONDS)
    ids, text, skipped = check_invariant(out, inputs)

    def id_of(name: str) -> str:
        return ids[os.fsencode(root / name)]

    assert id_of("x.wav") == "x_wav" and id_of("x.flac") == "x_flac"  # stems repeat: the relative path
    # sub/x.wav's relative path equals sub-x.wav.flac's stem: both get a hash
    assert id_of("sub/x.wav").startswith("sub-x_wav-") and id_of("sub-x.wav.flac").startswith("sub-x_wav_flac-")
    assert id_of("a b.flac") != id_of("a_b.flac") and id_of("a b.flac").startswith("a_b_flac-")
    assert id_of("good.wav") == "good" and id_of("new\nline.wav") == "new_line"
    for name in (
        "x.wav",
        "x.flac",
        "a b.flac",
        "a_b.flac",
        "new\nline.wav",
        "tab\tname.wav",
        " lead.wav",
        "cr\r.wav",
        "sep\u2028.wav",
        "link.wav",
        "folder.wav/inner.wav",
        "émoji🎤.flac",
        "back\\slash.wav",
    ):
        assert id_of(name) in text, name
    assert ids[os.fsencode(root) + b"/caf\xe9.wav"] in text
    for name in ("loop.wav", "dangling.flac", "folder.wav", "fifo.wav", "empty.wav", "junk.flac", "long.flac"):
        assert id_of(name) in skipped, name
    assert set(report.hyps) == text and {s[0] for s in report.skipped} == skipped
    assert {os.fsencode(f) for f in report.files.values()} == inputs
    # the file below 16 kHz is decoded and reported as upsampled, in files.tsv and in the API's result
    notes = {u: note for _, u, _, note in _rows(out / "files.tsv")}
    assert notes[id_of("8k.wav")].startswith("upsampled from 8000 Hz to 16000 Hz") and id_of("8k.wav") in text
    assert report.notes == {id_of("8k.wav"): notes[id_of("8k.wav")]}  # the only file not at 16 kHz


def test_the_id_rule_is_deterministic_and_documented_cases_hold(tmp_path):
    from asrdistill.data.corpus import utterance_ids

    paths = [tmp_path / p for p in ("a/x.flac", "b/x.flac", "y.wav", "z z.wav", "z_z.wav")]
    ids = utterance_ids(paths, tmp_path)
    assert ids[paths[0]] == "a-x_flac" and ids[paths[1]] == "b-x_flac" and ids[paths[2]] == "y"
    assert ids[paths[3]] != ids[paths[4]] and ids == utterance_ids(list(reversed(paths)), tmp_path)


def test_transcribe_keeps_stems_and_returns_what_it_skipped(recipe, tmp_path):  # noqa: F811
    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    for name in ("one/same.wav", "two/same.wav", "solo.flac"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, _tone(0.8), SR)
    (tmp_path / "bad.wav").write_bytes(b"junk")
    result = system.transcribe(
        [tmp_path / "one/same.wav", tmp_path / "two/same.wav", tmp_path / "solo.flac", tmp_path / "bad.wav"]
    )
    assert set(result.hyps) == {"one-same_wav", "two-same_wav", "solo"}
    assert [(u, f) for u, f, _ in result.skipped] == [("bad", str(tmp_path / "bad.wav"))]
    assert result.files["solo"] == str(tmp_path / "solo.flac")
    with pytest.raises(ValueError, match=rf"none of its 1 input\(s\) could be decoded \({tmp_path}/bad.wav: "):
        system.transcribe([tmp_path / "bad.wav"])


def test_a_kaldi_dir_with_ids_shards_cannot_hold_decodes_the_rest(recipe, tmp_path):  # noqa: F811
    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    k = tmp_path / "kaldi"
    k.mkdir()
    for name in ("good", "u1", "u2"):
        sf.write(k / f"{name}.wav", _tone(0.8), SR)
    (k / "wav.scp").write_text(f"good {k / 'good.wav'}\nu.1 {k / 'u1.wav'}\nu/2 {k / 'u2.wav'}\n")
    report = system.decode_corpus(k, tmp_path / "out")
    assert set(report.hyps) == {"good"}
    assert {u: r.split(",")[0] for u, _, r in report.skipped} == {
        "u.1": "the utterance id holds '.' or '/'",
        "u/2": "the utterance id holds '.' or '/'",
    }
    check_invariant(tmp_path / "out", {os.fsencode(k / f"{name}.wav") for name in ("good", "u1", "u2")})


def test_a_file_name_with_a_newline_does_not_stop_the_batch(recipe, tmp_path):  # noqa: F811
    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    root = tmp_path / "mine"
    root.mkdir()
    for name in ("good.wav", "two\nlines.wav"):
        sf.write(root / name, _tone(0.8), SR)
    report = system.decode_corpus(root, tmp_path / "out")
    assert set(report.hyps) == {"good", "two_lines"} and report.hyps["good"] == report.hyps["two_lines"]
    assert "two\\nlines.wav\ttwo_lines\tdecoded\t\n" in (tmp_path / "out" / "files.tsv").read_text()


def _held_decode(system, corpus: Path, out: Path, started: Path, go: Path) -> None:
    """A decode (in a forked child) that pauses after reading its corpus until ``go`` exists."""
    import time

    import asrdistill.decoding.bundle as bundle

    features = bundle.compute_features

    def paused(*args, **kwargs):
        started.touch()
        while not go.exists():
            time.sleep(0.05)
        return features(*args, **kwargs)

    bundle.compute_features = paused
    system.decode_corpus(corpus, out, max_seconds=MAX_SECONDS, command="first-decode --out here")


def test_two_concurrent_decodes_into_one_folder_and_a_failed_one_keep_a_whole_result(recipe, tmp_path):  # noqa: F811
    import multiprocessing
    import time

    from asrdistill.decoding.decode_dir import FolderBusy

    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    first, second = tmp_path / "first", tmp_path / "second"
    inputs = awkward_folder(first)
    second.mkdir()
    sf.write(second / "other.wav", _tone(0.6, 300.0), SR)
    out = tmp_path / "out"
    started, go = tmp_path / "started", tmp_path / "go"
    child = multiprocessing.get_context("fork").Process(target=_held_decode, args=(system, first, out, started, go))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert child.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(
            FolderBusy,
            match=rf"another decode is writing this folder \(pid {child.pid}: "
            r"first-decode --out here\)",
        ):
            system.decode_corpus(second, out)
    finally:
        go.touch()
        child.join(60)
    assert child.exitcode == 0
    ids, text, skipped = check_invariant(out, inputs)
    wav = [line.split(" ", 1)[1] for line in (out / "data" / "wav.scp").read_text().splitlines()]
    assert wav and all(Path(p).is_file() and ".staging" not in p for p in wav)  # links moved with the data dir

    before = {name: (out / name).read_bytes() for name in ("text", "ctm", "skipped.tsv", "files.tsv")}
    with pytest.raises(FileNotFoundError):
        system.decode_corpus(tmp_path / "no-such-folder", out)
    bad = tmp_path / "pipes"
    bad.mkdir()
    (bad / "wav.scp").write_text("u1 sox x.wav -t wav - |\n")
    with pytest.raises(ValueError, match="pipes"):
        system.decode_corpus(bad, out)
    assert {name: (out / name).read_bytes() for name in before} == before  # a failed run keeps the earlier results
    assert not (out / ".staging").exists()
    system.decode_corpus(second, out)  # a successful one replaces them, data and features included
    assert (out / "text").read_text().split()[0] == "other" and len((out / "files.tsv").read_text().splitlines()) == 2
    assert [line.split()[0] for line in (out / "data" / "wav.scp").read_text().splitlines()] == ["other"]


def test_a_plain_folder_s_text_file_gives_references(recipe, tmp_path):  # noqa: F811
    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    root = tmp_path / "mine"
    root.mkdir()
    for name in ("one.wav", "two.flac"):
        sf.write(root / name, _tone(0.8), SR)
    (root / "text").write_text("one ba, ka\ntwo ab\nghost ba\n")
    report = system.decode_corpus(root, tmp_path / "out")
    assert report.wer is not None and report.ref_words == 3
    assert (tmp_path / "out" / "report.txt").read_text().startswith("%WER ")


def test_a_key_twice_in_wav_scp_skips_both_lines_and_decodes_the_rest(recipe, tmp_path, caplog):  # noqa: F811
    d, task = recipe
    system = load_system(_bundle(recipe, _system(tmp_path / "s", task), tmp_path / "b"))
    k = tmp_path / "kaldi"
    k.mkdir()
    for name in ("good", "a", "b"):
        sf.write(k / f"{name}.wav", _tone(0.8), SR)
    (k / "wav.scp").write_text(f"good {k / 'good.wav'}\ndup {k / 'a.wav'}\ndup {k / 'b.wav'}\n")
    (k / "text").write_text("good BA\ndup KA\ngood KA\n")  # good's reference is ambiguous: not scored
    with caplog.at_level("WARNING"):
        report = system.decode_corpus(k, tmp_path / "out")
    assert set(report.hyps) == {"good"} and report.wer is None
    assert f"{k / 'text'}: key 'good' is on lines [1, 3]; ignored" in caplog.text
    assert sorted((u, f, r.split(": key")[0]) for u, f, r in report.skipped) == [
        ("dup", str(k / "a.wav"), f"{k / 'wav.scp'}:2"),
        ("dup", str(k / "b.wav"), f"{k / 'wav.scp'}:3"),
    ]
    assert all("is on lines 2, 3" in r for _, _, r in report.skipped)
    files = sorted(tuple(row[:3]) for row in _rows(tmp_path / "out" / "files.tsv"))
    assert files == [
        (str(k / n), u, o)
        for n, u, o in (("a.wav", "dup", "skipped"), ("b.wav", "dup", "skipped"), ("good.wav", "good", "decoded"))
    ]
