"""A lock file that says who holds it: one process owns a run's category while it trains or
writes results (utils/run/paths.py says where the locks live).

The file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+), holding
JSON: pid, host, start time, what it is for and a random token. A lock whose pid is no longer
running on this host is stale (the holder was killed) and is taken over, with a note; a lock
from another host is never broken: its holder may still be running there, so the one-line error
says how to remove it by hand.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Callable, Iterator

from utils.core.errors import TransFusionError
from utils.core.json_files import BadJsonFile, load_json_file
from utils.run.meta_schema import is_int, shown


@dataclass(frozen=True)
class LockInfo:
    """What a lock file holds."""

    pid: int
    host: str
    started: str  # local time, ISO 8601
    purpose: str
    token: str
    proc_start: str | None = None  # the process's start tick (Linux), so a reused pid is not taken for the holder

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} ({self.purpose}, since {self.started})"


class LockHeld(TransFusionError):
    """The lock belongs to a running process, or to one on another host (``holder``)."""

    def __init__(self, message: str, holder: LockInfo | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def _process_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks); None where /proc is absent."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _running(info: LockInfo) -> bool:
    """Whether the holder (on this host) still runs."""
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    now = _process_start(info.pid)
    return info.proc_start is None or now is None or now == info.proc_start


# pid_t is a signed 32-bit integer: a larger "pid" is no process (os.kill would overflow).
_PID_MAX = 2**31 - 1
_TEXT_MAX = 1000  # host, start time, purpose, token: what a message may quote of a stranger's file


def _problem(fields: object) -> str | None:
    """Why ``fields`` are not what `acquire` writes, or None."""
    if not isinstance(fields, dict):
        return f"it holds {shown(fields)}, not an object"
    names = {f.name for f in dataclass_fields(LockInfo)}
    missing = sorted({"pid", "host", "started", "purpose", "token"} - set(fields))
    if missing or set(fields) - names:
        return f"its keys are {sorted(fields)}, expected {sorted(names)}"
    pid = fields["pid"]
    if not (is_int(pid) and 1 <= pid <= _PID_MAX):
        return f"pid is {shown(pid)}, expected a process id (an integer in 1..{_PID_MAX})"
    for k in ("host", "started", "purpose", "token", "proc_start"):
        v = fields.get(k)
        if not (v is None and k == "proc_start") and not (isinstance(v, str) and v.isprintable()
                                                          and len(v) <= _TEXT_MAX):
            return f"{k} is {shown(v)}, expected a line of text"
    return None


def _read(path: Path) -> LockInfo | None:
    """The holder, or None when the file is gone; an unreadable file is reported as such."""
    for _ in range(20):  # a holder that has just created the file may not have written it yet
        try:
            fields = load_json_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransFusionError(f"cannot read the lock {path} ({exc.strerror or exc}); "
                                   f"if no run uses it, remove it: rm '{path}'") from None
        except BadJsonFile:
            time.sleep(0.05)
            continue
        problem = _problem(fields)
        if problem is None:
            return LockInfo(**fields)
        raise LockHeld(f"{path} is not a lock this program wrote ({problem}); if no run uses it, remove it: "
                       f"rm '{path}'")
    raise LockHeld(f"{path} is not a lock this program wrote; if no run uses it, remove it: rm '{path}'")


def _create(path: Path, info: LockInfo) -> bool:
    """Create the lock file holding ``info``; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise TransFusionError(f"cannot create the lock {path} ({exc.strerror or exc}); "
                               f"choose another --log-path") from None
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(info), f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(path: Path, stale: LockInfo) -> None:
    """Move a stale lock aside, unless someone else took it over first (then put it back)."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process took it over first
        return
    moved = _read(aside)
    if moved is not None and moved.token != stale.token:
        # a live lock created after we read the stale one: put it back, never over a newer one
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def _try_acquire(p: Path, me: LockInfo, note: Callable[[str], None]) -> LockInfo:
    for _ in range(5):
        if _create(p, me):
            return me
        holder = _read(p)
        if holder is None:
            continue  # released in between: try again
        if holder.host != me.host:
            raise LockHeld(f"{p} is held by {holder.describe()}; this host cannot tell whether that run "
                           f"still runs: if it does not, remove the lock: rm '{p}'", holder)
        if _running(holder):
            raise LockHeld(f"{p} is held by {holder.describe()}, which is still running; wait for it "
                           f"to finish or use another -r/--run-name", holder)
        note(f"note: taking over the lock {p} of {holder.describe()}, which is no longer running")
        _take_over(p, holder)
    raise LockHeld(f"could not take the lock {p}: other processes keep taking it; try again")


def acquire(path: str | os.PathLike, purpose: str, note: Callable[[str], None] = print,
            wait_s: float = 0.0) -> LockInfo:
    """Take the lock at ``path`` (its folder is created), waiting up to ``wait_s`` seconds for a
    holder to let go; else raise `LockHeld` naming the holder."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransFusionError(f"cannot create {p.parent} for the lock {p.name} ({exc.strerror or exc}); "
                               f"choose another --log-path") from None
    me = LockInfo(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S"), purpose,
                  uuid.uuid4().hex, _process_start(os.getpid()))
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            return _try_acquire(p, me, note)
        except LockHeld as exc:
            if time.monotonic() >= deadline:
                raise
            if not waiting and exc.holder is not None:
                note(f"note: waiting for {exc.holder.describe()} to release {p}")
                waiting = True
            time.sleep(0.2)


def release(path: str | os.PathLike, info: LockInfo) -> None:
    """Remove the lock if it is still ours (a lock taken over by someone else is left alone)."""
    p = Path(path)
    try:
        holder = _read(p)
    except TransFusionError:
        return
    if holder is not None and holder.token == info.token:
        p.unlink(missing_ok=True)


@contextmanager
def held(path: str | os.PathLike, purpose: str, note: Callable[[str], None] = print,
         wait_s: float = 0.0) -> Iterator[LockInfo]:
    """``with held(path, "-c train ..."):`` the lock is ours inside, released on the way out."""
    info = acquire(path, purpose, note, wait_s)
    try:
        yield info
    finally:
        release(path, info)
