"""Kaldi-style command logs (``<out>/log/<command>.log``) and progress that is a bar only on a terminal."""

from __future__ import annotations

import io
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrdistill import logs
from asrdistill.data.datadir import DataDir

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def _cli(*args: object, interval: float = 30.0) -> subprocess.CompletedProcess:
    """``asrdistill ...`` as a subprocess whose stderr is a pipe (not a terminal), like a redirected run."""
    env = {**ENV, "ASRDISTILL_PROGRESS_INTERVAL": str(interval)}
    proc = subprocess.run(
        [sys.executable, "-m", "asrdistill.cli", *map(str, args)], capture_output=True, env=env, timeout=300
    )
    # decoded by hand: text=True would turn a bar's carriage returns into newlines
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """Six short utterances (the fbank of each is one progress step)."""
    data = DataDir()
    rng = np.random.default_rng(0)
    for i in range(6):
        utt = f"100-1-{i:04d}"
        path = tmp_path / "audio" / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(4000 + 800 * i)).astype(np.float32), 16000, subtype="PCM_16")
        data.wav[utt], data.text[utt], data.utt2spk[utt] = str(path), "A", "100"
    data.save(tmp_path / "data")
    return tmp_path / "data"


def test_command_writes_its_log_with_command_line_config_and_timing(data_dir, tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("features:\n  num_mel_bins: 23\ntrain:\n  epochs: 3\n")
    out = tmp_path / "fbank"
    proc = _cli("features", "--config", conf, "--set", "features.dither=0.0", "--nj", 1, data_dir, out, interval=0)
    assert proc.returncode == 0, proc.stderr
    text = (out / "log" / "features.log").read_text()
    lines = text.splitlines()
    argv = [
        REPO / "asrdistill/cli/__main__.py",
        "features",
        "--config",
        conf,
        "--set",
        "features.dither=0.0",
        "--nj",
        1,
        data_dir,
        out,
    ]  # sys.argv of ``python -m asrdistill.cli ...``
    assert lines[0].endswith(" INFO asrdistill: command: " + shlex.join(map(str, argv)))
    assert f"config {conf} with --set features.dither=0.0; sections read: features, executor" in text
    assert 'config [features] {"dither": 0.0, "num_mel_bins": 23}' in text
    assert "config [train]" not in text  # only the sections the command reads
    assert "utterance(s) in" in text  # the stage's own records are in the file too
    assert "fbank data: 6/6 utt (100%)" in text  # progress, one line per record
    assert lines[-1].split(": ", 1)[1].startswith("features ended: exit status 0 (success); wall ")
    assert " CPU " in lines[-1]
    assert "\r" not in proc.stderr  # no bar redraws where stderr is not a terminal
    assert b"\r" not in (out / "log" / "features.log").read_bytes()

    proc = _cli("features", "--config", conf, "--nj", 1, data_dir, out)  # appended, like Kaldi's logs
    assert proc.returncode == 0, proc.stderr
    assert (out / "log" / "features.log").read_text().startswith(text)
    assert (out / "log" / "features.log").read_text().count("features ended: exit status 0") == 2


def test_failing_command_logs_the_error_and_prints_one_line(tmp_path):
    data = tmp_path / "data"
    DataDir(wav={"u1": str(tmp_path / "missing.flac")}, text={"u1": "A"}, utt2spk={"u1": "s"}).save(data)
    out = tmp_path / "fbank"
    proc = _cli("features", data, out)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr  # the terminal still gets one line
    text = (out / "log" / "features.log").read_text()
    assert "ERROR asrdistill: features failed: " in text and "no utterance could be read" in text
    assert text.splitlines()[-1].split(": ", 1)[1].startswith("features ended: exit status 1 (error); wall ")


def test_command_without_an_output_folder_writes_no_log(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("recipe:\n  train_set: x\n")
    proc = _cli("config-get", "--config", conf, "recipe.train_set")
    assert proc.returncode == 0 and proc.stdout == "x\n"
    assert not list(tmp_path.rglob("*.log"))


@pytest.fixture()
def file_record(tmp_path):
    """A command log attached at ``tmp_path/out``; yields the log's path."""
    with logs.command_log(tmp_path / "out", "test", "asrdistill test"):
        yield tmp_path / "out" / "log" / "test.log"


def test_progress_is_periodic_log_lines_when_stderr_is_not_a_terminal(file_record, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal (set here: pytest swaps it per phase)
    clock = iter(range(0, 1000, 5))  # every call to the clock: 5 s later
    monkeypatch.setattr(logs.time, "monotonic", lambda: float(next(clock)))
    with logs.progress(total=40, desc="work", unit="utt", interval=12) as bar:
        for _ in range(20):
            bar.update(2)
        bar.set_postfix_str("3x real-time")
    assert isinstance(bar, logs.Progress) and bar.bar is None
    assert sys.stderr.getvalue() == ""  # nothing drawn (and the test's stderr has no handler)
    lines = [
        line.split(": ", 1)[1] for line in file_record.read_text().splitlines() if " asrdistill.progress: " in line
    ]
    assert 5 <= len(lines) <= 9, lines  # every >= 12 s over 100 s, plus the final line, not one per update
    assert lines[0].startswith("work: ") and "/40 utt (" in lines[0] and "utt/s" in lines[0] and "eta " in lines[0]
    assert lines[-1].startswith("work: 40/40 utt (100%) in ") and lines[-1].endswith("[3x real-time]")


def test_progress_iterates_and_honours_disable_and_leave(file_record, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert list(logs.progress(iter(range(7)), desc="it", unit="x", interval=0)) == list(range(7))
    gen = (i for i in range(3))
    assert list(logs.progress(gen, total=3, desc="transient", leave=False, interval=1e9)) == [0, 1, 2]
    bar = logs.progress(total=5, desc="off", disable=True)
    bar.update(5)
    bar.set_postfix(a=1)
    bar.close()
    text = file_record.read_text()
    assert "it: 7 x in " in text and "it: 3 x in " in text  # total unknown: counts only
    assert "transient" not in text  # leave=False and no periodic line: no final line either
    assert "off:" not in text


def test_progress_on_a_terminal_draws_the_bar_and_logs_only_to_the_file(file_record, monkeypatch):
    term = io.StringIO()
    term.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", term)
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger("asrdistill").addHandler(handler)
    try:
        with logs.progress(total=3, desc="tty", unit="utt", interval=0) as bar:
            bar.update(3)
    finally:
        logging.getLogger("asrdistill").removeHandler(handler)
    assert bar.bar is not None and "\r" in term.getvalue()  # tqdm's bar on the terminal
    assert not seen  # the terminal's logging handlers get no progress lines
    assert "tty: 3/3 utt (100%)" in file_record.read_text()  # the command's log file does


def test_nested_file_log_writes_each_record_once(tmp_path):
    path = tmp_path / "log" / "decode.log"
    with logs.file_log(path) as outer, logs.file_log(tmp_path / "x" / ".." / "log" / "decode.log") as inner:
        logging.getLogger("asrdistill.test").info("once")
    assert outer and not inner
    assert path.read_text().count("once") == 1


def test_ddp_ranks_other_than_0_write_their_own_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with logs.command_log(tmp_path, "train", "asrdistill train") as status:
        status.code = 0
    assert [p.name for p in (tmp_path / "log").iterdir()] == ["train.rank1.log"]
