"""Training with its images decoded once (utils/training/caching.py): the rule that decides it,
the same trained weights as decoding every epoch, with and without DataLoader workers, and what
the run and --dry-run say about it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import utils.training.caching as caching
from data.textures import TextureSource
from tests.fixtures.helpers import TINY_FLAGS, cli
from tests.fixtures.layouts import make_mvtec
from utils.Argparser import parse_args
from utils.training.command import run_train

MIB = 2 ** 20


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 10 images at bs 4: batches of 4, 4, 2, so every epoch ends on a short batch
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=10, n_test_good=1, defects=("crack",),
                      n_per_defect=1, size=48)


@pytest.fixture(scope="module")
def dtd(tmp_path_factory) -> Path:
    """A DTD-layout folder of JPEGs of several sizes, so the texture images are resized too."""
    root = tmp_path_factory.mktemp("dtd")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(90, 120), (32, 32), (41, 67), (200, 150), (64, 48), (77, 77)]):
        sub = root / "images" / ("banded" if i % 2 else "dotted")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"{i}.jpg", quality=85)
    return root


def _train(data: Path, dtd: Path, logs: Path, *extra: str) -> tuple[bytes, str]:
    result = cli("-c", "train", "-r", "c", "-d", str(data), "--category", "bottle", "--log-path", str(logs),
                 "--dtd-path", str(dtd), "--epoch-num", "2", *TINY_FLAGS, *extra)
    return (logs / "c" / "models" / "bottle_model.pkl").read_bytes(), result.stdout


@pytest.mark.slow
def test_trained_weights_are_the_same_with_and_without_the_cache_with_0_and_2_workers(data, dtd, tmp_path):
    weights = {}
    for workers in ("0", "2"):
        for cache in ("kept", "decoded every epoch"):
            flags = ["--workers", workers] + (["--no-image-cache"] if cache != "kept" else [])
            weights[workers, cache], out = _train(data, dtd, tmp_path / f"{workers}-{cache[:4]}", *flags)
            said = [line for line in out.splitlines() if "decoded once" in line]
            if cache == "kept":  # 10 images at 32 px: 10 * 32 * 32 * 3 bytes; 6 textures likewise
                assert said and "10 training images" in said[0] and "6 texture images" in said[0], out
            else:
                assert not said, out
    reference = weights["0", "decoded every epoch"]  # the data path as it was
    assert all(w == reference for w in weights.values()), [k for k, w in weights.items() if w != reference]


@pytest.mark.slow
def test_images_that_do_not_fit_are_decoded_every_epoch_after_one_note(data, dtd, tmp_path, monkeypatch):
    reference, _ = _train(data, dtd, tmp_path / "fits")
    # 10 images at 32 px take 30 KiB; with 50 KiB available, half of it (25 KiB) is too little
    monkeypatch.setattr(caching, "available_memory", lambda: 50 * 1024)
    weights, out = _train(data, dtd, tmp_path / "tight")
    notes = [line for line in out.splitlines() if "note:" in line and "training images" in line]
    assert len(notes) == 1 and "decoding them from their files every epoch" in notes[0], out
    assert "decoded once" not in out
    assert weights == reference


def test_the_rule_keeps_what_fits_in_half_the_memory_shared_by_the_processes() -> None:
    # hazelnut, 391 images at 256 px: 391 * 256 * 256 * 3 = 76,873,728 bytes
    need = 391 * 256 * 256 * 3
    plan = caching.plan(391, "rgb", 256, None, refused=False, available=2 * need, processes=1)
    assert plan.image_bytes == need and plan.budget == need and plan.keeps_images
    assert not caching.plan(391, "rgb", 256, None, refused=False, available=2 * need - 2, processes=1).keeps_images
    # two training processes on the machine (torchrun): each keeps its own, each gets half the share
    assert not caching.plan(391, "rgb", 256, None, refused=False, available=2 * need, processes=2).keeps_images
    assert caching.plan(391, "rgb", 256, None, refused=False, available=4 * need, processes=2).keeps_images
    assert not caching.plan(391, "rgb", 256, None, refused=True, available=100 * need, processes=1).keeps_images
    assert caching.plan(391, "d", 256, None, refused=False, available=100 * need, processes=1).image_bytes == 0
    assert caching.plan(391, "rgbd", 256, None, refused=False, available=2 * need, processes=1).keeps_images
    # an unknown amount of memory does not stop the cache (the line says it is unknown)
    unknown = caching.CachePlan(391, need, 0, 0, None, 1, False)
    assert unknown.keeps_images and "unknown" in unknown.line("hazelnut", 256)


def test_textures_are_kept_only_when_they_fit_beside_the_images(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / "images" / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / "images" / "x" / f"{i}.png")
    textures = TextureSource.from_dtd(tmp_path)
    images, tex = 100 * 64 * 64 * 3, 4 * 64 * 64 * 3
    both = caching.plan(100, "rgb", 64, textures, refused=False, available=2 * (images + tex), processes=1)
    assert both.texture_bytes == tex and both.keeps_images and both.keeps_textures
    only = caching.plan(100, "rgb", 64, textures, refused=False, available=2 * (images + tex) - 2, processes=1)
    assert only.keeps_images and not only.keeps_textures and "do not fit too" in only.line("c", 64)
    textures.keep_decoded(64)  # an earlier category kept them: nothing more to keep for them
    assert caching.plan(100, "rgb", 64, textures, refused=False, available=2 * images, processes=1).texture_bytes == 0


@pytest.mark.slow
def test_dry_run_reports_the_size_of_the_cache(data, tmp_path):
    out = cli("-c", "train", "-r", "dry", "-d", str(data), "--category", "bottle", "--log-path", str(tmp_path),
              "--dry-run", "--img-size", "256", "--device", "cpu").stdout
    # 10 images at 256 px: 10 * 256 * 256 * 3 = 1,966,080 bytes = 1.9 MiB
    line = next(line for line in out.splitlines() if line.startswith("image cache:"))
    assert "10 training images (bottle, the largest category) take 1.9 MiB decoded at 256 px" in line
    assert line.endswith("kept in memory")
    out = cli("-c", "train", "-r", "dry", "-d", str(data), "--category", "bottle", "--log-path", str(tmp_path),
              "--dry-run", "--no-image-cache", "--device", "cpu").stdout
    assert "--no-image-cache: training decodes them from their files every epoch" in out


@pytest.mark.slow
def test_each_epoch_records_its_samples_and_its_wait_for_data(data, dtd, tmp_path):
    args = parse_args(["-c", "train", "-r", "t", "-d", str(data), "--category", "bottle", "--log-path",
                       str(tmp_path), "--epoch-num", "3", *TINY_FLAGS])
    outcome = run_train(args)["bottle"]
    assert [e.samples for e in outcome.epoch_times] == [10, 10, 10]
    assert all(0 < e.data_wait < e.seconds for e in outcome.epoch_times)
    share = outcome.data_wait_share
    assert share == sum(e.data_wait for e in outcome.epoch_times) / sum(e.seconds for e in outcome.epoch_times)
