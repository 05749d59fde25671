"""Fuzzing a run's meta (issue 26): many malformed ``models/<category>_meta.json`` through every
command that reads one: -c predict, -c calibrate, -c export, -c test and `Detector.from_run`.
Each must end in a clean one-line TransFusionError naming the file (exit 2 for the command line)
or, where the damaged meta is still valid, in a correct run: never a traceback.

Which metas are valid is said here, from the issue's words (types, ranges: the image size a
multiple of 32 in 32..2048, T in 3..1000, thresholds finite, depth ranges with gmin < gmax,
calibration records with their keys), not taken from the code under test. The command line gets
only the malformed ones (they are refused before the network is loaded, in milliseconds); the
Python API gets every one, and where it accepts a meta its settings must be the meta's.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import transfusion
from data.catalog import DATASETS
from data.perlin import MAX_IMAGE_SIZE
from models.unet import UNetConfig
from tests.fixtures.fuzzing import fuzz
from tests.fixtures.helpers import cli
from tests.utils.run.test_meta import base, one_line_refusal
from utils.core.errors import TransFusionError

DELETE = object()  # the key is removed instead of given a value

# Values a stranger's file may hold: every JSON kind, the numbers, NaN and ±inf (Python's
# json reads them), integers beyond a float, strings and nesting.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from([1e12, -32, 0, 31, 33, 64, 2048, 2080, 1e15, -5, 2, 3, 1001, "abc", "x",
                                           "", 10**400, 0.5, 1, -1.0, 1e308]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)

TOP_KEYS = ("unet", "img_size", "diffusion_num_steps", "dataset", "depth_norm", "epoch", "seed", "fg_masks",
            "holdout", "f1_threshold", "f1_schedule", "map_range", "calibration", "a key of a later version")
CALIBRATION_KEYS = ("threshold", "target_fpr", "confidence", "n", "r", "confidence_reached", "images_needed",
                    "enough", "schedule", "images_from", "scores_file", "written")
UNET_KEYS = ("mode", "n_channels", "ch_mults", "attn", "group_conv", "n_blocks")


# ----------------------------------------------------------------------------- what is valid


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond any float
        return False


def _pair(v: Any, strict: bool) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(map(_finite, v)) and \
        (v[0] < v[1] if strict else v[0] <= v[1]) and math.isfinite(float(v[1]) - float(v[0]))


def _schedule(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"eval_steps", "early_stop"} and \
        all(x is None or (_int(x) and x >= 1) for x in v.values())


def _fraction(v: Any, closed: bool = False) -> bool:
    return _finite(v) and (0 <= v <= 1 if closed else 0 < v < 1)


def _calibration(c: Any) -> bool:
    required = ("threshold", "target_fpr", "confidence", "n", "r", "confidence_reached", "images_needed", "enough")
    if not isinstance(c, dict) or any(k not in c for k in required):
        return False
    return (_finite(c["threshold"]) and _fraction(c["target_fpr"]) and _fraction(c["confidence"])
            and _fraction(c["confidence_reached"], closed=True) and _int(c["n"]) and c["n"] >= 1
            and _int(c["r"]) and 1 <= c["r"] <= c["n"] and _int(c["images_needed"]) and c["images_needed"] >= 1
            and isinstance(c["enough"], bool) and (c.get("schedule") is None or _schedule(c["schedule"]))
            and all(isinstance(c[k], str) for k in ("images_from", "scores_file", "written") if k in c))


def _unet(u: Any) -> bool:
    """A valid network: the UNetConfig fields, of their types, that UNetConfig itself accepts."""
    if not isinstance(u, dict) or not set(u) <= set(UNET_KEYS):
        return False
    kinds = {"mode": lambda x: isinstance(x, str), "n_channels": lambda x: _int(x) and x >= 1,
             "n_blocks": lambda x: _int(x) and x >= 1,
             "ch_mults": lambda x: isinstance(x, list) and all(map(_int, x)),
             "attn": lambda x: isinstance(x, list) and all(isinstance(b, bool) for b in x),
             "group_conv": lambda x: isinstance(x, list) and all(isinstance(b, bool) for b in x)}
    if not all(kinds[k](v) for k, v in u.items()):
        return False
    try:
        UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in u.items()})
    except ValueError:
        return False
    return True


def _plain_name(n: Any) -> bool:
    return isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\\" not in n and "\0" not in n


def _holdout(h: Any) -> bool:
    if not isinstance(h, dict) or "count" not in h or "files" not in h:
        return False
    count, files = h["count"], h["files"]
    return (_int(count) and count >= 1 and isinstance(files, list) and len(files) == count
            and all(map(_plain_name, files)) and ("of" not in h or (_int(h["of"]) and h["of"] > count))
            and ("folder" not in h or isinstance(h["folder"], str)))


RULES = {
    "unet": _unet,
    "img_size": lambda v: _int(v) and v % 32 == 0 and 32 <= v <= MAX_IMAGE_SIZE,
    "diffusion_num_steps": lambda v: _int(v) and 3 <= v <= 1000,
    "dataset": lambda v: v is None or v in DATASETS,
    "depth_norm": lambda v: v is None or _pair(v, strict=True),
    "epoch": lambda v: v is None or (_int(v) and v >= 0),
    "seed": lambda v: v is None or (_int(v) and v >= 0),
    "fg_masks": lambda v: v is None or isinstance(v, dict),
    "holdout": lambda v: v is None or _holdout(v),
    "f1_threshold": lambda v: v is None or _finite(v),
    "f1_schedule": lambda v: v is None or _schedule(v),
    "map_range": lambda v: v is None or _pair(v, strict=False),
    "calibration": lambda v: v is None or _calibration(v),
}


def valid(meta: dict[str, Any]) -> bool:
    return all(rule(meta[key]) for key, rule in RULES.items() if key in meta)


# ----------------------------------------------------------------------------- the damage


@dataclass
class Damaged:
    """A damaged meta: the bytes written, the key changed (None: the whole text) and whether the
    meta it holds is still valid (None: the text is not a JSON object at all)."""

    text: bytes
    key: str | None
    meta: dict[str, Any] | None

    @property
    def valid(self) -> bool:
        return self.meta is not None and valid(self.meta)


@st.composite
def damaged(draw: st.DrawFn, good: dict[str, Any]) -> Damaged:
    kind = draw(st.sampled_from(["top", "top", "calibration", "unet", "text"]))
    if kind == "text":
        text = _good_text(good)
        broken = draw(st.one_of(
            st.integers(33, 100_000).map(lambda n: "[" * n + "]" * n),
            st.integers(33, 3000).map(lambda n: '{"a": ' * n + "1" + "}" * n),
            st.sampled_from(["", " ", "null", "1", '"x"', "true", "[]", "NaN", "[{}]", "{", "}", '{"img_size": }']),
            st.integers(0, len(text) - 2).map(lambda i: text[:i]),  # cut short (text[:-1] would still be JSON)
            st.integers(4300, 6000).map(lambda n: '{"img_size": ' + "9" * n + "}"),
        ))
        raw = draw(st.one_of(st.just(broken.encode()), st.binary(max_size=40).map(lambda b: b"\xff" + b)))
        return Damaged(raw, None, None)
    meta = json.loads(json.dumps(good))
    value = DELETE if draw(st.integers(0, 5)) == 0 else draw(VALUES)
    if kind == "top":
        key = draw(st.sampled_from(TOP_KEYS))
        target, where = meta, key
    else:
        key = kind
        target, where = meta[kind], draw(st.sampled_from(CALIBRATION_KEYS if kind == "calibration" else UNET_KEYS))
    if value is DELETE:
        target.pop(where, None)
    else:
        target[where] = value
    return Damaged(json.dumps(meta).encode(), key, meta)


def _good_text(good: dict[str, Any]) -> str:
    return json.dumps(good, indent=2)


def _meta_path(logs: Path) -> Path:
    return logs / "r" / "models" / "bottle_meta.json"


# ----------------------------------------------------------------------------- the commands

ARGV = {
    "predict": lambda data: ["-c", "predict", "--input", str(data / "bottle" / "test" / "good" / "000.png")],
    "calibrate": lambda data: ["-c", "calibrate", "--target-fpr", "0.5", "--calib-path",
                               str(data / "bottle" / "test" / "good")],
    "export": lambda data: ["-c", "export"],
    "test": lambda data: ["-c", "test", "-d", str(data)],
}


@pytest.fixture
def good_meta(run_copy) -> dict[str, Any]:
    return json.loads(_meta_path(run_copy[1]).read_text())


@pytest.mark.slow  # 350 command lines each
@pytest.mark.parametrize("command", ARGV)
def test_every_malformed_meta_is_one_line_for_the_command_line(run_copy, good_meta, command):
    data, logs = run_copy
    meta_path = _meta_path(logs)
    argv = [*ARGV[command](data), *base(logs)]
    refused = set()

    @fuzz(350)
    @given(damage=damaged(good_meta))
    def check(damage: Damaged) -> None:
        assume(not damage.valid)  # valid ones run in full: the API test below takes them
        meta_path.write_bytes(damage.text)
        r = cli(*argv, check=False)
        line = one_line_refusal(r.returncode, r.stderr, str(meta_path))
        if damage.key is not None:
            assert f'"{damage.key}"' in line, line
        refused.add(damage.text)

    check()
    assert len(refused) >= 250, len(refused)  # a few hundred different malformed metas
    assert not (logs / "r" / "models" / "bottle.onnx").exists()  # nothing was exported from a damaged meta


def test_every_damaged_meta_is_refused_or_read_as_it_says_by_the_api(run_copy, good_meta):
    data, logs = run_copy
    meta_path = _meta_path(logs)
    accepted, refused = [], set()

    @fuzz(400)
    @given(damage=damaged(good_meta))
    def check(damage: Damaged) -> None:
        meta_path.write_bytes(damage.text)
        try:
            det = transfusion.Detector.from_run(logs / "r", "bottle", device="cpu")
        except TransFusionError as exc:
            msg = str(exc)
            assert "\n" not in msg and str(meta_path) in msg, msg
            assert not damage.valid, f"a valid meta was refused: {msg}"
            refused.add(damage.text)
            return
        assert damage.valid, f"accepted: {damage.text[:200]!r}"
        meta = damage.meta
        assert det.image_size == meta.get("img_size", 256) and det.process.num_steps == meta.get(
            "diffusion_num_steps", 20)  # the paper's values where the meta has none (released weights)
        cal, f1 = meta.get("calibration"), meta.get("f1_threshold")
        want = ("calibrated", cal["threshold"]) if cal else ("F1-max", f1) if f1 is not None else None
        assert (det.threshold and (det.threshold.kind, det.threshold.value)) == (want or None)
        accepted.append(damage.key)

    check()
    print(f"{len(accepted)} accepted, {len(refused)} refused")
    assert len(accepted) >= 20 and len(refused) >= 250, (len(accepted), len(refused))  # both sides exercised
