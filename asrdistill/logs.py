"""Kaldi-style run logs and progress that suits both a terminal and a log file.

Every ``asrdistill`` command that writes a folder appends ``<out>/log/<command>.log``
(:func:`command_log`): its command line, the config sections it reads, every
record of the ``asrdistill`` loggers (and of any package :func:`log_package` adds) while it runs, and at the
end its wall and CPU time and exit status, so a finished run can be read (and
rerun) from its outputs alone. :func:`progress` replaces ``tqdm``: a redrawn bar
belongs on a terminal only; where stderr is a file (a redirected recipe run) it
becomes one log line at most every ``ASRDISTILL_PROGRESS_INTERVAL`` seconds
(default 30) with done/total, percentage and rate, plus a final line, and those
lines also reach the command's log file when the bar is on a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

__all__ = ["FORMAT", "LOGGERS", "command_log", "describe_error", "file_log", "log_package", "progress"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGGERS = ["asrdistill"]  # the packages whose records a command's log file receives (see log_package)


def log_package(name: str) -> None:
    """Have command logs also receive the records of package ``name``: the CLI adds the packages beside the library
    whose functions its commands run (the library itself knows none of them)."""
    if name not in LOGGERS:
        LOGGERS.append(name)


DEFAULT_INTERVAL = 30.0  # seconds between progress lines where stderr is not a terminal

log = logging.getLogger(__name__)
_progress_log = logging.getLogger("asrdistill.progress")
_active: dict[Path, logging.Handler] = {}  # log files attached now (resolved path -> handler)


# --------------------------------------------------------------------------- log files


@contextlib.contextmanager
def file_log(path: str | os.PathLike) -> Iterator[bool]:
    """Also send the :data:`LOGGERS`' records (INFO and up, or what is configured) to ``path``, appended.

    Creates the folder. Yields True, or False when an enclosing block already
    writes to the same file (then nothing is added: no record is written twice).
    """
    path = Path(path)
    key = path.resolve()
    if key in _active:
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    _active[key] = handler
    try:
        yield True
    finally:
        _active.pop(key, None)
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()


def _to_files(
    level: int, msg: str, *args: Any, handlers: Iterable[logging.Handler] | None = None, name: str = "asrdistill"
) -> None:
    """A record for the attached log files only (not the terminal: it has the bar, or the one-line error)."""
    record = logging.getLogger(name).makeRecord(name, level, __file__, 0, msg, args, None)
    for handler in list(_active.values()) if handlers is None else handlers:
        if level >= handler.level:
            handler.handle(record)


def describe_error(e: BaseException) -> str:
    """The one-line form of an error the CLI prints: message on one line, the type unless it says itself."""
    kind = "" if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: "
    return kind + (" ".join(str(e).split()) or type(e).__name__)


@dataclass
class CommandStatus:
    """What :func:`command_log` reports at the end: set ``code`` to the command's exit status."""

    code: int = 0


def _config_lines(
    config: str | os.PathLike | None, overrides: Sequence[str], command: str, role: str | None
) -> list[str]:
    """One line per config section ``command`` reads (per :data:`asrdistill.config.SECTIONS`), --set applied."""
    if config is None:
        return ["config: none (defaults)" + (f"; --set {' '.join(overrides)}" if overrides else "")]
    import json
    import re

    from asrdistill.config import SECTIONS, merge, parse_overrides, read_yaml

    try:
        data = merge(read_yaml(config), parse_overrides(overrides))
    except Exception as e:  # noqa: BLE001 - the command reports it; the log only says what it saw
        return [f"config {config}: not readable ({describe_error(e)})"]
    wanted = []
    for section, readers in SECTIONS.items():
        for reader in re.split(r"[,;]", readers):
            words = reader.split()
            role_of = re.search(r"--role (\w+)", reader)
            if words and words[0] == command and (role_of is None or role_of.group(1) == role):
                wanted.append(section)
                break
    head = f"config {config}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    if wanted:
        wanted.append("executor")  # every command with --config configures its workers from it
        names = [s for s in wanted if s in data]
        head += f"; sections read: {', '.join(wanted)}"
    else:
        names = sorted(data)
        head += "; the sections this command reads are not listed (asrdistill.config.SECTIONS): all follow"
    return [head] + [f"config [{s}] {json.dumps(data[s], sort_keys=True, default=str)}" for s in names]


