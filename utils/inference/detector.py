"""The Python API: a trained run as a detector you call from your own program.

    import transfusion
    det = transfusion.Detector.from_run("experiments/my_parts", "my_parts")
    result = det(["part_001.png", frame])      # paths, RGB uint8 arrays, or a [B, C, S, S] tensor
    result.scores, result.decisions, result.maps

`Detector.from_run` reads the run as the command line does (weights, meta, thresholds) and takes
the command line's options as keyword arguments; ``-c predict`` and ``-c calibrate`` are built on
it, so the API, the command line and the exported ONNX network all score through one path:
`models.scoring.score_batch` on the PyTorch module or on `models.onnx_session.OnnxNetwork`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from data.catalog import xyz_path_for
from data.datasets import array_input, model_input
from data.depth import read_xyz
from data.io import image_hw, read_rgb_uint8
from models.conditioning import ClassConditionedUNet, OneCategory
from models.modes import IMAGE_CHANNELS, has_depth, has_rgb, rgb_channels
from models.runtime import RuntimeOptions
from models.scoring import DEFAULT_SCORING, ScoringOptions, map_at_size, score_batch
from models.transparency import Network, TransparencyProcess
from models.unet import UNetConfig
from utils.core.errors import TransFusionError
from utils.run.meta import category_view, network_for, read_meta
from utils.run.network import load_network
from utils.run.paths import RunPaths
from utils.run.settings import DepthSource, Requested, resolve_settings, runtime_from, scoring_from
from utils.run.thresholds import Threshold, choose_threshold, explicit_threshold, schedule_note

PathLike = (str, os.PathLike)


@dataclass
class Detection:
    """What a detector says about a list of images, in the order given (numpy arrays)."""

    names: list[str]                     # the path, or "array[i]" / "tensor[i]"
    scores: np.ndarray                   # [B] float64: image score = max of the anomaly map
    maps: np.ndarray                     # [B, S, S] float64: anomaly maps at the model's resolution
    steps: np.ndarray                    # [B] int64: reverse steps each image ran
    decisions: list[str] | None          # "defect" / "OK" with `threshold`; None without one
    threshold: Threshold | None          # value, kind ("calibrated", "F1-max", ...), rule and source
    inputs: np.ndarray                   # [B, C, S, S] float32: what the network saw
    input_sizes: list[tuple[int, int]]   # (H, W) of each input as given
    input_size_maps: list[np.ndarray] | None = None  # with input_size_maps=True: each map resized to H×W
    reconstructions: np.ndarray | None = None        # with reconstructions=True: [B, C, S, S]

    def __len__(self) -> int:
        return len(self.names)

    def records(self) -> list[dict[str, Any]]:
        """One dict per image: name, score, decision, steps (ready for json.dumps)."""
        return [{"name": n, "score": float(s), "decision": None if self.decisions is None else self.decisions[i],
                 "steps": int(self.steps[i])} for i, (n, s) in enumerate(zip(self.names, self.scores))]

    @staticmethod
    def concat(parts: Sequence[Detection], threshold: Threshold | None) -> Detection:
        """The batches of one call as one result."""
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0)

        def listed(name: str) -> list[Any] | None:
            got = [getattr(p, name) for p in parts]
            return None if not parts or got[0] is None else [x for g in got for x in g]

        recon = [p.reconstructions for p in parts]
        return Detection(names=[n for p in parts for n in p.names], scores=cat("scores"), maps=cat("maps"),
                         steps=cat("steps"), decisions=listed("decisions"), threshold=threshold, inputs=cat("inputs"),
                         input_sizes=[s for p in parts for s in p.input_sizes],
                         input_size_maps=listed("input_size_maps"),
                         reconstructions=np.concatenate(recon) if parts and recon[0] is not None else None)


@dataclass
class _Prepared:
    """One input as the network takes it, with its name and size."""

    tensor: torch.Tensor     # [C, S, S] float32, CPU
    name: str
    size: tuple[int, int]    # (H, W) as given


class Detector:
    """A trained network with its reverse process, scoring options and decision threshold.

    Build one with `Detector.from_run`; call it on images. The constructor takes the parts
    (any `Network` callable), for programs that build them themselves."""

    def __init__(self, network: Network, process: TransparencyProcess, image_size: int, *,
                 depth_norm: tuple[float, float] | None = None, scoring: ScoringOptions = DEFAULT_SCORING,
                 runtime: RuntimeOptions = RuntimeOptions(), device: torch.device | str = "cpu",
                 threshold: Threshold | None = None, batch_size: int = 8, backend: str = "torch",
                 config: UNetConfig | None = None, category: str | None = None,
                 meta: dict[str, Any] | None = None, network_file: Path | None = None,
                 notes: Sequence[str] = ()) -> None:
        if batch_size < 1:
            raise TransFusionError(f"batch_size must be at least 1, got {batch_size}")
        self.network, self.process, self.mode = network, process, process.mode
        self.image_size, self.depth_norm = int(image_size), depth_norm
        self.scoring, self.runtime, self.device = scoring, runtime, torch.device(device)
        self.threshold, self.batch_size, self.backend = threshold, int(batch_size), backend
        self.config, self.category, self.meta, self.network_file = config, category, meta or {}, network_file
        self.notes = tuple(notes)  # what the settings resolver said (an image size that overrides the run's)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, category: str, *, device: str | None = None, amp: str = "off",
                 memory_format: str = "contiguous", compile: bool = False, eval_steps: int | None = None,
                 early_stop: int | None = None, kernel_size: int = DEFAULT_SCORING.kernel_size,
                 weight: float = DEFAULT_SCORING.weight, threshold: float | Threshold | None = None,
                 backend: str = "torch", batch_size: int = 8, image_size: int | None = None,
                 diffusion_steps: int | None = None, requested: Requested | None = None,
                 depth_from_training: DepthSource | None = None) -> Detector:
        """The detector of ``category`` in the run folder ``run_dir`` (``<log-path>/<run-name>``).

        Keywords are the command line's: ``device`` (default: CUDA if present), ``amp``,
        ``memory_format``, ``compile`` (torch backend only), ``eval_steps``, ``early_stop``,
        ``kernel_size`` / ``weight`` (--eval-kernel-size / --eval-w), ``threshold`` (a value of
        your own, defect when score >= it; default: the calibrated one, else -c test's F1-max
        one, else none), ``backend`` ("torch", or "onnxruntime" on the file -c export wrote),
        ``batch_size`` (the scores do not depend on it); with "onnxruntime" the device is the CPU.
        The image size and T are the run's (utils/run/settings.py): ``image_size`` overrides the
        run's size (`notes` says so); ``diffusion_steps`` other than the run's T is refused; both
        are what a run without a meta file (released weights) uses (default 256 / 20).
        ``requested``: the command line's explicit flags instead of the two keywords;
        ``depth_from_training``: for depth modes whose run has no depth range (released weights),
        a callable that takes it from the training set.
        On a run of one multi-class network (-c train_multiclass), ``category`` is "multiclass" (the
        thresholds of the whole union) or one of its categories (that category's thresholds)."""
        from utils.machine.distributed import pick_device

        paths = RunPaths.at(run_dir)
        runtime = runtime_from(backend, amp, memory_format, compile)
        scoring = scoring_from(kernel_size, weight, eval_steps, early_stop)
        dev = pick_device("cpu" if backend == "onnxruntime" and device is None else device)
        _check_category(paths, category, backend)
        network_key, view = network_for(paths, category)
        if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
            threshold = explicit_threshold(threshold, "given", "given to Detector.from_run")
        requested = replace(requested, eval_steps=scoring.eval_steps) if requested else \
            Requested.from_keywords(image_size, diffusion_steps, scoring.eval_steps)
        meta = read_meta(paths, network_key)  # checked before the network is opened
        exported = None
        if backend == "onnxruntime":
            from utils.deploy.onnx_files import open_exported

            exported = open_exported(paths, network_key, dev)
            network, config, network_file = exported.network, exported.config, exported.path
            rows = exported.sidecar.get("categories") if exported.sidecar.get("class_conditioned") else None
        else:
            net = load_network(paths, network_key, runtime, dev)
            network, config, network_file = runtime.callable(net), net.cfg, paths.weights(network_key)
            rows = list(net.categories) if isinstance(net, ClassConditionedUNet) else None
        if rows is not None:  # class-conditioned: one category's row conditions every image
            network = OneCategory(network, _conditioning_row(rows, view, paths, network_key))
        settings = resolve_settings(paths, network_key, meta, config, requested, depth_from_training)
        if exported is not None:
            from utils.deploy.onnx_files import check_matches_run

            check_matches_run(paths, network_key, exported, settings)
        return cls(network, settings.process, settings.image_size, depth_norm=settings.depth_norm, scoring=scoring,
                   runtime=runtime, device=dev,
                   threshold=choose_threshold(category_view(settings.meta, view), settings.meta_path, threshold),
                   batch_size=batch_size, backend=backend, config=config, category=category, meta=settings.meta,
                   network_file=network_file, notes=settings.notes)

    def __repr__(self) -> str:
        decides = self.threshold.describe() if self.threshold else "no threshold (scores only)"
        return (f"Detector({self.category or '?'}: {self.mode}, {self.image_size} px, {self.backend} on "
                f"{self.device}, {decides})")

    @property
    def threshold_note(self) -> str | None:
        """A warning when the threshold was made with another step schedule than this detector's."""
        return None if self.threshold is None else schedule_note(self.threshold, self.scoring.schedule())

    def __call__(self, images: Any, *, input_size_maps: bool = False, reconstructions: bool = False,
                 progress: bool = False) -> Detection:
        """Score ``images``: a path, an RGB uint8 H×W×3 array, a list of them, or a float tensor
        [B, C, S, S] (or [C, S, S]) already in the model's [−1, 1] convention at its size S. Depth
        modes take (rgb, xyz) pairs of paths or arrays (xyz: H×W×3 float, as MVTec 3D-AD's tiffs;
        in mode d the rgb may be None), or rgb paths in the MVTec 3D-AD layout (xyz/ beside rgb/).
        ``input_size_maps``: also each map resized bilinearly to its input's H×W.
        An input that cannot be read raises TransFusionError naming it."""
        items = self.items(images)
        if not items:
            raise TransFusionError("no images given: pass image paths, arrays or a tensor")
        parts = list(self.batches(items, input_size_maps=input_size_maps, reconstructions=reconstructions,
                                  progress=progress))
        return Detection.concat(parts, self.threshold)

    def items(self, images: Any) -> list[Any]:
        """The inputs of one call as a list of single items (see __call__)."""
        if isinstance(images, torch.Tensor):
            return list(images) if images.dim() == 4 else [images]
        if isinstance(images, np.ndarray):
            return list(images) if images.ndim == 4 else [images]
        if isinstance(images, PathLike):
            return [images]
        if isinstance(images, tuple) and has_depth(self.mode) and len(images) == 2 and \
                not isinstance(images[0], (tuple, list)):
            return [images]  # one (rgb, xyz) pair
        if isinstance(images, (list, tuple)):
            return list(images)
        raise TransFusionError(f"cannot score a {type(images).__name__}: pass image paths, RGB uint8 HxWx3 arrays "
                               f"(a list of them), or a float tensor [B, C, S, S] in [-1, 1]")

    def batches(self, items: Iterable[Any], *, input_size_maps: bool = False, reconstructions: bool = False,
                progress: bool = False, desc: str = "predict",
                on_skip: Callable[[TransFusionError], None] | None = None) -> Iterator[Detection]:
        """Score items in batches of ``batch_size``, one `Detection` per batch. ``on_skip``: called
        with the error of an unreadable item, which is then left out (default: raise it)."""
        pending: list[_Prepared] = []
        for i, item in enumerate(tqdm(items, desc=desc, disable=not progress, leave=False)):
            try:
                pending.append(self.prepare(item, i))
            except TransFusionError as exc:
                if on_skip is None:
                    raise
                on_skip(exc)
                continue
            if len(pending) == self.batch_size:
                yield self._score(pending, input_size_maps, reconstructions)
                pending = []
        if pending:
            yield self._score(pending, input_size_maps, reconstructions)

    def prepare(self, item: Any, index: int = 0) -> _Prepared:
        """One item as the network's [C, S, S] input (docs/method.md §1), its name and size."""
        if isinstance(item, torch.Tensor):
            return self._tensor_item(item, f"tensor[{index}]")
        if has_depth(self.mode):
            return self._depth_item(item, index)
        if isinstance(item, PathLike):
            path = Path(item)
            return _Prepared(model_input(path, self.mode, self.image_size), str(item), image_hw(path))
        if isinstance(item, np.ndarray):
            name = f"array[{index}]"
            return _Prepared(array_input(item, None, self.mode, self.image_size, name=name), name,
                             (int(item.shape[0]), int(item.shape[1])))
        raise TransFusionError(f"input {index} is a {type(item).__name__}; expected an image path, an RGB uint8 "
                               f"HxWx3 array or a float tensor [C, S, S]")

    def _depth_item(self, item: Any, index: int) -> _Prepared:
        """An (rgb, xyz) pair of paths or arrays, or an rgb path with its xyz in the MVTec 3D-AD layout."""
        if isinstance(item, PathLike):
            xyz_path = xyz_path_for(Path(item))
            if not xyz_path.is_file():
                raise TransFusionError(f"'{item}' has no point cloud; expected '{xyz_path}' (mode {self.mode} needs "
                                       f"xyz), or pass an (rgb, xyz) pair")
            item = (item, xyz_path)
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TransFusionError(f"input {index}: mode {self.mode} takes (rgb, xyz) pairs of paths or arrays, or "
                                   f"rgb paths with xyz/ beside rgb/ (MVTec 3D-AD), not a {type(item).__name__}")
        rgb, xyz = item
        named = rgb if isinstance(rgb, PathLike) else xyz
        name = str(named) if isinstance(named, PathLike) else f"array[{index}]"
        # files are read into arrays: array_input gives exactly what model_input gives for the files
        # (the same PIL resize of the same 8-bit pixels, the same point cloud), and the sizes come along
        rgb_arr = None
        if has_rgb(self.mode):
            rgb_arr = read_rgb_uint8(rgb) if isinstance(rgb, PathLike) else rgb
        xyz_arr = read_xyz(xyz) if isinstance(xyz, PathLike) else xyz
        tensor = array_input(rgb_arr, xyz_arr, self.mode, self.image_size, self.depth_norm, name=name)
        shape = np.shape(rgb_arr if rgb_arr is not None else xyz_arr)
        return _Prepared(tensor, name, (int(shape[0]), int(shape[1])))

    def _tensor_item(self, x: torch.Tensor, name: str) -> _Prepared:
        """A [C, S, S] float tensor already in the network's convention, checked."""
        c, s = IMAGE_CHANNELS[self.mode], self.image_size
        if not x.is_floating_point() or tuple(x.shape) != (c, s, s):
            raise TransFusionError(f"{name}: a {x.dtype} tensor of shape {list(x.shape)}; this {self.mode} network "
                                   f"takes float [{c}, {s}, {s}] images (batched [B, {c}, {s}, {s}])")
        x = x.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise TransFusionError(f"{name} holds NaN or inf values")
        rgb = x[rgb_channels(self.mode)]
        if rgb.numel() and (float(rgb.min()) < -1 - 1e-6 or float(rgb.max()) > 1 + 1e-6):
            raise TransFusionError(f"{name}: rgb values span [{float(rgb.min()):g}, {float(rgb.max()):g}]; the network "
                                   f"takes [-1, 1], i.e. (v/255 - 0.5)*2 (pass uint8 arrays to have them converted)")
        return _Prepared(x, name, (s, s))

    def _score(self, batch: list[_Prepared], input_size_maps: bool, reconstructions: bool) -> Detection:
        """The reverse process and scoring of one batch (models/scoring.score_batch)."""
        images = torch.stack([p.tensor for p in batch]).to(self.device)
        maps, recon = score_batch(self.network, self.process, images, self.scoring, self.runtime,
                                  keep_reconstruction=reconstructions)
        maps.check_finite([p.name for p in batch])
        scores = maps.scores.cpu().numpy()
        final = maps.final.cpu()
        resized = None
        if input_size_maps:
            resized = [map_at_size(final[i], p.size) for i, p in enumerate(batch)]
        assert maps.steps_run is not None  # the reverse loop always counts them
        decisions = None if self.threshold is None else [self.threshold.decide(float(s)) for s in scores]
        return Detection(names=[p.name for p in batch], scores=scores, maps=final.numpy(),
                         steps=maps.steps_run.cpu().numpy().astype(np.int64), decisions=decisions,
                         threshold=self.threshold, inputs=images.float().cpu().numpy(),
                         input_sizes=[p.size for p in batch],
                         input_size_maps=resized,
                         reconstructions=None if recon is None else recon.float().cpu().numpy())


def _conditioning_row(categories: list[str], view: str | None, paths: RunPaths, network_key: str) -> int:
    """The row of a class-conditioned network that ``view`` names, or a one-line error."""
    if view is None or view not in categories:
        raise TransFusionError(f"{paths.class_embedding(network_key)}: the network of {paths.root} is "
                               f"class-conditioned; name the category (--category C, or Detector.from_run(run, C)) as "
                               f"one of {', '.join(categories)}")
    return categories.index(view)


def _check_category(paths: RunPaths, category: str, backend: str) -> None:
    """A one-line error for a run folder or category that is not there (a category of the run's
    multi-class network is there)."""
    network_key, _ = network_for(paths, category) if paths.models.is_dir() else (category, None)
    if backend == "onnxruntime" and paths.onnx(network_key).is_file():
        return
    paths.require_weights(network_key)
