"""``-c submit``: a run's MVTec AD 2 submission folder, as the benchmark server takes it (docs/method.md §11).

For every scenario of the run and both private test sets: one single-channel float16 TIFF per
image at the image's own size (``anomaly_images/<obj>/<set>/<name>.tiff``) and its segmentation,
a single-channel PNG of 0 and 255 (``anomaly_images_thresholded/<obj>/<set>/<name>.png``), at the
validation threshold (mean + 3·std over the validation/good maps, the dataset authors' baseline),
with ``--threshold calibrated`` the run's calibrated one, or a number given. Every file is written
atomically; a stopped -c submit continues with the images that have no files yet. Before it
ends it checks what the server's checker checks, and says what is missing or wrong in one line.
"""
from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from tqdm import tqdm

from data.catalog import MVTEC_AD2_PRIVATE_COUNTS, MVTEC_AD2_PRIVATE_SETS
from data.discovery import find_private_images, find_validation_images, resolve_categories
from data.io import image_hw
from models.scoring import map_at_size
from utils.core.atomic import atomic_write_bytes, atomic_write_json
from utils.core.errors import TransFusionError
from utils.core.json_files import load_json_file
from utils.evaluation.native_metrics import baseline_threshold, segment
from utils.inference.detector import Detector
from utils.inference.inputs import open_detector
from utils.machine.distributed import pick_device
from utils.run.paths import MULTICLASS, RunPaths
from utils.run.thresholds import Threshold

MAPS, SEGMENTATIONS = "anomaly_images", "anomaly_images_thresholded"
_NAME = re.compile(r"\d{3}_(regular|mixed)\.png")  # the private images' names (docs/method.md §11)


def _checked_name(image: Path, suffix: str) -> str:
    """The image's name, checked: only ``NNN_regular.png`` / ``NNN_mixed.png`` name an output, so a
    stranger's file name can neither leave the submission folder nor add a file the server refuses."""
    if not _NAME.fullmatch(image.name) or not image.name.endswith(f"_{suffix}.png"):
        raise TransFusionError(f"{image}: not an MVTec AD 2 private image name (expected NNN_{suffix}.png); "
                               f"remove it from {image.parent}")
    return image.stem


