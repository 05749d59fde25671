"""Reading a JSON side file that someone else may have written: the one parser for every file the
project reads back (a run's meta, the ONNX sidecar, lock files, cache manifests).

A released or shared run folder is downloaded from strangers, so the text is parsed defensively:
a size bound before reading, a nesting bound before parsing (``json.loads`` recurses, and an
array nested 100,000 deep would end in RecursionError), and every decoder complaint becomes
one `BadJsonFile` (a ValueError) that says what is wrong in a few words. What the values must
be is each reader's business (e.g. utils/run/meta_schema.py); this only says whether it is JSON.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

# Far above any side file the project writes (a meta with thousands of held-out file names is
# a few hundred KiB), low enough that a hostile file is refused before it is read into memory.
MAX_JSON_BYTES = 64 * 1024 * 1024
# The project's files nest 4 deep at most; far below the decoder's recursion limit.
MAX_JSON_DEPTH = 32

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class BadJsonFile(ValueError):
    """A file that is not the JSON it should be; the message is a short reason, without the path."""


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(text: str) -> Any:
    """``json.loads`` within the nesting bound; `BadJsonFile` for anything that is not JSON."""
    if nesting_depth(text) > MAX_JSON_DEPTH:
        raise BadJsonFile(f"nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable after the depth check; kept as a last line of defence
        raise BadJsonFile(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python's digit limit
        if not isinstance(exc, json.JSONDecodeError):
            raise BadJsonFile("a number with more digits than Python reads") from None
        raise BadJsonFile(f"not valid JSON: {' '.join(str(exc).split())}") from None


def load_json_file(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``; `BadJsonFile` when it is too large, not UTF-8 or not JSON, OSError
    when it cannot be read (FileNotFoundError included: the caller knows whether that is normal)."""
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_JSON_BYTES:
        raise BadJsonFile(f"{size} bytes, more than the {MAX_JSON_BYTES} a side file may have")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJsonFile(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_json(text)
