"""utils.visualize: files are written, layouts have the expected sizes, colours mean what they should."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.evaluation.metrics import pixel_metrics, roc_curve_points
from utils.reports import figures as V


def sample(c: int, size: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image [c,size,size] in model space, anomaly map, mask) with a square defect."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (c, size, size)).astype(np.float32)
    if c in (1, 4):  # depth channel: negative normalised depth with a missing border
        image[-1] = -0.6 + 0.1 * rng.random((size, size))
        image[-1, :, :10] = 0
    mask = np.zeros((size, size), dtype=bool)
    mask[40:80, 50:100] = True
    amap = np.where(mask, 0.9, 0.05).astype(np.float32)
    return image, amap, mask


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable image"
    return img


@pytest.mark.parametrize("mode,n_panels", [("rgb", 4), ("d", 4), ("rgbd", 6)])
def test_panel_layout(tmp_path: Path, mode: str, n_panels: int) -> None:
    c = {"rgb": 3, "d": 1, "rgbd": 4}[mode]
    image, amap, mask = sample(c)
    path = tmp_path / "sub" / f"{mode}.png"
    V.save_panel(path, image, amap, mask, image * 0.9, mode, score=0.731, title="cat/defect/000")
    img = read(path)
    assert img.shape[1] == n_panels * 160 + (n_panels - 1) * V._GAP
    assert img.shape[0] == 160 + V._CAPTION_H + (V._CAPTION_H + 4)  # panel + caption + title
    # Without a title or score there is no title strip.
    plain = V.render_panel(image, amap, mask, image, mode)
    assert plain.shape == (160 + V._CAPTION_H, img.shape[1], 3)


def test_ground_truth_panel_and_missing_mask() -> None:
    image, amap, mask = sample(3)
    fig = V.render_panel(image, amap, mask, image, "rgb")
    gt = fig[V._CAPTION_H:, 160 + V._GAP: 2 * 160 + V._GAP]
    assert (gt[mask] == 255).all() and (gt[~mask] == 0).all()
    fig = V.render_panel(image, amap, None, image, "rgb")
    gt = fig[V._CAPTION_H:, 160 + V._GAP: 2 * 160 + V._GAP]
    assert (gt == 0).all()
    caption = fig[:V._CAPTION_H, 160 + V._GAP: 2 * 160 + V._GAP]
    assert (caption > 200).any()  # the caption text is there


def test_overlay_is_redder_where_the_map_is_high() -> None:
    image = np.zeros((3, 160, 160), dtype=np.float32)  # mid grey
    amap = np.zeros((160, 160), dtype=np.float32)
    amap[:, :80] = 1.0
    fig = V.render_panel(image, amap, None, image, "rgb").astype(np.int32)
    left = 2 * (160 + V._GAP)
    overlay = fig[V._CAPTION_H:, left:left + 160]
    red_minus_blue = overlay[..., 2] - overlay[..., 0]
    assert red_minus_blue[:, :80].mean() > 50
    assert red_minus_blue[:, 80:].mean() < -50
    # The scale is fixed at 0..1: values above 1 look like 1, not brighter.
    amap2 = amap * 3
    fig2 = V.render_panel(image, amap2, None, image, "rgb").astype(np.int32)
    assert (fig2 == fig).all()


def test_tiny_images_are_upscaled() -> None:
    image, amap, mask = sample(4, size=32)
    fig = V.render_panel(image, amap, mask, image, "rgbd", score=0.5)
    assert fig.shape[1] == 6 * 128 + 5 * V._GAP
    assert fig.shape[0] == 128 + V._CAPTION_H + V._CAPTION_H + 4


def test_depth_panels_show_missing_depth_black() -> None:
    image, amap, mask = sample(1)
    fig = V.render_panel(image, amap, mask, image, "d")
    depth_panel = fig[V._CAPTION_H:, :160]
    assert (depth_panel[:, :10] == 0).all()
    assert (depth_panel[:, 10:].max(axis=2) > 0).all()


def test_panel_accepts_tensors_and_rejects_bad_shapes() -> None:
    image, amap, mask = sample(3)
    fig = V.render_panel(torch.from_numpy(image), torch.from_numpy(amap)[None], torch.from_numpy(mask),
                         torch.from_numpy(image), "rgb")
    assert fig.shape[1] == 4 * 160 + 3 * V._GAP
    with pytest.raises(ValueError):
        V.render_panel(image, amap, mask, image, "rgbd")
    with pytest.raises(ValueError):
        V.render_panel(image, amap[:10], mask, image, "rgb")
    with pytest.raises(ValueError):
        V.render_panel(image, amap, mask, image, "xyz")


def curve_pixels(img: np.ndarray) -> np.ndarray:
    """Where the (blue) curve is drawn: blue well above red and green."""
    b, g, r = (img[..., i].astype(int) for i in range(3))
    return (b - r > 60) & (b - g > 20)


def test_roc_curve_of_a_random_detector_follows_the_diagonal(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < 0.5
    scores = rng.random(4000)
    path = tmp_path / "roc.png"
    fpr, tpr = roc_curve_points(scores, labels)
    V.save_curve(path, fpr, tpr, "ROC", "false positive rate", "true positive rate")
    img = read(path)
    assert img.shape == (V._PLOT_H, V._PLOT_W, 3)
    on_curve = curve_pixels(img)
    x0, x1 = V._LEFT, V._PLOT_W - V._RIGHT
    y0, y1 = V._TOP, V._PLOT_H - V._BOTTOM
    for t in np.linspace(0.1, 0.9, 9):
        px = int(round(x0 + t * (x1 - x0)))
        py = int(round(y1 - t * (y1 - y0)))
        assert on_curve[py - 12:py + 13, px - 12:px + 13].any(), f"no curve near the diagonal at {t:.1f}"
    # Far from the diagonal there is no curve.
    assert not on_curve[y0 + 5:y0 + 60, x0 + 5:x0 + 60].any()  # top left
    assert not on_curve[y1 - 60:y1 - 5, x1 - 60:x1 - 5].any()  # bottom right


def test_curve_axes_and_ranges() -> None:
    # A PRO-style x range: a line at PRO 0.5 spans the whole plot width.
    img = V.render_curve([0.0, 0.3], [0.5, 0.5], "PRO", "FPR", "PRO", xlim=(0, 0.3), note="AUPRO 0.5")
    on_curve = curve_pixels(img)
    x0, x1 = V._LEFT, V._PLOT_W - V._RIGHT
    y_mid = (V._TOP + V._PLOT_H - V._BOTTOM) // 2
    rows = np.flatnonzero(on_curve[:, (x0 + x1) // 2])
    assert rows.size and abs(rows.mean() - y_mid) <= 2
    cols = np.flatnonzero(on_curve[y_mid - 2:y_mid + 3].any(axis=0))
    assert cols.min() <= x0 + 2 and cols.max() >= x1 - 2
    # The axes box is black (top and bottom edges; the curve crosses the sides).
    assert (img[V._TOP, x0:x1] < 60).all() and (img[V._PLOT_H - V._BOTTOM, x0:x1] < 60).all()
    # An empty curve still draws the axes.
    empty = V.render_curve([], [], "t", "x", "y")
    assert not curve_pixels(empty).any() and (empty < 60).any()
    with pytest.raises(ValueError):
        V.render_curve([0, 1], [0], "t", "x", "y")


def test_pro_curve_file_and_undefined_case(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[:2, 8:16, 8:20] = True
    maps = rng.random((4, 32, 32)).astype(np.float32) + 0.5 * masks
    fpr, pro = pixel_metrics(maps, masks)["pro_curve"]
    V.save_curve(tmp_path / "pro.png", fpr, pro, "PRO", "false positive rate", "PRO", xlim=(0, 0.3))
    assert curve_pixels(read(tmp_path / "pro.png")).sum() > 200
    assert pixel_metrics(maps, np.zeros_like(masks))["pro_curve"] is None  # undefined: nothing to draw
    V.save_curve(tmp_path / "none.png", [], [], "PRO", "false positive rate", "PRO", xlim=(0, 0.3))
    assert not curve_pixels(read(tmp_path / "none.png")).any()
    assert read(tmp_path / "none.png").shape == (V._PLOT_H, V._PLOT_W, 3)


def test_grid_layout(tmp_path: Path) -> None:
    panels = [np.full((50 + 10 * i, 80, 3), 30 * i, dtype=np.uint8) for i in range(5)]
    panels.append(np.full((20, 20), 7, dtype=np.uint8))  # grey is accepted too
    path = tmp_path / "grid.png"
    V.save_grid(path, panels, ncols=4)
    img = read(path)
    gap, cell_h, cell_w = 6, 90, 80
    assert img.shape == (2 * cell_h + 3 * gap, 4 * cell_w + 5 * gap, 3)
    # The third picture (value 60, height 70) sits centred in the third cell.
    top = gap + (cell_h - 70) // 2
    left = gap + 2 * (cell_w + gap)
    assert (img[top:top + 70, left:left + 80] == 60).all()
    assert (img[gap:top, left:left + 80] == 255).all()
    with pytest.raises(ValueError):
        V.save_grid(path, [], ncols=2)
