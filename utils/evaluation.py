"""Evaluation: the reverse process over a test set, anomaly maps, metrics and result files."""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from models.transparency import AnomalyMaps, TransparencyProcess, anomaly_maps
from utils.atomic import atomic_append_line, atomic_write_json, atomic_write_text
from utils.distributed import SINGLE, Dist, gather_objects
from utils.errors import TransFusionError
from utils.speed import autocast
from utils.metrics import compute_metrics, pixel_metrics, roc_curve_points

METRIC_KEYS = ("image_auroc", "aupro", "pixel_auroc", "image_ap", "image_f1_max")


@dataclass
class EvalOutput:
    scores: np.ndarray            # [N] float64 image scores
    labels: np.ndarray            # [N] int 0/1
    maps: np.ndarray              # [N, S, S] float64 anomaly maps
    masks: np.ndarray             # [N, S, S] bool ground truth
    paths: list[str]
    defects: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    pro_curve: tuple[np.ndarray, np.ndarray] | None = None
    seconds: float = 0.0


def score_batch(net: torch.nn.Module, process: TransparencyProcess, images: torch.Tensor,
                kernel_size: int, weight: float, keep_reconstruction: bool = False,
                amp: str = "off") -> tuple[AnomalyMaps, torch.Tensor | None]:
    """Reverse process + SPEC §6 scoring for one batch already on the network's device."""
    with torch.inference_mode():
        with autocast(images.device, amp):
            result = process.reverse(net, images)
        maps = anomaly_maps(images, result, process.mode, kernel_size, weight)
    return maps, (result.x_final if keep_reconstruction else None)


def _check_finite(maps: AnomalyMaps, paths: Iterable[str]) -> None:
    bad = ~torch.isfinite(maps.final.flatten(1)).all(dim=1)
    if bool(bad.any()):
        first = [p for p, b in zip(paths, bad.tolist()) if b]
        raise TransFusionError(
            f"the anomaly map of {first[0]} is not finite (NaN/inf) — the checkpoint is probably "
            f"diverged or corrupt ({len(first)} image(s) in this batch); re-train or use another checkpoint")


def evaluate(net: torch.nn.Module, process: TransparencyProcess, dataset: Dataset,
             device: torch.device, kernel_size: int = 7, weight: float = 0.95, batch_size: int = 8,
             workers: int = 0, visualize_dir: Path | None = None, progress: bool = True,
             desc: str = "evaluate", amp: str = "off", dist: Dist = SINGLE) -> EvalOutput:
    """Score every test image; the numbers do not depend on ``batch_size``.

    With ``dist`` enabled each rank scores every world_size-th image and the results are
    gathered (in dataset order) on every rank, so the metrics are those of one process.
    """
    shard = list(range(dist.rank, len(dataset), dist.world_size))  # type: ignore[arg-type]
    part = Subset(dataset, shard) if dist.enabled else dataset
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers)
    scores, labels, maps_out, masks_out, paths, defects = [], [], [], [], [], []
    pictures: list[tuple[dict[str, Any], np.ndarray]] = []  # (batch, reconstructions) to draw
    start = time.perf_counter()
    net.eval()
    for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
        images = batch["image"].to(device)
        maps, recon = score_batch(net, process, images, kernel_size, weight,
                                  keep_reconstruction=visualize_dir is not None, amp=amp)
        _check_finite(maps, batch["path"])
        final = maps.final.cpu().numpy()
        scores.append(maps.scores.cpu().numpy())
        labels.append(np.asarray(batch["label"]).astype(int))
        maps_out.append(final)
        masks_out.append(batch["mask"][:, 0].numpy() > 0.5)
        paths.extend(batch["path"])
        defects.extend(batch["defect"])
        if visualize_dir is not None:
            pictures.append((batch, recon.float().cpu().numpy()))
    if scores:
        local = (shard, np.concatenate(scores), np.concatenate(labels), np.concatenate(maps_out),
                 np.concatenate(masks_out), paths, defects)
    else:  # more ranks than images: this rank scored none
        hw = tuple(dataset[0]["mask"].shape[1:])
        local = (shard, np.zeros(0), np.zeros(0, int), np.zeros((0, *hw)), np.zeros((0, *hw), bool), [], [])
    parts = gather_objects(dist, local)
    order = np.argsort(np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts]), kind="stable")

    def joined(i: int) -> np.ndarray:
        return np.concatenate([p[i] for p in parts])[order]

    out = EvalOutput(scores=joined(1), labels=joined(2), maps=joined(3), masks=joined(4),
                     paths=[x for p in parts for x in p[5]], defects=[x for p in parts for x in p[6]])
    out.paths = [out.paths[i] for i in order]
    out.defects = [out.defects[i] for i in order]
    out.seconds = time.perf_counter() - start
    if visualize_dir is not None:
        rng = heat_map_range(out.maps)
        at = {p: i for i, p in enumerate(out.paths)}
        for batch, recon in pictures:
            idx = [at[p] for p in batch["path"]]
            _visualize_batch(visualize_dir, batch, out.maps[idx], out.scores[idx], recon, process.mode, rng)
    out.metrics = compute_metrics(out.scores, out.labels)  # image-level part
    if out.masks.any() and (~out.masks).any():
        pixel = pixel_metrics(out.maps, out.masks)  # one sort for pixel AUROC, AUPRO and the curve
        out.metrics.update(pixel_auroc=pixel["pixel_auroc"], aupro=pixel["aupro"])
        out.pro_curve = pixel["pro_curve"]
    else:
        out.metrics.update(pixel_auroc=None, aupro=None)
    return out


