"""Lock files someone else wrote (issue 26, item 3): a lock that is not one this program writes is
refused in one line that names it and says how to remove it; a pid that no process can have
(-1, 0, "abc", 2**70) is never reported as "still running"."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures.fuzzing import clean_error, fuzz
from utils.core.errors import TransFusionError
from utils.run.locks import LockHeld, LockInfo, acquire, held, release


def _lock(path: Path, **fields) -> str:
    text = json.dumps({"pid": 1, "host": socket.gethostname(), "started": "2026-01-01T00:00:00",
                       "purpose": "-c train -r r --category bottle", "token": "t", **fields})
    path.write_text(text)
    return text


@pytest.mark.parametrize("pid", ["abc", -1, 0, 2**70, 1.5, True, None, [1]])
def test_a_lock_with_an_impossible_pid_is_not_a_lock_of_ours(tmp_path, pid):
    lock = tmp_path / "bottle.train.lock"
    text = _lock(lock, pid=pid)
    with pytest.raises(LockHeld) as info:
        acquire(lock, "-c train", note=lambda line: None)
    msg = clean_error(info.value, lock)
    assert "not a lock this program wrote" in msg and "pid is" in msg and f"rm '{lock}'" in msg
    assert "still running" not in msg
    assert lock.read_text() == text  # left alone for the user to judge


def test_a_lock_of_a_process_that_is_gone_is_still_taken_over(tmp_path):
    """The control: a well-formed lock of a pid that no longer runs is stale and taken over."""
    lock = tmp_path / "bottle.train.lock"
    gone = 2**22 + 1  # above Linux's largest pid_max: no process has it
    _lock(lock, pid=gone)
    notes = []
    with held(lock, "-c train", note=notes.append) as info:
        assert info.pid == os.getpid() and json.loads(lock.read_text())["token"] == info.token
    assert notes and f"pid {gone}" in notes[0] and "no longer running" in notes[0]
    assert not lock.exists()


def test_a_lock_nested_deep_or_not_an_object_is_one_line(tmp_path):
    lock = tmp_path / "x.lock"
    for text in ("[" * 100_000 + "]" * 100_000, "[1, 2]", '"pid"', "null"):
        lock.write_text(text)
        with pytest.raises(TransFusionError) as info:
            acquire(lock, "-c test", note=lambda line: None)
        assert "not a lock this program wrote" in clean_error(info.value, lock)
    release(lock, LockInfo(os.getpid(), socket.gethostname(), "now", "x", "mine"))  # not ours: left alone
    assert lock.exists()


GOOD = {"pid": 2**22 + 1, "host": socket.gethostname(), "started": "2026-01-01T00:00:00", "purpose": "-c test",
        "token": "t", "proc_start": None}
ANY = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
                st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@fuzz(150)
@given(changes=st.dictionaries(st.sampled_from([*GOOD, "other"]), ANY, min_size=1, max_size=3),
       dropped=st.sets(st.sampled_from(list(GOOD)), max_size=2))
def test_any_lock_content_is_taken_over_or_refused_in_one_line(tmp_path, changes, dropped):
    """A lock this program would write (of a pid no process has), with a few fields changed or
    dropped: taken over when it is still a lock of ours, else refused in one line; a pid no
    process can have is never "still running"."""
    fields = {k: v for k, v in {**GOOD, **changes}.items() if k not in dropped}
    lock = tmp_path / "f.lock"
    lock.write_text(json.dumps(fields))
    try:
        info = acquire(lock, "-c test", note=lambda line: None)
    except TransFusionError as exc:
        msg = clean_error(exc, lock)
        pid = fields.get("pid")
        if not (isinstance(pid, int) and not isinstance(pid, bool) and 1 <= pid < 2**31):
            assert "still running" not in msg, msg
        return
    assert json.loads(lock.read_text())["token"] == info.token
    release(lock, info)
    assert not lock.exists()
