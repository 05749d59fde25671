"""The original's defaults on the paths no reference tensor pins (docs/method.md §1, §2, §5), and the
synthesis preview that shows what training will see. Expected values come from the method's text (docs/method.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import utils.training.trainer as training
from tests.fixtures.helpers import TINY_FLAGS, TINY_STEPS, cli
from tests.fixtures.layouts import make_mvtec, make_mvtec3d
from utils.Argparser import parse_args
from utils.run.settings import unet_config


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), category="bottle", n_train=5, n_test_good=2,
                      defects=("crack",), n_per_defect=2, size=48)


@pytest.fixture(scope="module")
def mvtec3d(tmp_path_factory) -> Path:
    return make_mvtec3d(tmp_path_factory.mktemp("mvtec3d"), n_train=3, n_test_good=1, n_per_defect=1, size=64)


def _with_fg_masks(flags: list[str]) -> list[str]:
    return [f for f in flags if f != "--no-fg-masks"]


# ----------------------------------------------------------------------------- parser defaults


def test_parser_defaults_are_the_released_command_lines():
    args = parse_args(["-c", "train", "-r", "x", "-d", "x"])
    assert args.eval_epoch_num == 750 and args.memory_format == "contiguous"
    assert args.fg_mask_path is None and not args.no_fg_masks  # None: ./fg_masks/ where it holds masks
    assert args.preview_synthesis is None
    for bad in (["--preview-synthesis", "0"], ["--preview-synthesis", "-3"]):
        with pytest.raises(SystemExit):
            parse_args(["-c", "train", "-r", "x", "-d", "x", *bad])


@pytest.mark.parametrize("flags, width", [([], 128), (["--unet-channel-num", "16"], 32),
                                          (["--unet-channel-num", "64"], 128)])
def test_rgbd_doubles_the_channel_number(flags, width):
    """docs/method.md §5: --unet-channel-num N means 2N channels in rgbd (the two-branch network)."""
    args = parse_args(["-c", "train", "-r", "x", "-d", "x", "-ds", "mvtec3d", "--mode", "rgbd", *flags])
    assert unet_config(args).n_channels == width
    if width // 2 >= 32:  # rgb needs a multiple of 32 (GroupNorm(32)): N itself
        rgb = parse_args(["-c", "train", "-r", "x", "-d", "x", *flags])
        assert unet_config(rgb).n_channels == width // 2


@pytest.mark.slow
def test_original_rgbd_command_line_tests_its_own_checkpoint(mvtec3d, tmp_path):
    """--mode rgbd --unet-channel-num 16 trains a 32-channel two-branch network, and the same
    flags test it (the released command lines run unchanged)."""
    flags = list(TINY_FLAGS)
    flags[flags.index("--unet-channel-num") + 1] = "16"
    common = ["-d", str(mvtec3d), "-ds", "mvtec3d", "--mode", "rgbd", "--category", "tire",
              "--log-path", str(tmp_path), "-r", "rgbd", *flags]
    cli("-c", "train", "--epoch-num", "1", *common)
    sd = torch.load(tmp_path / "rgbd" / "models" / "tire_model.pkl", weights_only=True)
    assert sd["model.time_emb.linear_1.weight"].shape[1] == 32  # n_channels = 2 x 16
    result = cli("-c", "test", *common)
    assert "AVG AUROC" in result.stdout


# ----------------------------------------------------------------------------- foreground masks


def _released_masks(root: Path, n: int, suffix: str) -> Path:
    """Masks covering the left half only, at the released path layout."""
    folder = root / "fg_masks" / "mvtec_masks" / "bottle" / "train" / "good"
    folder.mkdir(parents=True)
    m = np.zeros((48, 48), np.uint8)
    m[:, :24] = 255
    for i in range(n):
        Image.fromarray(m).save(folder / f"{i:03d}{suffix}", quality=100)
    return folder


@pytest.mark.parametrize("suffix", [".png", ".JPG"])
def test_default_fg_mask_folder_is_picked_up(mvtec, tmp_path, monkeypatch, suffix):
    """docs/method.md §5: foreground masks are read from ./fg_masks/ by default; anomalies then only land
    where the masks allow (left half, plus the 5x5 dilation)."""
    monkeypatch.chdir(tmp_path)
    folder = _released_masks(tmp_path, 5, suffix)
    result = cli("-c", "train", "-r", "fg", "-d", str(mvtec), "--category", "bottle", "--log-path", "logs",
                 "--preview-synthesis", "8", *_with_fg_masks(TINY_FLAGS))
    assert "foreground masks: released, from fg_masks/mvtec_masks/bottle/train/good" in result.stdout
    with np.load(tmp_path / "logs" / "fg" / "synthesis_preview" / "bottle.npz") as z:
        mask, t = z["mask"], z["t"]
    assert mask.sum() > 0
    unrotated = mask[:, 0]  # rotation (30 % of samples) may move a mask by up to 20 degrees
    right = unrotated[:, :, 16 + 2 + 8:].sum()  # 32 px: masks cover columns < 16, +2 dilation
    assert right <= 0.2 * unrotated.sum(), (right, unrotated.sum())
    assert folder.is_dir() and t.shape == (8,)


def test_default_fg_mask_folder_without_masks_computes_them_and_says_so(mvtec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fg_masks").mkdir()  # present, but without this category
    result = cli("-c", "train", "-r", "fg", "-d", str(mvtec), "--category", "bottle", "--log-path", "logs",
                 "--epoch-num", "1", *_with_fg_masks(TINY_FLAGS))
    lines = [ln for ln in result.stdout.splitlines() if "foreground masks" in ln]
    assert len(lines) == 1 and "no released foreground masks in fg_masks/mvtec_masks/bottle" in lines[0]
    assert "preview.png" in lines[0] and (tmp_path / "logs/fg/fg_masks/bottle/preview.png").is_file()
    import json

    meta = json.loads((tmp_path / "logs/fg/models/bottle_meta.json").read_text())
    assert meta["fg_masks"]["kind"] == "computed"


def test_fewer_released_masks_than_images_names_the_first_image_without_one(mvtec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _released_masks(tmp_path, 3, ".png")
    result = cli("-c", "train", "-r", "fg", "-d", str(mvtec), "--category", "bottle", "--log-path", "logs",
                 "--epoch-num", "1", *_with_fg_masks(TINY_FLAGS), check=False)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1
    assert "003.png' has no foreground mask" in err[0] and "3 masks for 5 training images" in err[0]


# ----------------------------------------------------------------------------- evaluation schedule


@pytest.mark.slow
def test_evaluation_during_training_follows_the_released_schedule(mvtec, tmp_path, monkeypatch):
    """docs/method.md §5: after the epoch of 0-based index e whenever e % --eval-epoch-num == 0, and the
    start-up line says when and how to turn it off."""
    evaluated = []
    real = training.evaluate

    def spy(*a, **k):
        import sys

        evaluated.append(sys._getframe(1).f_locals["self"].state.epoch)  # epochs done when evaluating
        return real(*a, **k)

    monkeypatch.setattr(training, "evaluate", spy)
    flags = [f for f in TINY_FLAGS]
    flags[flags.index("--eval-epoch-num") + 1] = "2"
    result = cli("-c", "train", "-r", "ev", "-d", str(mvtec), "--category", "bottle", "--log-path", str(tmp_path),
                 "--epoch-num", "5", *flags)
    assert evaluated == [1, 3, 5]  # after the epochs of 0-based index 0, 2 and 4
    line = next(ln for ln in result.stdout.splitlines() if "evaluating the" in ln)
    assert "after epochs 1, 3, 5" in line and "--eval-epoch-num 0 turns it off" in line
    real_after = training.evaluates_after
    assert [real_after(e, 750) for e in (0, 1, 749, 750, 751, 1499)] == [True, False, False, True, False, False]
    assert not any(real_after(e, 0) for e in range(5))


# ----------------------------------------------------------------------------- synthesis preview


def _beta(t: np.ndarray) -> np.ndarray:
    return (t / (TINY_STEPS - 1)).reshape(-1, 1, 1, 1)  # linspace(0, 1, T)


@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
def test_synthesis_preview_follows_the_spec(mvtec, mvtec3d, tmp_path, mode):
    data, ds, cat = (mvtec, "mvtec", "bottle") if mode == "rgb" else (mvtec3d, "mvtec3d", "tire")
    n_train = 5 if mode == "rgb" else 3
    n = 2 * n_train + 1  # more than the training set: continues into the next epochs
    flags = [*TINY_FLAGS]
    flags[flags.index("--img-size") + 1] = "64"
    cli("-c", "train", "-r", "p", "-d", str(data), "-ds", ds, "--mode", mode, "--category", cat,
        "--log-path", str(tmp_path), "--preview-synthesis", str(n), *flags)
    folder = tmp_path / "p" / "synthesis_preview"
    assert not (tmp_path / "p" / "models").exists()  # nothing trained
    c = {"rgb": 3, "d": 1, "rgbd": 4}[mode]
    with np.load(folder / f"{cat}.npz") as z:
        x0, x_t, eps, mask, mask_c, t = (z[k] for k in ("x0", "x_t", "eps", "mask", "mask_c", "t"))
    assert x0.shape == x_t.shape == eps.shape == (n, c, 64, 64) and mask.shape == mask_c.shape == (n, 1, 64, 64)
    assert t.shape == (n,) and all(a.dtype == np.float32 for a in (x0, x_t, eps, mask, mask_c))
    assert ((1 <= t) & (t <= TINY_STEPS - 1)).all()
    assert not mask_c[t == TINY_STEPS - 1].any()  # docs/method.md §2: no condition mask at t = T-1
    # Half-batch rule (batch 4): positions 2 and 3 of every full batch stay normal.
    batch_pos = np.concatenate([np.arange(min(4, b)) for b in _batch_sizes(n_train, 4, n)])[:n]
    normal = batch_pos >= 2
    assert not mask[normal].any() and not eps[normal].any() and np.array_equal(x_t[normal], x0[normal])
    assert mask[~normal].any()
    assert not eps[np.broadcast_to(mask == 0, eps.shape)].any()  # eps = M * A: zero outside M
    # docs/method.md §3 forward process, per channel kind
    beta = _beta(t)
    rgb, depth = {"rgb": (slice(0, 3), None), "d": (None, slice(0, 1)), "rgbd": (slice(0, 3), slice(3, 4))}[mode]
    if rgb is not None:
        expected = (1 - mask) * x0[:, rgb] + mask * ((1 - beta) * x0[:, rgb] + beta * eps[:, rgb])
        np.testing.assert_allclose(x_t[:, rgb], expected, atol=1e-5)
    if depth is not None:
        np.testing.assert_allclose(x_t[:, depth], x0[:, depth] + beta * mask * eps[:, depth], atol=1e-6)
        assert np.abs(eps[:, depth]).max() <= 0.1 + 1e-6
        for i in np.flatnonzero(mask.reshape(n, -1).sum(axis=1) > 20):
            inside = eps[i, depth][mask[i] > 0]
            assert np.abs(inside).min() < 0.005  # the bump rises from 0 at the mask's edge
    png = np.asarray(Image.open(folder / f"{cat}.png"))
    assert png.shape[0] > n * 64 and png.std() > 10  # one row per sample, not blank


def _batch_sizes(n_items: int, bs: int, n: int) -> list[int]:
    """Batch sizes over as many epochs as ``n`` samples need (the last batch of an epoch is short)."""
    sizes = []
    while sum(sizes) < n:
        sizes += [bs] * (n_items // bs) + ([n_items % bs] if n_items % bs else [])
    return sizes


@pytest.mark.slow
def test_synthesis_preview_is_what_training_sees(mvtec, tmp_path, monkeypatch):
    """The preview's samples are the training step's own inputs, in order."""
    seen = []
    real = training.make_training_input
    monkeypatch.setattr(training, "make_training_input", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    common = ["-d", str(mvtec), "--category", "bottle", "--log-path", str(tmp_path), *TINY_FLAGS]
    cli("-c", "train", "-r", "real", "--epoch-num", "1", *common)
    cli("-c", "train", "-r", "prev", "--preview-synthesis", "5", *common)
    with np.load(tmp_path / "prev" / "synthesis_preview" / "bottle.npz") as z:
        for name in ("x0", "x_t", "eps", "mask", "mask_c", "t"):
            trained = torch.cat([getattr(ti, name) for ti in seen]).numpy()[:5]
            np.testing.assert_array_equal(z[name], trained.astype(z[name].dtype), err_msg=name)
