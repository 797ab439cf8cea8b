"""What keeps a long run safe from its surroundings: a scheduler's SIGTERM or a Ctrl-C, a full, over-quota or
read-only disk, a second run on the same output, a stage cache written by another layout.

Nothing here needs cleaning up after a crash: signals become an `Interrupted` exception that unwinds through the
atomic writes (a shard being written is abandoned, its temporary file removed, every finished shard kept); locks are
`flock`s, which the kernel releases when their process dies, so a lock file left by a killed run is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from influence_distillation.errors import OutputError

log = logging.getLogger(__name__)

FORMAT = 2  # the layout of stage folders, token folders and row caches; part of every cache key, checked on reuse
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only"}
LOCK = ".lock"


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised where the run was; the stage and shard progress are filled in as it unwinds."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.stage, self.progress = signum, None, None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT

    def message(self) -> str:
        where = f" during {self.stage}" if self.stage else ""
        done = f" after {self.progress[0]} of {self.progress[1]} shards" if self.progress else ""
        return f"interrupted{where}{done}; rerun the same command to resume"


_arrived: list[Interrupted] = []  # the signal being handled, kept in case C code swallows its exception


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM (how SLURM and Kubernetes preempt) and SIGINT raise `Interrupted` in the main
    thread, so the run unwinds like a Ctrl-C instead of dying without a word. A signal that lands inside C code which
    calls back into Python (numpy's `tofile` flushing its file) can come out as that code's own error; the signal
    is remembered, so the run still ends as the interruption it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        if not _arrived:
            _arrived.append(Interrupted(signum))
        raise _arrived[0]

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except BaseException as exc:
        if _arrived and exc is not _arrived[0]:
            raise _arrived[0] from exc
        raise
    finally:
        _arrived.clear()
        for number, handler in previous.items():
            signal.signal(number, handler)


def raise_if_interrupted() -> None:
    """Raise the signal that arrived even if its exception was eaten whole (it landed in a finaliser, whose errors
    Python only prints, or in code that ignores errors): called before each shard, so the run still stops."""
    if _arrived:
        raise _arrived[0]


def note_stage(exc: BaseException, stage: str, progress: tuple[int, int] | None = None) -> None:
    """Record where an interruption happened (also when it surfaced as another error); the innermost place wins."""
    interrupted = exc if isinstance(exc, Interrupted) else (_arrived[0] if _arrived else None)
    if interrupted is not None and interrupted.stage is None:
        interrupted.stage, interrupted.progress = stage, progress


def disk_problem(exc: OSError) -> str | None:
    """What a disk error means in words, or None for other errors."""
    return DISK_ERRORS.get(exc.errno)


def disk_error(path: Path, exc: OSError, needed: int | None = None, kept: str = "") -> OutputError:
    """The one-line error for a write that the disk refused: where, why, what the stage still needs, what is kept."""
    more = f"; the stage needs about {_size(needed)} more" if needed else ""
    return OutputError(f"cannot write {path}: {disk_problem(exc) or exc.strerror}{more}; free space (or make it "
                       f"writable) and rerun the same command{kept}")


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `out/.lock` while a run writes `out`: a second run on it refuses at once, naming the first."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"SelectConfig.out={str(out)!r} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK, "a+")
    try:
        if not _try_lock(handle):
            raise OutputError(f"SelectConfig.out={str(out)!r} is in use by {_holder(handle)}; wait for it to finish "
                              "or choose another SelectConfig.out")
        previous = _holder(handle, describe=False)
        if previous:
            log.info("--out %s: taking over the lock left by %s, which is no longer running", out, previous)
        _write_holder(handle, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        try:
            yield
        finally:
            _write_holder(handle, None)  # a clean exit leaves an empty lock: nothing to take over
    finally:
        with contextlib.suppress(OSError):
            handle.close()


@contextlib.contextmanager
def shard_claim(path: Path, wait: bool) -> Iterator[bool]:
    """Claim the right to write shard `path` (a `.lock` beside it), so that runs sharing a cache folder do not compute
    the same shard twice: yields False when another process holds it and `wait` is False."""
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a+") as handle:
        if wait:
            fcntl.flock(handle, fcntl.LOCK_EX)
        elif not _try_lock(handle):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_format(folder: Path, found: dict | None, what: str) -> None:
    """Refuse a cache folder whose recorded layout is not this version's (it would be read wrongly)."""
    if found is not None and found.get("format") != FORMAT:
        raise OutputError(f"{what} {folder} was written by another version of influence-distillation (layout "
                          f"{found.get('format', 1)}, this one reads {FORMAT}); delete that folder and rerun")


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return ""  # pragma: no cover


def _try_lock(handle: IO) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _holder(handle: IO, describe: bool = True) -> str:
    """Who wrote the lock file: 'process 123 on host (since 12:00:00)'."""
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        holder = {}
    if not holder:
        return "another process" if describe else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"process {holder.get('pid')} on {holder.get('host')} (since {since})"


def _write_holder(handle: IO, holder: dict | None) -> None:
    handle.seek(0)
    handle.truncate()
    if holder:
        json.dump(holder, handle)
    handle.flush()
