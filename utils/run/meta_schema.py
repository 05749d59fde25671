"""What a category's meta (``models/<category>_meta.json``) may hold, checked where it is read
(utils/run/meta.read_meta), so a run folder from a stranger ends in one line naming the file,
the key, what was expected and the fix, never in a traceback from deep inside a command.

Each key has one rule and one writer: -c train writes the network, image size, T, dataset, depth
range, epoch, seed, foreground masks and held-out images (-c train_multiclass: its categories,
per_category entries and the class embedding's file); -c test its F1-max threshold, the step
schedule it was made with and the heat-map scale; -c calibrate its calibration record
(utils/inference/calibrate.py). Keys this version does not know are left alone; ``null`` is
"absent" for the keys a run may lack (released weights, a run never tested or calibrated).
"""
from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from data.catalog import DATASETS
from data.perlin import SIZE_RULE, is_valid_size
from models.transparency import MAX_STEPS, MIN_STEPS, check_num_steps
from models.unet import UNetConfig
from utils.core.errors import TransFusionError


class BadValue(Exception):
    """A value that breaks its rule: where it is (keys from the top), the value, what was expected."""

    def __init__(self, where: tuple[str, ...], value: Any, expected: str) -> None:
        super().__init__(expected)
        self.where, self.value, self.expected = where, value, expected

    def line(self, path: Path | str, fix: str) -> str:
        """The one-line message: file, key, value, what was expected, the fix."""
        key = " > ".join(json.dumps(k) for k in self.where)
        return f"{path}: {key} is {shown(self.value)}, expected {self.expected}; {fix}"