@contextlib.contextmanager
def command_log(
    out: str | os.PathLike | None,
    command: str,
    command_line: str | None = None,
    *,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    role: str | None = None,
) -> Iterator[CommandStatus]:
    """Append one command's run to ``<out>/log/<command>.log`` (``<command>.rank<N>.log`` on a DDP rank > 0).

    Starts with the command line (default: ``sys.argv``, shell-quoted), where
    and what ran, and the config sections it reads; ends with wall and CPU time
    (own and of finished child processes) and the exit status: the yielded
    :class:`CommandStatus`'s ``code``, or the error that ended the block (which
    is re-raised). ``out`` None: no file, the block just runs. A log file that
    cannot be created is a warning, not a failure of the command.
    """
    status = CommandStatus()
    if out is None:
        yield status
        return
    rank = int(os.environ.get("RANK", "0") or 0)
    path = Path(out) / "log" / (f"{command}.log" if rank == 0 else f"{command}.rank{rank}.log")
    stack = contextlib.ExitStack()
    try:
        fresh = stack.enter_context(file_log(path))
    except OSError as e:
        log.warning("%s: cannot write the log file (%s); continuing without it", path, describe_error(e))
        yield status
        return
    with stack:
        mine = [_active[path.resolve()]] if fresh else []

        def note(level: int, msg: str, *args: Any) -> None:
            _to_files(level, msg, *args, handlers=mine)

        from asrdistill import __version__

        note(logging.INFO, "command: %s", command_line or shlex.join(sys.argv))
        note(
            logging.INFO,
            "started in %s on %s, pid %d, asrdistill %s, python %s",
            os.getcwd(),
            socket.gethostname(),
            os.getpid(),
            __version__,
            sys.version.split()[0],
        )
        if config is not None or overrides:
            for line in _config_lines(config, overrides, command, role):
                note(logging.INFO, "%s", line)
        wall0, cpu0 = time.monotonic(), os.times()

        def timing() -> str:
            t = os.times()
            own = t.user + t.system - cpu0.user - cpu0.system
            kids = t.children_user + t.children_system - cpu0.children_user - cpu0.children_system
            return f"wall {time.monotonic() - wall0:.1f} s, CPU {own:.1f} s" + (
                f" (+ {kids:.1f} s in child processes)" if kids >= 0.05 else ""
            )

        try:
            yield status
        except Exception as e:
            note(logging.ERROR, "%s failed: %s", command, describe_error(e))
            note(logging.INFO, "%s ended: exit status 1 (error); %s", command, timing())
            raise
        except BaseException as e:  # Ctrl-C, SystemExit: say so, then let it end the process
            code = e.code if isinstance(e, SystemExit) else 130 if isinstance(e, KeyboardInterrupt) else 1
            note(logging.ERROR, "%s ended by %s: exit status %s; %s", command, type(e).__name__, code, timing())
            raise
        note(
            logging.INFO,
            "%s ended: exit status %s (%s); %s",
            command,
            status.code or 0,
            "failure" if status.code else "success",
            timing(),
        )


# --------------------------------------------------------------------------- progress


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("ASRDISTILL_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class Progress:
    """A tqdm bar on a terminal; elsewhere periodic one-line log records (see :func:`progress`).

    Supports what the code uses of tqdm: ``update``, ``set_postfix``,
    ``set_postfix_str``, ``set_description``, ``close``, ``n``/``total``, use as
    a context manager and iteration over the wrapped iterable.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: float | None = None,
        desc: str | None = None,
        unit: str = "it",
        initial: float = 0,
        disable: bool = False,
        unit_scale: bool = False,
        leave: bool | None = True,
        interval: float | None = None,
        **tqdm_kwargs: Any,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.disable, self.unit_scale, self.leave = disable, unit_scale, leave
        self.interval = _interval() if interval is None else interval
        self.postfix = ""
        self.bar = None
        self._closed = disable
        self._lines = 0
        self._start = self._last = time.monotonic()
        if not disable and sys.stderr is not None and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale, leave=leave, **tqdm_kwargs
            )

    # -- tqdm's interface
    def update(self, n: float = 1) -> None:
        if self._closed:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)
        if self.bar is not None:
            self.bar.set_postfix_str(s, refresh=refresh)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())
        if self.bar is not None:
            self.bar.set_postfix(ordered_dict, refresh=refresh, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc, refresh=refresh)

    def close(self, _stopped: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        # a transient bar (leave=False) that ended before its first periodic line leaves no line either
        if self.leave or self._lines or _stopped:
            self._emit(time.monotonic(), final=True, stopped=_stopped)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("progress(): nothing to iterate over (give an iterable)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind: type | None, *exc: Any) -> None:
        self.close(_stopped=kind is not None)

    # -- the log line
    def _count(self, x: float) -> str:
        if self.unit_scale:
            from tqdm import tqdm

            return tqdm.format_sizeof(x)
        return f"{x:g}" if isinstance(x, float) and not x.is_integer() else f"{int(x)}"

    def line(self, now: float | None = None, final: bool = False, stopped: bool = False) -> str:
        """``desc: done/total unit (pct%) in elapsed, rate unit/s, eta ... [postfix]``."""
        from tqdm import tqdm

        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        unit = self.unit.strip()
        done = self._count(self.n) + (f"/{self._count(self.total)}" if self.total else "")
        parts = [
            f"{self.desc + ': ' if self.desc else ''}{done} {unit}"
            + (f" ({100.0 * self.n / self.total:.0f}%)" if self.total else "")
            + f" in {tqdm.format_interval(elapsed)}",
            f"{self._count(rate) if self.unit_scale else f'{rate:.3g}'} {unit}/s",
        ]
        if self.total and not final and rate > 0 and self.n < self.total:
            parts.append(f"eta {tqdm.format_interval((self.total - self.n) / rate)}")
        return (
            ", ".join(parts)
            + (f" [{self.postfix}]" if self.postfix else "")
            + (" (stopped by an error)" if stopped else "")
        )

    def _emit(self, now: float, final: bool = False, stopped: bool = False) -> None:
        self._lines += 1
        text = self.line(now, final, stopped)
        if self.bar is None:
            _progress_log.info("%s", text)
        else:  # the terminal has the bar: the line goes to the command's log files only
            _to_files(logging.INFO, "%s", text, name=_progress_log.name)


def progress(
    iterable: Iterable | None = None,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    initial: float = 0,
    disable: bool = False,
    **kwargs: Any,
) -> Progress:
    """``tqdm(...)`` with the same arguments, but a bar only where stderr is a terminal.

    Elsewhere (stderr redirected to a file) the progress is one ``logging``
    record (logger ``asrdistill.progress``) at most every ``interval`` seconds
    (default: ``$ASRDISTILL_PROGRESS_INTERVAL`` or 30) and a final one, so it
    lands in the command's log file and a redirected log has no bar redraws.
    ``disable=True`` shows and logs nothing.
    """
    return Progress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, **kwargs)
