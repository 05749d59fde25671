"""Finding a dataset's samples on disk, in the four layouts (docs/method.md §8).

- ``mvtec``   MVTec AD: ``<cat>/train/good/*.png``, ``<cat>/test/<defect>/*.png``,
  ``<cat>/ground_truth/<defect>/<name>_mask.png``.
- ``visa``    VisA as released (``<cat>/Data/...`` + ``split_csv/1cls.csv``) or in the
  authors' re-arranged layout (``<cat>/{train/good,test/good,test/bad}``,
  ``<cat>/ground_truth/bad/<name>.png``); detected automatically.
- ``mvtec3d`` MVTec 3D-AD: ``<cat>/train/good/{rgb,xyz}``, ``<cat>/test/<defect>/{rgb,xyz,gt}``.
- ``folder``  any folder of good images (``<root>/train/good/*`` or images directly in
  ``<root>``), optionally with an MVTec-style ``test/`` + ``ground_truth/``.

All lists are sorted so that position ``i`` means the same file on every run; the
released foreground masks rely on that (they are matched to training images by position).
"""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from data.catalog import DATASET_CATEGORIES, DATASETS, IMAGE_EXTENSIONS, MVTEC_AD2_PRIVATE_SETS, VISA_CSV, xyz_path_for
from utils.core.errors import TransFusionError

_VISA_COLUMNS = ("object", "split", "label", "image", "mask")
# Sub-folder names of the folder layout that cannot be category names.
_FOLDER_RESERVED = frozenset({"train", "test", "ground_truth", "validation"})
_MASK_EXTENSIONS = (".png", ".PNG", ".jpg", ".JPG", ".bmp", ".tif", ".tiff")


@dataclass
class TestSample:
    """One test image: ``label`` is 1 for anomalous, ``mask_path`` None means an all-zero mask."""

    image_path: Path
    mask_path: Path | None
    label: int
    defect: str
    xyz_path: Path | None = None  # MVTec 3D-AD only; None when the xyz file is absent

    __test__ = False  # not a pytest test class despite the name


# ----------------------------------------------------------------------------- helpers


def check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise TransFusionError(f"unknown dataset '{dataset}'; expected one of: {', '.join(DATASETS)}")
    return dataset


