"""A run folder and every path in it: the one home of its layout.

Layout of ``<log-path>/<run-name>/``::

    models/<category>_model.pkl        weights only, the released checkpoints' format
                                       (a state dict whose keys start with ``model.``)
    models/*_model.pkl                 -c train_multiclass: the one network of every category, under the
                                       original's literal name (a file called "*_model.pkl"); every other
                                       file of that network uses the key "multiclass" in place of
                                       <category> below (multiclass_meta.json, multiclass_state_...,
                                       tensorboard/multiclass/, calibration/multiclass/, ...), and its
                                       per-category results go to results/multiclass/<category>/
    models/multiclass_class_embedding.pt
                                       --class-embedding: the categories and their rows (the weights
                                       beside it stay the paper's network)
    models/<category>_meta.json        side file: network config, image size, T, depth range,
                                       epoch, the thresholds of -c test and -c calibrate
    models/<category>_state_eNNNNN_bNNNNN.pt
                                       training state for --resume after epoch N, batch N
                                       (the last --keep-last kept)
    models/<category>.onnx             -c export: the network in ONNX (dynamic batch, the run's size)
    models/<category>_onnx.json        -c export: what the reverse process needs around it
    models/<category>.train.lock       held by the -c train of that category (pid, host, start)
    tensorboard/<category>/            TensorBoard logs
    results/<category>/                -c test: per-image CSV, summary JSON, curves, report.html,
                                       visualizations/ (--visualize)
    results/<category>.lock            held by a -c test while it writes that category's results
    results/index.html                 -c test: every category's figures, linked to its report
    output.csv                         one row per evaluated category (appended)
    qualitative.png                    -c demo: a few defects of every category
    calibration/<category>/            -c calibrate: scores.csv and calibration.json
    predictions/<category>/<stamp>/    -c predict: one folder per invocation (its local start time,
                                       made unique): heat maps, predictions.jsonl, report.html,
                                       summary.json; nothing of an earlier one is replaced
    predictions/<category>/index.html  every -c predict into the category, newest first
    synthesis_preview/<category>.npz   -c train --preview-synthesis: samples (and .png)
    fg_masks/<category>/               foreground masks computed where none were released
    replaced-<time>/<category>/        what --overwrite moved aside (weights, meta, states, results)
    submission/                        -c submit (MVTec AD 2): anomaly_images/ and anomaly_images_thresholded/,
                                       exactly what the benchmark server takes, nothing else
    submission_progress/<category>.json
                                       -c submit: the threshold and schedule a submission was made with

Every file is written atomically (temporary file + rename, utils/core/atomic.py).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from utils.core.errors import TransFusionError

# The key of the one network -c train_multiclass trains, in every file name of the run but its
# weights, which keep the original's literal "*" (docs/method.md §10): a shell-friendly name for
# the meta, states, locks, results, logs and calibration, and what listings show instead of "*".
MULTICLASS = "multiclass"
_WEIGHTS_STEM = {MULTICLASS: "*"}


class RunPaths:
    """The paths of one run folder, ``<log-path>/<run-name>`` (the layout above)."""

    def __init__(self, log_path: str | Path, run_name: str) -> None:
        self.root = Path(log_path) / run_name

    @classmethod
    def at(cls, run_dir: str | os.PathLike) -> "RunPaths":
        """The run folder ``run_dir`` itself (``<log-path>/<run-name>``), as the Python API names it."""
        root = Path(run_dir)
        if root.name in ("", ".", ".."):
            root = root.resolve()
        return cls(root.parent, root.name)

    @property
    def models(self) -> Path:
        return self.root / "models"

    def weights(self, category: str) -> Path:
        """``<category>_model.pkl``; the multi-class network's is the original's ``*_model.pkl``."""
        return self.models / f"{_WEIGHTS_STEM.get(category, category)}_model.pkl"

    def class_embedding(self, category: str) -> Path:
        """-c train_multiclass --class-embedding: the categories and their learned rows."""
        return self.models / f"{category}_class_embedding.pt"

    def meta(self, category: str) -> Path:
        return self.models / f"{category}_meta.json"

    def onnx(self, category: str) -> Path:
        """-c export: the network as ONNX."""
        return self.models / f"{category}.onnx"

    def onnx_meta(self, category: str) -> Path:
        """-c export: the reverse process's settings beside the ONNX network."""
        return self.models / f"{category}_onnx.json"

    def categories(self) -> list[str]:
        """The categories this run holds weights for, sorted ("multiclass" for ``*_model.pkl``)."""
        stems = (p.name[: -len("_model.pkl")] for p in self.models.glob("*_model.pkl"))
        return sorted(MULTICLASS if stem == "*" else stem for stem in stems)

    def train_state(self, category: str, epoch: int, batch: int = 0) -> Path:
        """Training state after ``epoch`` full epochs and ``batch`` batches of the next one."""
        return self.models / f"{category}_state_e{epoch:05d}_b{batch:05d}.pt"

    def train_states(self, category: str) -> list[Path]:
        """Saved training states, oldest (fewest steps) first."""
        pat = re.compile(rf"^{re.escape(category)}_state_e(\d+)_b(\d+)\.pt$")
        found = []
        if self.models.is_dir():
            for p in self.models.iterdir():
                m = pat.match(p.name)
                if m:
                    found.append(((int(m.group(1)), int(m.group(2))), p))
        return [p for _, p in sorted(found)]

    def tensorboard(self, category: str) -> Path:
        return self.root / "tensorboard" / category

    def results(self, category: str, of: str | None = None) -> Path:
        """-c test's files for ``category``; ``of=MULTICLASS``: those of the multi-class network's test
        of that category (results/multiclass/<category>/)."""
        return self.root / "results" / category if of is None else self.root / "results" / of / category

    def results_index(self, of: str | None = None) -> Path:
        """The page over every tested category: results/index.html (results/multiclass/index.html)."""
        return (self.root / "results" if of is None else self.root / "results" / of) / "index.html"

    def visualizations(self, category: str, of: str | None = None) -> Path:
        """-c test --visualize: one panel per test image."""
        return self.results(category, of) / "visualizations"

    @property
    def qualitative_figure(self) -> Path:
        """-c demo: a few defects of every category in one picture."""
        return self.root / "qualitative.png"

    def calibration(self, category: str, of: str | None = None) -> Path:
        """-c calibrate's scores and record (the threshold itself goes into the meta); ``of=MULTICLASS``:
        those of one category of the multi-class network (calibration/multiclass/<category>/)."""
        return self.root / "calibration" / category if of is None else self.root / "calibration" / of / category

    @property
    def output_csv(self) -> Path:
        return self.root / "output.csv"

    def predictions(self, category: str) -> Path:
        """-c predict's folder for ``category``: one sub-folder per invocation, and the index."""
        return self.root / "predictions" / category

    def prediction(self, category: str, stamp: str) -> Path:
        """One -c predict's heat maps, predictions.jsonl, report.html and summary.json."""
        return self.predictions(category) / stamp

    def predictions_index(self, category: str) -> Path:
        """The page that lists every -c predict into ``category``."""
        return self.predictions(category) / "index.html"

    def synthesis_preview(self, category: str, suffix: str) -> Path:
        """--preview-synthesis: ``<category>.npz`` (the samples) or ``.png`` (their picture)."""
        return self.root / "synthesis_preview" / f"{category}{suffix}"

    def fg_mask_cache(self, category: str) -> Path:
        return self.root / "fg_masks" / category

    def train_lock(self, category: str) -> Path:
        """Held by the one -c train that trains ``category`` in this run (utils/run/locks.py)."""
        return self.models / f"{category}.train.lock"

    def results_lock(self, category: str) -> Path:
        """Held while a -c test writes ``category``'s results (a training does not take it)."""
        return self.root / "results" / f"{category}.lock"

    @property
    def submission(self) -> Path:
        """-c submit's folder (the default of --submission-dir): only the server's files."""
        return self.root / "submission"

    def submission_record(self, category: str) -> Path:
        """-c submit's record of one scenario (kept out of the submission folder)."""
        return self.root / "submission_progress" / f"{category}.json"

    def has_weights(self, category: str) -> bool:
        return self.weights(category).exists()

    def replaced(self, stamp: str) -> Path:
        """Where --overwrite moves what it replaces: ``replaced-<stamp>/<category>/``."""
        return self.root / f"replaced-{stamp}"

    def require_models(self) -> None:
        """A one-line error when this is not a run folder with weights in it."""
        if not self.models.is_dir():
            raise TransFusionError(
                f"no checkpoints in {self.models}: is {self.root} a run folder (<log-path>/<run-name>)? Train first "
                f"(-c train -r {self.root.name}) or fetch the released weights with scripts/download_weights.py")

    def require_weights(self, category: str) -> None:
        """A one-line error when the run holds no weights for ``category`` (naming those it holds)."""
        self.require_models()
        if category == MULTICLASS and not self.has_weights(category):
            raise TransFusionError(f"run {self.root} has no multi-class network ({self.weights(category)}): train one "
                                   f"with -c train_multiclass -r {self.root.name}, or place multi-class weights there")
        if not self.has_weights(category):
            found = self.categories()
            raise TransFusionError(f"run {self.root} has no weights for category {category!r} (it holds "
                                   f"{', '.join(found) if found else 'none'})")

    def pick_category(self, category: str) -> str:
        """``--category``, or the run's only category when it is 'all' ("*" names the multi-class
        network, as in the original)."""
        if category == "*":
            return MULTICLASS
        if category != "all":
            return category
        self.require_models()
        found = self.categories()
        if len(found) == 1:
            return found[0]
        raise TransFusionError(f"this command needs --category: {self.models} holds "
                               f"{', '.join(found) if found else 'no models'}")