def heat_map_range(maps: np.ndarray) -> tuple[float, float]:
    """One heat-map scale per category, so panels compare: from the median value (the typical
    normal surface: blue) to the largest (red). Each rank draws its own shard with it."""
    return float(np.median(maps)), float(maps.max())


def _visualize_batch(folder: Path, batch: dict[str, Any], final: np.ndarray, scores: np.ndarray,
                     recon: np.ndarray, mode: str, map_range: tuple[float, float]) -> None:
    from utils.visualize import save_panel

    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(batch["path"]):
        defect = batch["defect"][i]
        name = f"{defect}_{Path(path).stem}.png"
        gt = batch["mask"][i, 0].numpy() if int(batch["label"][i]) else None
        save_panel(folder / name, batch["image"][i].float().numpy(), final[i], gt, recon[i], mode,
                   score=float(scores[i]), title=f"{defect}/{Path(path).name}", map_range=map_range)


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def write_results(out: EvalOutput, folder: Path, summary_extra: dict[str, Any]) -> None:
    """Per-image CSV, a JSON summary with every metric, ROC and PRO curves as PNG."""
    from utils.visualize import save_curve

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_path", "label", "defect", "score"])
    for p, y, d, s in zip(out.paths, out.labels, out.defects, out.scores):
        w.writerow([p, int(y), d, f"{s:.8f}"])
    atomic_write_text(folder / "per_image.csv", buf.getvalue())
    summary = {"metrics": out.metrics, "n_images": int(len(out.scores)),
               "n_anomalous": int(out.labels.sum()), "seconds": round(out.seconds, 2),
               "seconds_per_image": round(out.seconds / max(1, len(out.scores)), 4), **summary_extra}
    atomic_write_json(folder / "summary.json", summary)
    roc = roc_curve_points(out.scores, out.labels)
    if roc is not None:
        save_curve(folder / "roc.png", roc[0], roc[1], "Image ROC", "false positive rate",
                   "true positive rate", note=f"AUROC {fmt_pct(out.metrics.get('image_auroc'))}")
    if out.pro_curve is not None:
        fpr, pro = out.pro_curve
        save_curve(folder / "pro.png", fpr, pro, "Per-region overlap (PRO)", "false positive rate",
                   "PRO", xlim=(0, 0.3), note=f"AUPRO {fmt_pct(out.metrics.get('aupro'))}")


OUTPUT_CSV_HEADER = "timestamp,run,category,epoch,image_auroc,aupro,pixel_auroc,image_ap,image_f1_max"


def append_output_csv(path: Path, run: str, category: str, epoch: Any, metrics: dict[str, Any]) -> None:
    """One row per evaluated category, percentages; the header is written once."""
    if not path.exists():
        atomic_write_text(path, OUTPUT_CSV_HEADER + "\n")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    values = [fmt_pct(metrics.get(k)) for k in METRIC_KEYS]
    atomic_append_line(path, ",".join([stamp, run, category, str(epoch), *values]))


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """Categories and their mean, in percent."""
    head = "| category | image AUROC | AUPRO | pixel AUROC | image AP | image F1-max |"
    lines = [head, "|" + "---|" * 6]
    for cat, m in rows.items():
        lines.append(f"| {cat} | " + " | ".join(fmt_pct(m.get(k)) for k in METRIC_KEYS) + " |")
    mean = mean_metrics(rows)
    lines.append("| **mean** | " + " | ".join(fmt_pct(mean.get(k)) for k in METRIC_KEYS) + " |")
    return "\n".join(lines)


def mean_metrics(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    mean: dict[str, float | None] = {}
    for k in METRIC_KEYS:
        vals = [m[k] for m in rows.values() if m.get(k) is not None]
        mean[k] = float(np.mean(vals)) if vals else None
    return mean


def avg_line(rows: dict[str, dict[str, Any]]) -> str:
    """The original's closing line."""
    mean = mean_metrics(rows)
    return f"AVG AUROC: {fmt_pct(mean['image_auroc'])}, AVG AUPRO: {fmt_pct(mean['aupro'])}"