def shown(value: Any, limit: int = 48) -> str:
    """A value as JSON, on one line and short (a hostile value may be long)."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- the value rules


def _need(ok: bool, where: tuple[str, ...], value: Any, expected: str) -> None:
    if not ok:
        raise BadValue(where, value, expected)


def is_int(v: Any) -> bool:
    """An integer (JSON's true/false are not)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_finite_number(v: Any) -> bool:
    """A number that is not NaN or ±inf and fits a float (an integer of 400 digits does not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_int(where: tuple[str, ...], v: Any, least: int) -> int:
    _need(is_int(v) and v >= least, where, v, f"an integer >= {least}")
    return v


def check_fraction(where: tuple[str, ...], v: Any, closed: bool = False) -> float:
    """A number in (0, 1), or [0, 1] when ``closed``."""
    inside = is_finite_number(v) and (0 <= v <= 1 if closed else 0 < v < 1)
    _need(inside, where, v, f"a number in {'[0, 1]' if closed else '(0, 1)'}")
    return float(v)


def check_range(where: tuple[str, ...], v: Any, strict: bool, what: str) -> tuple[float, float]:
    """[lo, hi]: two finite numbers with lo < hi (lo <= hi unless ``strict``) and a finite span."""
    ok = isinstance(v, list) and len(v) == 2 and all(is_finite_number(x) for x in v)
    if ok:
        lo, hi = float(v[0]), float(v[1])
        ok = (lo < hi if strict else lo <= hi) and math.isfinite(hi - lo)
    _need(ok, where, v, f"[{'gmin, gmax' if strict else 'lo, hi'}]: two finite numbers with "
                        f"{'gmin < gmax' if strict else 'lo <= hi'} ({what})")
    return float(v[0]), float(v[1])


def check_schedule(where: tuple[str, ...], v: Any) -> dict[str, int | None]:
    """A step schedule as models/scoring.ScoringOptions.schedule() writes it."""
    expected = '{"eval_steps": null or an integer >= 1, "early_stop": null or an integer >= 1}'
    _need(isinstance(v, dict) and set(v) == {"eval_steps", "early_stop"}, where, v, expected)
    for k in ("eval_steps", "early_stop"):
        _need(v[k] is None or (is_int(v[k]) and v[k] >= 1), (*where, k), v[k], "null or an integer >= 1")
    return v


def check_string(where: tuple[str, ...], v: Any) -> str:
    _need(isinstance(v, str), where, v, "a string")
    return v


_UNET_FIELDS = {f.name for f in fields(UNetConfig)}


def unet_config_of(where: tuple[str, ...], v: Any) -> UNetConfig:
    """The `UNetConfig` a JSON object describes (its fields; lists for the per-level tuples)."""
    expected = f"an object of UNetConfig fields ({', '.join(sorted(_UNET_FIELDS))}) that describes a valid network"
    _need(isinstance(v, dict) and set(v) <= _UNET_FIELDS, where, v, expected)
    _need(isinstance(v.get("mode", "rgb"), str), (*where, "mode"), v.get("mode"), "a string")
    for k in ("n_channels", "n_blocks"):
        if k in v:
            check_int((*where, k), v[k], 1)
    for k, kind in (("ch_mults", is_int), ("attn", lambda x: isinstance(x, bool)),
                    ("group_conv", lambda x: isinstance(x, bool))):
        if k in v:
            items = "integers" if k == "ch_mults" else "true/false values"
            _need(isinstance(v[k], list) and all(kind(x) for x in v[k]), (*where, k), v[k], f"a list of {items}")
    try:
        return UNetConfig(**{k: tuple(x) if isinstance(x, list) else x for k, x in v.items()})
    except ValueError as exc:
        raise BadValue(where, v, f"a valid network ({exc})") from None


def check_image_size(where: tuple[str, ...], v: Any) -> int:
    _need(is_valid_size(v), where, v, f"an integer, {SIZE_RULE} (the image size the run was trained at)")
    return v


def check_steps(where: tuple[str, ...], v: Any) -> int:
    try:
        return check_num_steps(v)
    except ValueError:
        raise BadValue(where, v, f"an integer in {MIN_STEPS}..{MAX_STEPS} (T, the diffusion steps the run was "
                                 f"trained with)") from None


def _plain_name(n: Any) -> bool:
    """A file name alone: no folder part, so it cannot point outside the folder it is looked up in."""
    return isinstance(n, str) and n not in ("", ".", "..") and Path(n).name == n and "\\" not in n and "\0" not in n


def check_holdout(where: tuple[str, ...], v: Any) -> dict[str, Any]:
    """-c train --holdout K: {"count": K, "of": n, "files": K file names, "folder": the folder}."""
    _need(isinstance(v, dict) and {"count", "files"} <= set(v), where, v,
          'an object with "count", "of", "files" and "folder" (what -c train --holdout left out)')
    count = check_int((*where, "count"), v["count"], 1)
    files = v["files"]
    _need(isinstance(files, list) and len(files) == count and all(_plain_name(n) for n in files),
          (*where, "files"), files, f"a list of {count} file names without folders")
    if "of" in v:
        check_int((*where, "of"), v["of"], count + 1)
    if "folder" in v:
        check_string((*where, "folder"), v["folder"])
    return v


# What -c calibrate writes (utils/inference/calibrate.py): Calibration.as_dict() and where from.
_CALIBRATION_REQUIRED = ("threshold", "target_fpr", "confidence", "n", "r", "confidence_reached", "images_needed",
                         "enough")


def check_calibration(where: tuple[str, ...], v: Any) -> dict[str, Any]:
    """A calibration record: the threshold, A, G, n, r, the confidence reached, the images needed,
    whether n was enough; optionally the schedule, where the images came from and when."""
    missing = [k for k in _CALIBRATION_REQUIRED if not isinstance(v, dict) or k not in v]
    _need(isinstance(v, dict) and not missing, where, v,
          f"a calibration record with {', '.join(_CALIBRATION_REQUIRED)}"
          + (f" (missing: {', '.join(missing)})" if isinstance(v, dict) else ""))
    _need(is_finite_number(v["threshold"]), (*where, "threshold"), v["threshold"], "a finite number")
    check_fraction((*where, "target_fpr"), v["target_fpr"])
    check_fraction((*where, "confidence"), v["confidence"])
    check_fraction((*where, "confidence_reached"), v["confidence_reached"], closed=True)
    n = check_int((*where, "n"), v["n"], 1)
    r = check_int((*where, "r"), v["r"], 1)
    _need(r <= n, (*where, "r"), r, f"an integer in 1..n = 1..{n} (the threshold is the r-th largest of n scores)")
    check_int((*where, "images_needed"), v["images_needed"], 1)
    _need(isinstance(v["enough"], bool), (*where, "enough"), v["enough"], "true or false")
    if v.get("schedule") is not None:
        check_schedule((*where, "schedule"), v["schedule"])
    for k in ("images_from", "scores_file", "written"):
        if k in v:
            check_string((*where, k), v[k])
    return v


# ----------------------------------------------------------------------------- the meta's keys

_BY_TRAINING = ("restore the file from where the run came from, or delete it to use the weights alone with the "
                "flags' --img-size and --diffusion-num-steps")


def _by_writer(key: str, command: str) -> str:
    return f'delete the key "{key}" from the file ({command} writes it again)'


# key -> (its rule, the fix); None values are "absent" for every key but the network's own.
_RULES: dict[str, tuple[Callable[[tuple[str, ...], Any], Any], str]] = {
    "unet": (unet_config_of, _BY_TRAINING),
    "img_size": (check_image_size, _BY_TRAINING),
    "diffusion_num_steps": (check_steps, _BY_TRAINING),
    "dataset": (lambda w, v: _need(isinstance(v, str) and v in DATASETS, w, v, f"one of {', '.join(DATASETS)}"), _BY_TRAINING),
    "depth_norm": (lambda w, v: check_range(w, v, True, "the training set's depth range"), _BY_TRAINING),
    "epoch": (lambda w, v: check_int(w, v, 0), _BY_TRAINING),
    "seed": (lambda w, v: check_int(w, v, 0), _BY_TRAINING),
    "fg_masks": (lambda w, v: _need(isinstance(v, dict), w, v, "an object (which foreground masks training used)"),
                 _BY_TRAINING),
    "holdout": (check_holdout, _BY_TRAINING),
    "f1_threshold": (lambda w, v: _need(is_finite_number(v), w, v, "a finite number"),
                     _by_writer("f1_threshold", "-c test")),
    "f1_schedule": (check_schedule, _by_writer("f1_schedule", "-c test")),
    "map_range": (lambda w, v: check_range(w, v, False, "the heat-map scale of -c test"),
                  _by_writer("map_range", "-c test")),
    "calibration": (check_calibration, _by_writer("calibration", "-c calibrate")),
}
_NOT_NULLABLE = frozenset({"unet", "img_size", "diffusion_num_steps"})
# What a multi-class network's meta keeps per category (docs/method.md §10): these keys' own rules.
_PER_CATEGORY_KEYS = ("fg_masks", "holdout", "f1_threshold", "f1_schedule", "map_range", "calibration")


def check_categories(where: tuple[str, ...], v: Any) -> list[str]:
    """A multi-class network's categories: distinct names without folders, at least one."""
    _need(isinstance(v, list) and v and all(_plain_name(c) for c in v) and len(set(v)) == len(v), where, v,
          "a list of distinct category names (the union -c train_multiclass trained on)")
    return v


def check_per_category(where: tuple[str, ...], v: Any) -> dict[str, Any]:
    """{category: {key: value}} with each key under its own rule."""
    _need(isinstance(v, dict) and all(_plain_name(c) for c in v), where, v,
          "an object of category names, each an object of that category's entries")
    for cat, entries in v.items():
        _need(isinstance(entries, dict), (*where, cat), entries, "an object")
        for key in _PER_CATEGORY_KEYS:
            if entries.get(key) is not None:
                _RULES[key][0]((*where, cat, key), entries[key])
    return v


def check_class_embedding(where: tuple[str, ...], v: Any) -> dict[str, Any]:
    """--class-embedding: {"file": the side file's name, "categories": its rows' categories}."""
    _need(isinstance(v, dict) and _plain_name(v.get("file")), where, v,
          'an object with "file" (a file name without folders) and "categories"')
    check_categories((*where, "categories"), v.get("categories"))
    return v


_RULES.update({
    "categories": (check_categories, _BY_TRAINING),
    "per_category": (check_per_category, 'restore the file, or delete the key "per_category" (-c test_multiclass '
                                         'and -c calibrate write it again)'),
    "class_embedding": (check_class_embedding, _BY_TRAINING),
})


def check_meta(meta: Any, path: Path | str) -> dict[str, Any]:
    """``meta`` as read from ``path`` if every key it holds keeps its rule; else TransFusionError,
    one line naming the file, the key, the value, what was expected and the fix."""
    if not isinstance(meta, dict):
        kind = {list: "an array", str: "a string", bool: "true/false", type(None): "null"}.get(type(meta), "a number")
        raise TransFusionError(f"{path} holds {kind}, not the JSON object of a run's meta; delete it to use the "
                               f"weights alone")
    for key, (rule, fix) in _RULES.items():
        if key not in meta or (meta[key] is None and key not in _NOT_NULLABLE):
            continue
        try:
            rule((key,), meta[key])
        except BadValue as bad:
            raise TransFusionError(bad.line(path, fix)) from None
    return meta