def _png(segmentation: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.where(segmentation, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _tiff(anomaly_map: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, anomaly_map.astype(np.float16))
    return buf.getvalue()


def _threshold(args: argparse.Namespace, det: Detector, paths: RunPaths, category: str) -> float | Threshold:
    """The threshold of the segmentations: the run's calibrated one (its own rule, score > value), or
    the validation threshold (map >= value), recorded in the run folder so that a resumed submit
    cuts every PNG of a scenario at the same value."""
    if isinstance(args.threshold, float):
        return args.threshold
    if args.threshold == "calibrated":
        if det.threshold is None or det.threshold.kind != "calibrated":
            raise TransFusionError(f"{category}: --threshold calibrated needs -c calibrate -r "
                                   f"{args.run_name} --category {category} first (or use the validation threshold)")
        return det.threshold
    record_path = paths.submission_record(category)
    schedule = det.scoring.schedule()
    if record_path.exists():
        record = load_json_file(record_path)
        if isinstance(record, dict) and record.get("schedule") == schedule \
                and isinstance(record.get("threshold"), float):
            return record["threshold"]
    images = find_validation_images("mvtec_ad2", args.data_path, category)
    if not images:
        raise TransFusionError(f"{args.data_path}/{category}/validation/good holds no images: the validation "
                               f"threshold is taken from them")
    result = det(images, progress=not args.quiet)
    value = baseline_threshold(map_at_size(m, image_hw(p)) for m, p in zip(result.maps, images))
    atomic_write_json(record_path, {"kind": "validation mean+3std", "threshold": value, "schedule": schedule,
                                    "validation_images": len(images)})
    return value


def _submit_scenario(args: argparse.Namespace, det: Detector, out: Path, category: str,
                     threshold: float | Threshold) -> int:
    """Write the missing files of one scenario; how many images were scored."""
    todo = []
    for split, suffix in MVTEC_AD2_PRIVATE_SETS.items():
        for image in find_private_images(args.data_path, category)[split]:
            stem = _checked_name(image, suffix)
            targets = (out / MAPS / category / split / f"{stem}.tiff",
                       out / SEGMENTATIONS / category / split / f"{stem}.png")
            if not all(t.exists() for t in targets):
                todo.append((image, targets))
    bar = tqdm(total=len(todo), desc=f"[{category}] submit", unit="image", disable=args.quiet)
    for start in range(0, len(todo), args.eval_bs):
        chunk = todo[start:start + args.eval_bs]
        result = det([image for image, _ in chunk], input_size_maps=True)
        for (image, (tiff_path, png_path)), native in zip(chunk, result.input_size_maps):
            atomic_write_bytes(tiff_path, _tiff(native))
            atomic_write_bytes(png_path, _png(segment(native, threshold)))
        bar.update(len(chunk))
    bar.close()
    return len(todo)


def check_submission(out: Path, data_path: str, categories: list[str]) -> list[str]:
    """What the server's checker would refuse, as one error (TransFusionError); the warnings
    (counts that differ from the official ones) as lines."""
    expected: set[Path] = set()
    warnings = []
    for category in categories:
        for split, images in find_private_images(data_path, category).items():
            official = MVTEC_AD2_PRIVATE_COUNTS[category]
            if len(images) != official:
                warnings.append(f"warning: {category}/{split} holds {len(images)} images, the official set {official}: "
                                f"the server will refuse this submission")
            for image in images:
                expected.add(Path(MAPS) / category / split / f"{image.stem}.tiff")
                expected.add(Path(SEGMENTATIONS) / category / split / f"{image.stem}.png")
    present = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    folders = {p.relative_to(out) for p in out.rglob("*") if p.is_dir()}
    allowed_folders = {parent for path in expected for parent in path.parents if parent != Path(".")}
    missing, extra = sorted(expected - present), sorted((present - expected) | (folders - allowed_folders))
    if missing:
        raise TransFusionError(f"{out}: {len(missing)} file(s) missing, e.g. {missing[0]}; run -c submit again "
                               f"(it continues) after training every scenario")
    if extra:
        raise TransFusionError(f"{out}: {len(extra)} file(s) or folder(s) the server refuses, e.g. {extra[0]}; "
                               f"remove them")
    for rel in sorted(present):
        _check_file(out / rel, data_path)
    return warnings


def _check_file(path: Path, data_path: str) -> None:
    category, split = path.parts[-3], path.parts[-2]
    hw = image_hw(Path(data_path) / category / split / f"{path.stem}.png")
    if path.suffix == ".tiff":
        arr = tifffile.imread(path)
        ok = arr.dtype == np.float16 and arr.shape == hw
        what = f"{arr.dtype} {arr.shape}"
    else:
        with Image.open(path) as im:
            arr = np.asarray(im)
            ok = im.mode == "L" and arr.shape == hw and set(np.unique(arr)) <= {0, 255}
            what = f"mode {im.mode} {arr.shape} values {sorted(set(np.unique(arr).tolist()))[:4]}"
    if not ok:
        kind = "float16" if path.suffix == ".tiff" else "0/255 uint8"
        raise TransFusionError(f"{path}: {what}, expected one channel of {hw[0]}x{hw[1]} ({kind}); "
                               f"delete it and run -c submit again")


def run_submit(args: argparse.Namespace) -> dict[str, int]:
    """Score every private image of the run's scenarios, write the submission, check it."""
    if args.dataset != "mvtec_ad2":
        raise TransFusionError("-c submit writes an MVTec AD 2 submission: give -ds mvtec_ad2 -d <MVTec AD 2 root>")
    paths = RunPaths(args.log_path, args.run_name)
    paths.require_models()
    categories = resolve_categories("mvtec_ad2", args.data_path, args.category)
    out = Path(args.out) if args.out else paths.submission
    for stray in out.rglob(".*.tmp") if out.is_dir() else ():
        stray.unlink()  # a write cut short by a kill (utils/core/atomic.py); its image is redone
    device = pick_device(args.device)
    scored = {}
    for category in categories:
        if not (paths.has_weights(category) or paths.has_weights(MULTICLASS)):
            raise TransFusionError(f"{category}: no trained network in {paths.models} (train it: -c train -r "
                                   f"{args.run_name} -ds mvtec_ad2 --category {category}); the server needs all eight")
        det = open_detector(argparse.Namespace(**{**vars(args), "threshold": None}), paths, category, device)
        threshold = _threshold(args, det, paths, category)
        scored[category] = _submit_scenario(args, det, out, category, threshold)
        value = threshold.value if isinstance(threshold, Threshold) else threshold
        kind = {None: "validation"}.get(args.threshold, args.threshold) if not isinstance(args.threshold, float) \
            else "given"
        print(f"[{category}] {scored[category]} private images scored ({kind} threshold "
              f"{value:.6g}); files in {out}")
    for line in check_submission(out, args.data_path, categories):
        print(line)
    print(f"submission checked: {out} ({len(categories)} scenarios)")
    return scored
