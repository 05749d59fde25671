"""``-c test -ds mvtec_ad2``: the dataset's own protocol, at each image's own resolution (docs/method.md §11).

The working-size maps of the test set (what -c test scores anyway) are taken back to each image's
size with `models.scoring.map_at_size` one at a time, so no full-resolution map is kept; the pixel
metrics stream through `native_metrics`. SegF1 is reported at two thresholds chosen without test
labels: the dataset authors' baseline, mean + 3·std over every pixel of the validation images'
maps, and, where the run has one, this project's calibrated threshold (-c calibrate): the image
score is the largest map value, so the value that decides "defect" for an image also segments the
pixels that make that decision.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from data.datasets import TestDataset
from data.discovery import TestSample, find_validation_images
from data.io import image_hw, read_mask_native
from models.scoring import map_at_size
from models.transparency import TransparencyProcess
from utils.core.errors import TransFusionError
from utils.evaluation.loop import EvalOutput, EvalSettings, evaluate
from utils.evaluation.native_metrics import BASELINE_STDS, baseline_threshold, native_pixel_metrics
from utils.run.thresholds import Threshold

VALIDATION = "validation mean+3std"
CALIBRATED = "calibrated"


def validation_threshold(net: torch.nn.Module, process: TransparencyProcess, test_set: TestDataset, data_path: str,
                         device: torch.device, settings: EvalSettings, progress: bool = True) -> tuple[float, int]:
    """mean + 3·std over every pixel of the validation/good images' maps at their own size, and
    how many images made it."""
    images = find_validation_images(test_set.dataset, data_path, test_set.category)
    if not images:
        raise TransFusionError(f"{data_path}/{test_set.category}/validation/good holds no images: MVTec AD 2's "
                               f"SegF1 threshold is taken from them (unpack the whole scenario)")
    good = TestDataset(test_set.dataset, data_path, test_set.category, test_set.mode, test_set.img_size,
                       samples=[TestSample(p, None, 0, "good") for p in images])
    out = evaluate(net, process, good, device, settings, progress=progress, desc=f"[{test_set.category}] validation")
    maps = (map_at_size(m, image_hw(p)) for m, p in zip(out.maps, out.paths))
    return baseline_threshold(maps, BASELINE_STDS), len(images)


def native_map_and_mask(anomaly_map: np.ndarray, sample: TestSample) -> tuple[np.ndarray, np.ndarray]:
    """A working-size map taken back to its image's own size, and the image's ground truth there
    (all False for a good image)."""
    hw = image_hw(sample.image_path)
    mask = read_mask_native(sample.mask_path) if sample.mask_path else np.zeros(hw, bool)
    if mask.shape != hw:
        raise TransFusionError(f"{sample.mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                               f"{sample.image_path} is {hw[0]}x{hw[1]}; the native-resolution metrics need both")
    return map_at_size(anomaly_map, hw), mask


def _native_pairs(out: EvalOutput, samples: list[TestSample]) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    for anomaly_map, sample in zip(out.maps, samples):
        yield (*native_map_and_mask(anomaly_map, sample), str(sample.image_path))


def protocol(out: EvalOutput, test_set: TestDataset, validation: tuple[float, int],
             calibrated: Threshold | None, progress: bool = True) -> dict[str, Any]:
    """The MVTec AD 2 figures of one scenario, for summary.json: AU-PRO@0.05, SegF1 at each
    threshold, pixel AUROC / AP and AU-PRO@0.3 at native resolution, exact or within a bound."""
    threshold, n_validation = validation
    thresholds: dict[str, float | Threshold] = {VALIDATION: threshold}
    if calibrated is not None:
        thresholds[CALIBRATED] = calibrated
    n_pixels = sum(h * w for h, w in (image_hw(s.image_path) for s in test_set.samples))
    got = native_pixel_metrics(lambda: _native_pairs(out, test_set.samples), thresholds, n_pixels=n_pixels,
                               progress=progress)
    return {"aupro_005": got.aupro_005, "aupro": got.aupro, "pixel_auroc": got.pixel_auroc, "pixel_ap": got.pixel_ap,
            "seg_f1": {name: s.f1 for name, s in got.seg_f1.items()},
            "thresholds": {name: s.threshold for name, s in got.seg_f1.items()},
            "validation_images": n_validation, "exact": got.exact, "error_bound": got.error_bound,
            "path": got.path, "n_pixels": got.n_pixels, "details": got.as_dict()}


def protocol_line(label: str, figures: dict[str, Any]) -> str:
    """The one line -c test prints per scenario."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"
    how = "exact" if figures["exact"] else f"within {figures['error_bound']:.1e}"
    segs = ", ".join(f"SegF1 {pct(f1)} at {name} = {figures['thresholds'][name]:.4g}"
                     for name, f1 in figures["seg_f1"].items())
    return (f"[{label}] MVTec AD 2 at native resolution ({how}, {figures['n_pixels']:,} pixels): AU-PRO@0.05 "
            f"{pct(figures['aupro_005'])}, {segs}; pixel AUROC {pct(figures['pixel_auroc'])}, pixel AP "
            f"{pct(figures['pixel_ap'])}, AU-PRO@0.3 {pct(figures['aupro'])}")


def _number(value: Any) -> float | None:
    """A figure read back from a summary.json (a run folder from elsewhere may hold anything)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    return float(value) if ok else None


def protocol_rows(figures: Any) -> list[tuple[str, float | None, str]]:
    """The category page's MVTec AD 2 table from summary.json's "mvtec_ad2": (figure, value in
    [0, 1] or None, what it is)."""
    if not isinstance(figures, dict):
        return []
    seg = figures.get("seg_f1") if isinstance(figures.get("seg_f1"), dict) else {}
    thresholds = figures.get("thresholds") if isinstance(figures.get("thresholds"), dict) else {}
    rows = [("AU-PRO@0.05", _number(figures.get("aupro_005")), "area under PRO up to FPR 0.05, divided by 0.05")]
    for name, f1 in seg.items():
        t = _number(thresholds.get(name))
        rows.append((f"SegF1 at {name}", _number(f1),
                     "pooled-pixel F1" + ("" if t is None else f" where the map is ≥ {t:.6g}")))
    rows += [("pixel AUROC", _number(figures.get("pixel_auroc")), "at native resolution"),
             ("pixel AP", _number(figures.get("pixel_ap")), "at native resolution"),
             ("AU-PRO@0.3", _number(figures.get("aupro")), "up to FPR 0.3, as for MVTec AD")]
    return rows


def protocol_note(figures: Any) -> str:
    """How the page's MVTec AD 2 figures were computed, in one sentence."""
    if not isinstance(figures, dict):
        return ""
    pixels = figures.get("n_pixels")
    how = "exact" if figures.get("exact") is True else (
        f"within {figures['error_bound']:.1e} of exact" if _number(figures.get("error_bound")) is not None
        else "bounded memory")
    size = f" over {pixels:,} pixels" if isinstance(pixels, int) and not isinstance(pixels, bool) else ""
    return (f"at each image's own resolution{size} ({how}); SegF1 thresholds come from validation/good "
            f"alone, never from the test labels")


INDEX_FIGURES = ("AU-PRO@0.05", f"SegF1 at {VALIDATION}")


def index_figures(figures: Any) -> dict[str, float | None]:
    """The run index's MVTec AD 2 columns of one scenario (INDEX_FIGURES), from summary.json."""
    by_name = {name: value for name, value, _ in protocol_rows(figures)}
    return {name: by_name.get(name) for name in INDEX_FIGURES} if by_name else {}