def _check_root(data_path: str | os.PathLike) -> Path:
    root = Path(data_path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise TransFusionError(f"data path '{root}' {what}; pass the folder that holds the category folders")
    return root


@dataclass(frozen=True)
class Skipped:
    """A file in an image folder that discovery left out, and why: ``"extension"`` (not one the
    layout reads), ``"hidden"`` (e.g. macOS ``._x.png``) or ``"unreadable"`` (a broken link or
    not a regular file)."""

    path: Path
    reason: str


def _list_images(folder: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS,
                 skipped: list[Skipped] | None = None) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; what is left out goes to ``skipped``
    (sub-folders are not files and are not counted)."""
    if not folder.is_dir():
        return []
    files = []
    for p in folder.iterdir():
        if p.is_dir():
            continue
        if p.name.startswith("."):
            reason = "hidden"
        elif not p.is_file():
            reason = "unreadable"
        elif p.suffix.lower() not in extensions:
            reason = "extension"
        else:
            files.append(p)
            continue
        if skipped is not None:
            skipped.append(Skipped(p, reason))
    return sorted(files, key=lambda p: p.name)


def _subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _listing(names: list[str], limit: int = 20) -> str:
    if not names:
        return "(nothing)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


_PNG = frozenset({".png"})


def _folder_root(data_path: Path, category: str | None) -> Path:
    """The folder dataset's root: ``data_path/category`` if that sub-folder exists, else ``data_path``."""
    if category and category not in _FOLDER_RESERVED and (data_path / category).is_dir():
        return data_path / category
    return data_path


def visa_layout(data_path: str | os.PathLike, category: str) -> str:
    """``"released"`` if ``split_csv/1cls.csv`` and ``<cat>/Data`` exist, else ``"rearranged"``."""
    root = Path(data_path)
    if (root / VISA_CSV).is_file() and (root / category / "Data").is_dir():
        return "released"
    return "rearranged"


def _find_mask(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for ext in _MASK_EXTENSIONS:
            cand = folder / f"{stem}{suffix}{ext}"
            if cand.is_file():
                return cand
    return None


def _missing_mask_error(image: Path, expected: Path) -> TransFusionError:
    return TransFusionError(
        f"anomalous test image '{image}' has no ground-truth mask; expected '{expected}'"
    )


# ----------------------------------------------------------------------------- categories


def resolve_categories(dataset: str, data_path: str | os.PathLike, category: str) -> list[str]:
    """The categories to run. ``"all"`` → every category of the dataset (all must be present);
    ``"a,b"`` → those, each checked.

    For ``folder`` the single "category" is the folder's own name, unless ``category``
    names a sub-folder of ``data_path``.
    """
    if "," in category:
        names = [c.strip() for c in category.split(",") if c.strip()]
        return list(dict.fromkeys(c for name in names for c in resolve_categories(dataset, data_path, name)))
    check_dataset(dataset)
    root = _check_root(data_path)
    if dataset == "folder":
        if category and category not in ("all", root.name) and category not in _FOLDER_RESERVED:
            if (root / category).is_dir():
                return [category]
            warnings.warn(
                f"{root}: no sub-folder '{category}'; using the folder itself as the single category",
                stacklevel=2,
            )
        return [root.name]
    present = _subdirs(root)
    known = DATASET_CATEGORIES[dataset]
    if not category.strip():
        # root / "" is the root itself: it would be reported as the missing category
        raise TransFusionError(f"--category is empty; give one of the categories in '{root}' "
                               f"({_listing(present)}) or 'all'")
    if category == "all":
        missing = [c for c in known if not (root / c).is_dir()]
        if len(missing) == len(known):
            raise TransFusionError(
                f"'{root}' contains none of the {dataset} categories (expected e.g. '{root / known[0]}'); "
                f"found: {_listing(present)}"
            )
        if missing:
            raise TransFusionError(
                f"category folder(s) missing for --category all: "
                f"{', '.join(str(root / m) for m in missing)}; add them or choose one category"
            )
        return list(known)
    if not category or not (root / category).is_dir():
        raise TransFusionError(
            f"category folder '{root / str(category)}' not found; '{root}' contains: {_listing(present)}"
        )
    return [category]


def present_categories(dataset: str, data_path: str | os.PathLike) -> list[str]:
    """Every category folder under ``data_path`` that holds training images in the dataset's
    layout, sorted: the original's glob ``*`` of -c train_multiclass (docs/method.md §10), here
    without the folders that are not categories (licence files, a split_csv folder...)."""
    check_dataset(dataset)
    root = _check_root(data_path)
    if dataset == "folder":
        subs = [c for c in _subdirs(root) if c not in _FOLDER_RESERVED and (root / c / "train" / "good").is_dir()]
        return subs or [root.name]
    found = []
    for name in _subdirs(root):
        try:
            if find_train_images(dataset, root, name):
                found.append(name)
        except TransFusionError:
            continue  # not a category of this layout
    if not found:
        raise TransFusionError(f"'{root}' holds no {dataset} category with training images (expected e.g. "
                               f"'{root / DATASET_CATEGORIES.get(dataset, ('<category>',))[0]}'); found: "
                               f"{_listing(_subdirs(root))}")
    return found


# ----------------------------------------------------------------------------- VisA csv


def _read_visa_csv(data_path: Path, category: str, split: str) -> list[tuple[int, Path, str, Path | None]]:
    """Rows ``(line, image, label, mask)`` of ``split_csv/1cls.csv`` for one category and split.

    Validates the whole file's columns and split/label values (a malformed csv is
    better reported once, up front, than as a missing file later).
    """
    csv_path = data_path / VISA_CSV
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in _VISA_COLUMNS if c not in header]
            if missing:
                raise TransFusionError(
                    f"VisA split file '{csv_path}' lacks column(s) {', '.join(missing)}; "
                    f"expected the header object,split,label,image,mask"
                )
            reader.fieldnames = header
            raw_rows = list(reader)
    except TransFusionError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TransFusionError(f"cannot read VisA split file '{csv_path}': {' '.join(str(exc).split())}") from exc

    rows: list[tuple[int, Path, str, Path | None]] = []
    for line, row in enumerate(raw_rows, start=2):  # line 1 is the header
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        row_split = values["split"].lower()
        label = values["label"].lower()
        if row_split not in ("train", "test"):
            raise TransFusionError(
                f"VisA split file '{csv_path}' line {line}: split '{values['split']}'; expected 'train' or 'test'"
            )
        if label not in ("normal", "anomaly"):
            raise TransFusionError(
                f"VisA split file '{csv_path}' line {line}: label '{values['label']}'; expected 'normal' or 'anomaly'"
            )
        if values["object"] != category or row_split != split:
            continue
        if not values["image"]:
            raise TransFusionError(f"VisA split file '{csv_path}' line {line}: empty image path")
        image = data_path / values["image"].replace("\\", "/")
        if not image.is_file():
            raise TransFusionError(
                f"VisA split file '{csv_path}' line {line} lists '{image}', which does not exist; "
                f"paths must be relative to '{data_path}'"
            )
        mask: Path | None = None
        if label == "anomaly":
            if split == "train":
                raise TransFusionError(
                    f"VisA split file '{csv_path}' line {line}: anomalous image in the train split; "
                    f"the 1cls protocol trains on normal images only"
                )
            if not values["mask"]:
                raise TransFusionError(
                    f"VisA split file '{csv_path}' line {line}: anomalous image '{image}' has no mask path"
                )
            mask = data_path / values["mask"].replace("\\", "/")
            if not mask.is_file():
                raise _missing_mask_error(image, mask)
        rows.append((line, image, label, mask))
    return rows


# ----------------------------------------------------------------------------- discovery


def find_train_images(dataset: str, data_path: str | os.PathLike, category: str,
                      skipped: list[Skipped] | None = None) -> list[Path]:
    """Training (good) images of one category, sorted by file name; files left out of the image
    folder are added to ``skipped`` when given."""
    check_dataset(dataset)
    root = _check_root(data_path)
    if dataset in ("mvtec", "mvtec_ad2"):
        folder = root / category / "train" / "good"
        images = _list_images(folder, _PNG, skipped)
        pattern = folder / "*.png"
    elif dataset == "mvtec3d":
        folder = root / category / "train" / "good" / "rgb"
        images = _list_images(folder, _PNG, skipped)
        pattern = folder / "*.png"
    elif dataset == "visa":
        if visa_layout(root, category) == "released":
            images = sorted((r[1] for r in _read_visa_csv(root, category, "train")), key=lambda p: (p.name, str(p)))
            if not images:
                raise TransFusionError(
                    f"VisA split file '{root / VISA_CSV}' has no train rows for object '{category}'"
                )
            return images
        folder = root / category / "train" / "good"
        if not folder.is_dir() and not (root / category / "Data").is_dir():
            raise TransFusionError(
                f"VisA category '{root / category}' has neither 'train/good' (re-arranged layout) nor "
                f"'Data' with '{root / VISA_CSV}' (released layout)"
            )
        if not folder.is_dir():
            raise TransFusionError(
                f"VisA category '{root / category}' has a 'Data' folder but '{root / VISA_CSV}' is missing; "
                f"copy split_csv/1cls.csv from the VisA release into '{root}'"
            )
        images = _list_images(folder, skipped=skipped)
        pattern = folder / "*.JPG"
    else:  # folder
        base = _folder_root(root, category)
        folder = base / "train" / "good"
        if not folder.is_dir():
            folder = base
        images = _list_images(folder, skipped=skipped)
        pattern = folder / "*.png|*.jpg"
    if not images:
        raise TransFusionError(f"no training images in '{folder}'; expected files like '{pattern}'")
    return images


def find_test_samples(dataset: str, data_path: str | os.PathLike, category: str,
                      skipped: list[Skipped] | None = None) -> list[TestSample]:
    """Test images with labels and mask paths, sorted by (defect, file name); files left out of
    the image folders are added to ``skipped`` when given."""
    check_dataset(dataset)
    root = _check_root(data_path)
    samples: list[TestSample] = []
    if dataset == "visa" and visa_layout(root, category) == "released":
        for _, image, label, mask in _read_visa_csv(root, category, "test"):
            is_bad = label == "anomaly"
            samples.append(TestSample(image, mask, int(is_bad), "bad" if is_bad else "good"))
        if not samples:
            raise TransFusionError(f"VisA split file '{root / VISA_CSV}' has no test rows for object '{category}'")
        return sorted(samples, key=lambda s: (s.defect, s.image_path.name, str(s.image_path)))

    base = _folder_root(root, category) if dataset == "folder" else root / category
    if dataset == "mvtec_ad2":
        return _mvtec_ad2_public(base, skipped)
    test_dir = base / "test"
    if not test_dir.is_dir():
        if dataset == "folder":
            return []
        raise TransFusionError(f"test folder '{test_dir}' not found; expected '{test_dir}/<defect>/...'")

    for defect in _subdirs(test_dir):
        is_bad = defect != "good"
        if dataset == "mvtec3d":
            images = _list_images(test_dir / defect / "rgb", _PNG, skipped)
        elif dataset == "mvtec":
            images = _list_images(test_dir / defect, _PNG, skipped)
        else:
            images = _list_images(test_dir / defect, skipped=skipped)
        for image in images:
            mask: Path | None = None
            xyz: Path | None = None
            if dataset == "mvtec3d":
                gt = test_dir / defect / "gt" / f"{image.stem}.png"
                mask = gt if gt.is_file() else None
                expected = gt
                xyz_candidate = xyz_path_for(image)
                xyz = xyz_candidate if xyz_candidate.is_file() else None
            elif dataset == "mvtec":
                expected = base / "ground_truth" / defect / f"{image.stem}_mask.png"
                mask = expected if (is_bad and expected.is_file()) else None
            elif dataset == "visa":
                expected = base / "ground_truth" / defect / f"{image.stem}.png"
                mask = _find_mask(expected.parent, image.stem, ("",)) if is_bad else None
            else:  # folder: accept MVTec's <stem>_mask.png and plain <stem>.png
                expected = base / "ground_truth" / defect / f"{image.stem}_mask.png"
                mask = _find_mask(expected.parent, image.stem, ("_mask", "")) if is_bad else None
            if is_bad and mask is None:
                raise _missing_mask_error(image, expected)
            samples.append(TestSample(image, mask, int(is_bad), defect, xyz))
    if not samples and dataset != "folder":
        raise TransFusionError(f"no test images under '{test_dir}'; expected '{test_dir}/<defect>/*.png'")
    return sorted(samples, key=lambda s: (s.defect, s.image_path.name))




def _mvtec_ad2_public(base: Path, skipped: list[Skipped] | None) -> list[TestSample]:
    """MVTec AD 2's labelled test set: ``test_public/{good,bad}/*.png``, the masks of ``bad`` in
    ``test_public/ground_truth/bad/<name>_mask.png`` (docs/method.md §11)."""
    test_dir = base / "test_public"
    if not test_dir.is_dir():
        raise TransFusionError(f"test folder '{test_dir}' not found; expected '{test_dir}/good' and '{test_dir}/bad'")
    samples = []
    for defect in ("bad", "good"):
        for image in _list_images(test_dir / defect, _PNG, skipped):
            expected = test_dir / "ground_truth" / "bad" / f"{image.stem}_mask.png"
            mask = expected if defect == "bad" and expected.is_file() else None
            if defect == "bad" and mask is None:
                raise _missing_mask_error(image, expected)
            samples.append(TestSample(image, mask, int(defect == "bad"), defect))
    if not samples:
        raise TransFusionError(f"no test images under '{test_dir}'; expected '{test_dir}/good/*.png' and 'bad/*.png'")
    return samples


def find_private_images(data_path: str | os.PathLike, category: str) -> dict[str, list[Path]]:
    """MVTec AD 2's two unlabelled test sets of one scenario, ``{"test_private": [...],
    "test_private_mixed": [...]}``, each sorted by name; a missing folder is an error."""
    base = _check_root(data_path) / category
    found = {}
    for split in MVTEC_AD2_PRIVATE_SETS:
        folder = base / split
        if not folder.is_dir():
            raise TransFusionError(f"'{folder}' not found: MVTec AD 2 scenarios hold "
                                   f"{' and '.join(MVTEC_AD2_PRIVATE_SETS)} (unpack the whole dataset)")
        found[split] = _list_images(folder, _PNG)
    return found


def find_validation_images(dataset: str, data_path: str | os.PathLike, category: str) -> list[Path]:
    """Good images of a layout's ``validation/good`` split, which training never reads: MVTec 3D-AD's
    ``<cat>/validation/good/rgb/*.png``, else ``<cat>/validation/good/*`` where a layout has one
    (the folder layout may). Empty when there is none."""
    check_dataset(dataset)
    root = _check_root(data_path)
    if dataset == "visa" and visa_layout(root, category) == "released":
        return []
    base = _folder_root(root, category) if dataset == "folder" else root / category
    if dataset == "mvtec3d":
        return _list_images(base / "validation" / "good" / "rgb", _PNG)
    png_only = dataset in ("mvtec", "mvtec_ad2")
    return _list_images(base / "validation" / "good", _PNG if png_only else IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------- what a run found


@dataclass
class CategoryScan:
    """What discovery found for one category and what it left out, for the run to say."""

    category: str
    root: Path
    extensions: str                 # what the layout's image folders read, for the message
    train: int | None = None        # None: not looked for, or none found
    test: int | None = None
    anomalous: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why a part was not found

    def line(self, shown: int = 3) -> str:
        """``[cat] 6 training images, 7 test images (4 anomalous); skipped 1 file: ...``."""
        parts = []
        if self.train is not None:
            parts.append(f"{self.train} training image{'s' * (self.train != 1)}")
        if self.test is not None:
            parts.append(f"{self.test} test image{'s' * (self.test != 1)} ({self.anomalous} anomalous)")
        text = f"[{self.category}] found " + (", ".join(parts) or "no images")
        if self.skipped:
            text += f"; skipped {len(self.skipped)} file{'s' * (len(self.skipped) != 1)}: " + "; ".join(
                self._reason(reason, shown) for reason in ("extension", "hidden", "unreadable")
                if any(k.reason == reason for k in self.skipped))
        return text

    def _reason(self, reason: str, shown: int) -> str:
        paths = [k.path for k in self.skipped if k.reason == reason]
        names = [str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p) for p in paths]
        why = {"extension": f"with an extension this layout does not read (it reads {self.extensions})",
               "hidden": "hidden", "unreadable": "unreadable (a broken link or not a regular file)"}[reason]
        return f"{len(paths)} {why}: {_listing(names, shown)}"


def scan_category(dataset: str, data_path: str | os.PathLike, category: str, train: bool = True,
                  test: bool = True) -> CategoryScan:
    """Count a category's training and/or test images and collect what the folders held that is
    not used. Never raises for a missing part: the finders themselves say what is wrong when the
    run needs that part."""
    root = _check_root(data_path)
    base = _folder_root(root, category) if dataset == "folder" else root / category
    scan = CategoryScan(category, base, ".png" if dataset in ("mvtec", "mvtec3d", "mvtec_ad2") else
                        " ".join(sorted(IMAGE_EXTENSIONS)))
    if train:
        try:
            scan.train = len(find_train_images(dataset, root, category, scan.skipped))
        except TransFusionError as exc:
            scan.problems.append(str(exc))
    if test:
        try:
            samples = find_test_samples(dataset, root, category, scan.skipped)
            scan.test, scan.anomalous = len(samples), sum(s.label for s in samples)
        except TransFusionError as exc:
            scan.problems.append(str(exc))
    return scan
