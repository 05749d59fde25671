"""Evaluation: the reverse process over a test set, gathered into scores, maps and metrics.

Scoring one batch is models/scoring.py's; writing what came out is utils/evaluation/results.py's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from models.runtime import RuntimeOptions
from models.scoring import DEFAULT_SCORING, ScoringOptions, score_batch
from models.transparency import TransparencyProcess
from utils.evaluation.metrics import compute_metrics, pixel_metrics
from utils.machine.distributed import SINGLE, Dist, gather_objects


@dataclass(frozen=True)
class EvalSettings:
    """How a test set is scored: the scoring rule, how the network runs, batch size and workers
    (the numbers do not depend on either)."""

    scoring: ScoringOptions = DEFAULT_SCORING
    runtime: RuntimeOptions = RuntimeOptions()
    batch_size: int = 8
    workers: int = 0


@dataclass
class EvalOutput:
    scores: np.ndarray            # [N] float64 image scores
    labels: np.ndarray            # [N] int 0/1
    maps: np.ndarray              # [N, S, S] float64 anomaly maps
    masks: np.ndarray             # [N, S, S] bool ground truth
    paths: list[str]
    defects: list[str]
    steps: np.ndarray             # [N] int reverse steps each image ran
    metrics: dict[str, Any] = field(default_factory=dict)
    pro_curve: tuple[np.ndarray, np.ndarray] | None = None
    seconds: float = 0.0
    # with keep_pictures: this rank's batches and their reconstructions, for utils/reporting.write_panels
    pictures: list[tuple[dict[str, Any], np.ndarray]] = field(default_factory=list)


def _score_shard(net: torch.nn.Module, process: TransparencyProcess, part: Dataset, device: torch.device,
                 settings: EvalSettings, keep_pictures: bool, progress: bool, desc: str
                 ) -> tuple[dict[str, list], list[tuple[dict[str, Any], np.ndarray]]]:
    """Score this rank's images; also the batches (and reconstructions) to draw, if asked."""
    loader = DataLoader(part, batch_size=settings.batch_size, shuffle=False, num_workers=settings.workers)
    got: dict[str, list] = {k: [] for k in ("scores", "labels", "maps", "masks", "steps", "paths", "defects")}
    pictures: list[tuple[dict[str, Any], np.ndarray]] = []
    for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
        images = batch["image"].to(device)
        maps, recon = score_batch(net, process, images, settings.scoring, settings.runtime,
                                  keep_reconstruction=keep_pictures)
        maps.check_finite(batch["path"])
        got["scores"].append(maps.scores.cpu().numpy())
        got["labels"].append(np.asarray(batch["label"]).astype(int))
        got["maps"].append(maps.final.cpu().numpy())
        got["masks"].append(batch["mask"][:, 0].numpy() > 0.5)
        got["steps"].append(maps.steps_run.cpu().numpy())
        got["paths"].extend(batch["path"])
        got["defects"].extend(batch["defect"])
        if keep_pictures:
            pictures.append((batch, recon.float().cpu().numpy()))
    return got, pictures


def _gather(dist: Dist, shard: list[int], got: dict[str, list], dataset: Dataset) -> EvalOutput:
    """Every rank's results, in dataset order, on every rank."""
    if got["scores"]:
        local = (shard, *(np.concatenate(got[k]) for k in ("scores", "labels", "maps", "masks", "steps")),
                 got["paths"], got["defects"])
    else:  # more ranks than images: this rank scored none
        hw = tuple(dataset[0]["mask"].shape[1:])
        local = (shard, np.zeros(0), np.zeros(0, int), np.zeros((0, *hw)), np.zeros((0, *hw), bool),
                 np.zeros(0, int), [], [])
    parts = gather_objects(dist, local)
    order = np.argsort(np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts]), kind="stable")

    def joined(i: int) -> np.ndarray:
        return np.concatenate([p[i] for p in parts])[order]

    paths = [x for p in parts for x in p[6]]
    defects = [x for p in parts for x in p[7]]
    return EvalOutput(scores=joined(1), labels=joined(2), maps=joined(3), masks=joined(4), steps=joined(5),
                      paths=[paths[i] for i in order], defects=[defects[i] for i in order])


def _add_metrics(out: EvalOutput) -> None:
    out.metrics = compute_metrics(out.scores, out.labels)  # image-level part
    if out.masks.any() and (~out.masks).any():
        pixel = pixel_metrics(out.maps, out.masks)  # one sort for pixel AUROC, AUPRO, pixel AP and the curve
        out.metrics.update(pixel_auroc=pixel["pixel_auroc"], aupro=pixel["aupro"], pixel_ap=pixel["pixel_ap"])
        out.pro_curve = pixel["pro_curve"]
    else:
        out.metrics.update(pixel_auroc=None, aupro=None, pixel_ap=None)


def evaluate(net: torch.nn.Module, process: TransparencyProcess, dataset: Dataset, device: torch.device,
             settings: EvalSettings = EvalSettings(), *, dist: Dist = SINGLE, progress: bool = True,
             desc: str = "evaluate", keep_pictures: bool = False) -> EvalOutput:
    """Score every test image; the numbers do not depend on the batch size.

    With ``dist`` enabled each rank scores every world_size-th image and the results are
    gathered (in dataset order) on every rank, so the metrics are those of one process.
    With ``keep_pictures``, ``out.pictures`` holds this rank's batches and reconstructions.
    """
    shard = list(range(dist.rank, len(dataset), dist.world_size))  # type: ignore[arg-type]
    part = Subset(dataset, shard) if dist.enabled else dataset
    start = time.perf_counter()
    net.eval()
    got, pictures = _score_shard(net, process, part, device, settings, keep_pictures, progress, desc)
    out = _gather(dist, shard, got, dataset)
    out.seconds = time.perf_counter() - start
    out.pictures = pictures
    _add_metrics(out)
    return out
