"""Built-in demo data: small MVTec-AD-style categories made from textures shipped with scikit-image.

`build_demo_dataset` writes, for each category (brick, grass, gravel):

    <root>/<cat>/train/good/000.png ...
    <root>/<cat>/test/good/000.png ...
    <root>/<cat>/test/<defect>/000.png ...            defect in DEFECT_TYPES
    <root>/<cat>/ground_truth/<defect>/000_mask.png   8-bit, 0 or 255, same size as the image

Normal images are jittered, tinted crops of the grayscale source texture. Defects come from a
generator of their own (drawn strokes, analytic shapes, multiplicative stains, solid objects with
shadows), deliberately *unlike* the trainer's anomaly synthesizer (Perlin-thresholded pastes of
texture patches), so the demo score does not just measure how well the model recognises its own
training augmentation.

Everything is deterministic from `seed` (numpy Generator only) and the cv2 PNG encoder, so the same
parameters give byte-identical files. Nothing is downloaded: the sources are the image files in the
installed skimage package's data folder.
"""
from __future__ import annotations

import shutil
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from data.catalog import DEMO_CATEGORIES, skimage_data_dir
from utils.core.atomic import atomic_write_bytes, atomic_write_json
from utils.core.errors import TransFusionError
from utils.core.json_files import BadJsonFile, load_json_file

DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "foreign")

# Bump whenever the generated pixels change, so cached demo folders from an older generator rebuild.
GENERATOR_VERSION = 2
MANIFEST_NAME = "manifest.json"

# Source crops are taken at a fixed texture scale (source px), then resized to image_size.
_CROP_SRC = 160
# Train crops come from the top rows of the 512x512 source, test crops from the bottom rows, so a
# test image never re-uses train pixels (the split leaves the test region one crop plus a margin).
_TRAIN_ROWS = (0, 320)
_TEST_ROWS = (320, 512)

# Fixed per-category RGB gains applied to the gray texture: makes the images 3-channel and the
# categories visibly different (red-brown brick, green grass, warm grey gravel).
_TINT_RGB: dict[str, tuple[float, float, float]] = {
    "brick": (1.25, 0.80, 0.64),
    "grass": (0.74, 1.10, 0.56),
    "gravel": (1.05, 1.00, 0.90),
    # not a demo category: a fourth texture for benchmarks/multiclass_study.py (cool grey moon surface)
    "moon": (0.92, 0.98, 1.12),
}
# The textures the generator can cut categories from (the demo uses DEMO_CATEGORIES of them).
GENERATOR_TEXTURES: tuple[str, ...] = tuple(_TINT_RGB)

# Defects are rendered on a supersampled canvas and area-averaged back down: that gives smooth
# anti-aliased edges *and* an exact coverage value per pixel from which the mask is thresholded.
_SS = 4
# Acceptance limits for a rendered defect: fraction of the image; mean per-pixel change and shift of
# the mean colour inside the mask (0-255 scale, strongest channel).
_MIN_AREA, _MAX_AREA = 0.005, 0.08
_MIN_MEAN_CHANGE = 30.0
_MIN_MEAN_SHIFT = 25.0
# A partially covered edge pixel joins the mask when it changed by at least this much.
_EDGE_CHANGE = 24.0
# Foreign objects must stand out more: a pale chip on pale gravel just looks like another stone.
_MIN_MEAN_SHIFT_FOREIGN = 40.0


@dataclass(frozen=True)
class DemoSample:
    """One generated image. `clean` is the defect-free image it was drawn on (== image for good)."""

    split: str  # "train" or "test"
    label: str  # "good" or a defect type
    index: int
    image: np.ndarray  # HxWx3 uint8, BGR (cv2 order)
    clean: np.ndarray  # HxWx3 uint8, BGR
    mask: np.ndarray | None  # HxW uint8 0/255; None for good images

    @property
    def stem(self) -> str:
        return f"{self.index:03d}"


@lru_cache(maxsize=None)
def _load_gray(name: str) -> np.ndarray:
    path = (skimage_data_dir() or Path("skimage/data")) / f"{name}.png"
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise TransFusionError(f"demo data: cannot read texture {path} (is scikit-image installed?)")
    return img


# ----------------------------------------------------------------------------- normal images


def make_normal_image(category: str, rng: np.random.Generator, image_size: int, split: str) -> np.ndarray:
    """A defect-free BGR image: random crop of the split's source region, 90° rotation/flip,
    slight brightness/contrast jitter, the category tint, area-resized to image_size."""
    src = _load_gray(category)
    r0, r1 = _TRAIN_ROWS if split == "train" else _TEST_ROWS
    y = int(rng.integers(r0, r1 - _CROP_SRC + 1))
    x = int(rng.integers(0, src.shape[1] - _CROP_SRC + 1))
    crop = src[y : y + _CROP_SRC, x : x + _CROP_SRC].astype(np.float32)
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    # Jitter around the crop's own mean so contrast changes do not also shift brightness.
    contrast = rng.uniform(0.92, 1.08)
    brightness = rng.uniform(-8.0, 8.0)
    mean = float(crop.mean())
    crop = (crop - mean) * contrast + mean + brightness
    r, g, b = _TINT_RGB[category]
    rgb = np.stack([crop * b, crop * g, crop * r], axis=-1)  # stored BGR for cv2
    rgb = cv2.resize(np.ascontiguousarray(rgb), (image_size, image_size), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- defect rendering
#
# Each renderer works on the supersampled clean image `up` (float32, HsxWsx3) and returns
# (new_up, weight_up): the edited canvas and a per-subpixel "meaningful change" weight scaled so
# that the final mask is exactly `area_mean(weight) >= 0.5`. `u` converts a length given in pixels
# of a 128-px image into canvas subpixels, so defects keep their relative size at any image_size.


def _stroke_coverage(shape: tuple[int, int], segments: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """Binary canvas with polylines drawn at given thicknesses (canvas px); 1 inside, 0 outside."""
    canvas = np.zeros(shape, np.uint8)
    for pts, thick in segments:
        cv2.polylines(canvas, [np.rint(pts).astype(np.int32).reshape(-1, 1, 2)], False, 1,
                      thickness=max(1, int(round(thick))), lineType=cv2.LINE_8)
    return canvas.astype(np.float32)


def _tapered_polyline(pts: np.ndarray, thick: float, tip: float) -> list[tuple[np.ndarray, float]]:
    """Split a polyline into short pieces whose thickness falls from `thick` mid-way to `tip`·thick
    at both ends, the way a real scratch or crack fades out."""
    n = len(pts)
    out = []
    for i in range(n - 1):
        t = (i + 0.5) / (n - 1)
        out.append((pts[i : i + 2], thick * (tip + (1 - tip) * np.sin(np.pi * t))))
    return out


def _render_scratch(up: np.ndarray, rng: np.random.Generator, u: float) -> tuple[np.ndarray, np.ndarray]:
    """Thin bright (scraped) or dark (gouged) curved line, 3-4 px wide at 128 px."""
    h, w = up.shape[:2]
    c = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h])
    length = rng.uniform(45, 85) * u
    ang = rng.uniform(0, np.pi)
    d = np.array([np.cos(ang), np.sin(ang)])
    perp = np.array([-d[1], d[0]])
    p0, p2 = c - d * length / 2, c + d * length / 2
    p1 = c + perp * rng.uniform(-0.3, 0.3) * length  # bend: scratches are rarely ruler-straight
    t = np.linspace(0, 1, 48)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    cov = _stroke_coverage((h, w), _tapered_polyline(pts, rng.uniform(3.2, 4.2) * u, 0.75))
    if rng.random() < 0.6:
        target = up + (250.0 - up) * 0.8  # scraped: exposes bright material, keeps a hint of texture
    else:
        target = up * 0.22
    a = cov[..., None]
    return up * (1 - a) + target * a, cov


def _random_walk(start: np.ndarray, ang: float, steps: int, step_len: float, jitter: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Jagged path: each step deviates from the main direction by a random angle (no drift, so the
    crack keeps heading somewhere instead of curling up)."""
    pts = [start]
    for _ in range(steps):
        a = ang + rng.uniform(-jitter, jitter)
        pts.append(pts[-1] + step_len * rng.uniform(0.7, 1.3) * np.array([np.cos(a), np.sin(a)]))
    return np.array(pts)


def _render_crack(up: np.ndarray, rng: np.random.Generator, u: float) -> tuple[np.ndarray, np.ndarray]:
    """Dark jagged crack grown both ways from a centre point, with 1-3 thinner side branches."""
    h, w = up.shape[:2]
    c = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h])
    ang = rng.uniform(0, 2 * np.pi)
    step = rng.uniform(4.5, 6.5) * u
    half_a = _random_walk(c, ang, int(rng.integers(5, 9)), step, 0.7, rng)
    half_b = _random_walk(c, ang + np.pi, int(rng.integers(5, 9)), step, 0.7, rng)
    main = np.concatenate([half_b[::-1], half_a[1:]])
    thick = rng.uniform(3.6, 4.8) * u
    segments = _tapered_polyline(main, thick, 0.7)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(main) // 4, 3 * len(main) // 4 + 1))
        seg_dir = main[min(i + 1, len(main) - 1)] - main[max(i - 1, 0)]
        base = float(np.arctan2(seg_dir[1], seg_dir[0]))
        b_ang = base + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1)
        branch = _random_walk(main[i], b_ang, int(rng.integers(3, 6)), step * 0.8, 0.6, rng)
        # Branch thickness never below ~3 px at 128 so it survives the 64-px training resolution.
        segments += _tapered_polyline(branch, max(3.0 * u, thick * 0.75), 0.8)
    cov = _stroke_coverage((h, w), segments)
    # A deep, nearly black core inside a less dark fracture edge: reads as depth, not as ink.
    core = _stroke_coverage((h, w), [(p, t * 0.5) for p, t in segments])
    target = up * (0.32 - 0.24 * core)[..., None]
    a = cov[..., None]
    return up * (1 - a) + target * a, cov


def _render_hole(up: np.ndarray, rng: np.random.Generator, u: float) -> tuple[np.ndarray, np.ndarray]:
    """Dark elliptical pit lit from the top-left: shadowed near wall, dimly lit far wall, and a
    rim that is bright where it faces the light and dark where it faces away."""
    h, w = up.shape[:2]
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    a_ax = rng.uniform(6.5, 11.5) * u
    b_ax = a_ax * rng.uniform(0.6, 1.0)
    rim = rng.uniform(2.0, 3.0) * u
    th = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    cu, su = np.cos(th), np.sin(th)
    pu, pv = dx * cu + dy * su, -dx * su + dy * cu
    rho = np.sqrt((pu / a_ax) ** 2 + (pv / b_ax) ** 2)
    dist = (rho - 1.0) * np.sqrt(a_ax * b_ax)  # approximate signed distance to the ellipse (canvas px)
    light = np.array([-1.0, -1.0]) / np.sqrt(2.0)  # direction towards the light (top-left)
    norm = np.sqrt(dx ** 2 + dy ** 2) + 1e-6
    facing = (dx * light[0] + dy * light[1]) / norm  # +1 on the top-left side, -1 bottom-right
    # Inside: the wall nearer the light is in shadow, the far wall catches some light; the floor
    # keeps a little of the texture so it reads as a hole in *this* material.
    depth_lit = np.clip(0.5 - 0.5 * facing * np.clip(rho, 0, 1), 0, 1)
    inside = up * (0.08 + 0.22 * depth_lit)[..., None]
    rim_t = up * (0.8 + 0.55 * facing)[..., None]
    target = np.where((dist < 0)[..., None], inside, rim_t)
    cov = (dist < rim).astype(np.float32)
    a = cov[..., None]
    return up * (1 - a) + target * a, cov


def _render_stain(up: np.ndarray, rng: np.random.Generator, u: float) -> tuple[np.ndarray, np.ndarray]:
    """Semi-transparent coloured blob (coffee, rust, ink, oil), blended multiplicatively so the
    texture shows through, with a soft edge and a slightly darker drying ring."""
    h, w = up.shape[:2]
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    radius = rng.uniform(9, 17) * u
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    theta = np.arctan2(dy, dx)
    rho = np.sqrt(dx ** 2 + dy ** 2)
    # Low-frequency boundary wobble gives an organic outline (smooth, unlike thresholded noise).
    r_theta = np.ones_like(theta)
    for k in (2, 3, 5):
        r_theta += rng.uniform(0.0, 0.16) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    sd = radius * r_theta - rho  # > 0 inside
    soft = rng.uniform(1.5, 2.5) * u
    inside = np.clip(0.5 + sd / (2 * soft), 0, 1)
    inside = inside * inside * (3 - 2 * inside)  # smoothstep
    ring = 1.0 + 0.3 * np.exp(-(((sd - soft) / (1.5 * soft)) ** 2))
    opacity = rng.uniform(0.7, 0.9)
    alpha = np.clip(opacity * inside * ring, 0, 1)
    colours_bgr = [(45, 85, 130), (35, 80, 175), (150, 60, 35), (50, 50, 55), (110, 40, 120)]
    col = np.array(colours_bgr[int(rng.integers(len(colours_bgr)))], np.float32)
    # Mostly multiplicative (texture shows through), plus some of the pigment itself so the hue
    # shifts visibly even on a busy, already dark texture such as grass.
    target = np.clip(0.6 * up * (col / 170.0) + 0.4 * col, 0, 255)
    a = alpha[..., None]
    # Mask where alpha > 0.25: weight is scaled so the common ">= 0.5" threshold means exactly that.
    return up * (1 - a) + target * a, alpha * 2.0


def _random_polygon(c: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Star-convex polygon with 5-9 vertices around c: a chip, flake or debris outline."""
    n = int(rng.integers(5, 10))
    # Evenly spread vertex angles (jittered): clustered angles would give a needle-thin sliver.
    step = 2 * np.pi / n
    ang = rng.uniform(0, 2 * np.pi) + step * (np.arange(n) + rng.uniform(-0.3, 0.3, n))
    r = radius * rng.uniform(0.7, 1.0, n)
    return np.stack([c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)], axis=1)


def _render_foreign(up: np.ndarray, rng: np.random.Generator, u: float) -> tuple[np.ndarray, np.ndarray]:
    """A solid foreign object lying on the surface, with a soft drop shadow: an angular plastic
    chip / paint flake (shaded polygon) or a round bead (shaded ellipse with a highlight).

    Deliberately no pieces of other photos: the trainer's built-in anomaly bank pastes exactly
    those (the other skimage samples), and a demo defect must not be its own training anomaly.
    """
    h, w = up.shape[:2]
    c = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h])
    obj = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.6:
        radius = rng.uniform(10, 15) * u
        cv2.fillPoly(obj, [np.rint(_random_polygon(c, radius, rng)).astype(np.int32)], 1)
        # Linear shading across a flat chip so it reads as a solid thing, not a printed sticker.
        g_ang = rng.uniform(0, 2 * np.pi)
        proj = ((xx - c[0]) * np.cos(g_ang) + (yy - c[1]) * np.sin(g_ang)) / radius
        shade = 1.0 + 0.18 * proj
        highlight = np.zeros_like(shade)
    else:
        ax_a = rng.uniform(7, 11) * u
        ax_b = ax_a * rng.uniform(0.7, 1.0)
        ang = float(rng.uniform(0, 180))
        cv2.ellipse(obj, (int(round(c[0])), int(round(c[1]))), (int(round(ax_a)), int(round(ax_b))), ang,
                    0, 360, 1, thickness=-1)
        # Lambert-like falloff from a top-left light plus a small specular spot: a glossy bead.
        rr = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / ax_b
        lit = ((c[0] - xx) + (c[1] - yy)) / (np.sqrt(2.0) * ax_b)
        shade = 0.75 + 0.3 * np.clip(lit, -1, 1) - 0.15 * np.clip(rr, 0, 1) ** 2
        spot = c - 0.4 * ax_b / np.sqrt(2.0)
        highlight = np.exp(-(((xx - spot[0]) ** 2 + (yy - spot[1]) ** 2) / (2 * (0.18 * ax_b) ** 2)))
    obj = obj.astype(np.float32)

    # Shadow: object silhouette shifted away from the top-left light, blurred, darkening <= 55 %.
    off = rng.uniform(1.5, 3.0) * u
    shift = np.float32([[1, 0, off], [0, 1, off]])
    shadow = cv2.warpAffine(obj, shift, (w, h), flags=cv2.INTER_NEAREST)
    shadow = cv2.GaussianBlur(shadow, (0, 0), sigmaX=1.2 * u)
    dark = 0.55 * shadow * (1 - obj)
    out = up * (1 - dark[..., None])

    colours_bgr = [(190, 110, 40), (40, 200, 235), (50, 50, 205), (30, 130, 240), (150, 60, 125),
                   (205, 205, 60), (235, 235, 235)]
    col = np.array(colours_bgr[int(rng.integers(len(colours_bgr)))], np.float32)
    colour = col[None, None, :] * shade[..., None] + (255.0 - col[None, None, :]) * 0.8 * highlight[..., None]
    a = obj[..., None]
    out = out * (1 - a) + np.clip(colour, 0, 255) * a
    # Object pixels count fully; shadow pixels count where they darken by >= 25 %.
    return out, np.maximum(obj, dark * 2.0)


_RENDERERS: dict[str, Callable[[np.ndarray, np.random.Generator, float], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _render_scratch,
    "crack": _render_crack,
    "hole": _render_hole,
    "stain": _render_stain,
    "foreign": _render_foreign,
}


def render_defect(clean: np.ndarray, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one `defect` on a clean BGR uint8 image; return (image, mask 0/255).

    Retries with fresh random parameters until the defect covers 0.5-8 % of the image and changes
    the masked pixels by a clearly visible amount on average (a dark crack along a dark seam, say,
    would otherwise be a defect nobody could see).
    """
    if defect not in _RENDERERS:
        raise ValueError(f"unknown defect type {defect!r}; expected one of {DEFECT_TYPES}")
    size = clean.shape[0]
    u = size / 128.0 * _SS
    up = cv2.resize(clean, None, fx=_SS, fy=_SS, interpolation=cv2.INTER_NEAREST).astype(np.float32)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(40):
        new_up, weight_up = _RENDERERS[defect](up, rng, u)
        # Nearest-upsampled then area-downsampled untouched pixels come back bit-exact.
        img = np.clip(np.rint(cv2.resize(new_up, (size, size), interpolation=cv2.INTER_AREA)), 0, 255)
        img = img.astype(np.uint8)
        weight = cv2.resize(weight_up, (size, size), interpolation=cv2.INTER_AREA)
        diff = img.astype(np.float32) - clean.astype(np.float32)
        px_change = np.abs(diff).max(axis=2)
        # The defect's own region (coverage >= 50 %), plus any anti-aliased edge pixel that still
        # changed clearly, so nothing outside the mask differs from the clean image by much.
        mask = (weight >= 0.5) | ((weight > 0) & (px_change >= _EDGE_CHANGE))
        frac = float(mask.mean())
        if not mask.any():
            continue
        change = float(px_change[mask].mean())
        # Per-pixel change alone can be high for a patch whose *average* colour matches the
        # texture (grey debris on grey gravel), which people barely notice; require both.
        shift = float(np.abs(diff[mask].mean(axis=0)).max())
        min_shift = _MIN_MEAN_SHIFT_FOREIGN if defect == "foreign" else _MIN_MEAN_SHIFT
        if _MIN_AREA <= frac <= _MAX_AREA and change >= _MIN_MEAN_CHANGE and shift >= min_shift:
            return img, mask.astype(np.uint8) * 255
        if best is None or change > best[0]:
            best = (change, img, mask.astype(np.uint8) * 255)
    if best is None:  # pragma: no cover - every renderer always draws something
        raise RuntimeError(f"demo data: could not render a {defect} defect")
    return best[1], best[2]


# ----------------------------------------------------------------------------- dataset building


def _category_rng(category: str, seed: int) -> np.random.Generator:
    # Keyed by name, so adding or reordering categories never changes another category's images.
    return np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])


def iter_category_samples(category: str, image_size: int = 128, n_train: int = 48, n_test_good: int = 12,
                          n_test_per_defect: int = 4, seed: int = 0) -> Iterator[DemoSample]:
    """Generate every image of one demo category in a fixed order (train, test good, defects)."""
    if category not in _TINT_RGB:
        raise TransFusionError(f"demo data: unknown category {category!r}; expected one of {GENERATOR_TEXTURES}")
    rng = _category_rng(category, seed)
    for i in range(n_train):
        img = make_normal_image(category, rng, image_size, "train")
        yield DemoSample("train", "good", i, img, img, None)
    for i in range(n_test_good):
        img = make_normal_image(category, rng, image_size, "test")
        yield DemoSample("test", "good", i, img, img, None)
    for defect in DEFECT_TYPES:
        for i in range(n_test_per_defect):
            clean = make_normal_image(category, rng, image_size, "test")
            img, mask = render_defect(clean, defect, rng)
            yield DemoSample("test", defect, i, img, clean, mask)


def _png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - cv2 can always encode uint8 images
        raise RuntimeError("cv2 failed to encode a PNG")
    return buf.tobytes()


def _expected_files(root: Path, categories: Sequence[str], n_train: int, n_test_good: int,
                    n_test_per_defect: int) -> Iterator[Path]:
    for cat in categories:
        for i in range(n_train):
            yield root / cat / "train" / "good" / f"{i:03d}.png"
        for i in range(n_test_good):
            yield root / cat / "test" / "good" / f"{i:03d}.png"
        for defect in DEFECT_TYPES:
            for i in range(n_test_per_defect):
                yield root / cat / "test" / defect / f"{i:03d}.png"
                yield root / cat / "ground_truth" / defect / f"{i:03d}_mask.png"


def source_textures(root: str | Path | None) -> frozenset[str]:
    """The scikit-image textures a generated dataset at ``root`` was cut from (its manifest's
    categories), so the built-in anomaly bank can leave them out; empty for any other folder."""
    if root is None:
        return frozenset()
    try:
        manifest = load_json_file(Path(root) / MANIFEST_NAME)
    except (OSError, BadJsonFile):
        return frozenset()
    if not isinstance(manifest, dict) or manifest.get("generator") != "transfusion-demo":
        return frozenset()
    return frozenset(c for c in manifest.get("categories", []) if isinstance(c, str) and c in _TINT_RGB)


def build_demo_dataset(root: Path, categories: Sequence[str] = DEMO_CATEGORIES, image_size: int = 128,
                       n_train: int = 48, n_test_good: int = 12, n_test_per_defect: int = 4,
                       seed: int = 0) -> Path:
    """Build (or reuse) the demo categories under `root` in the MVTec AD layout; return `root`.

    The manifest is written last and atomically, so it only exists for a complete build; when it
    matches the requested parameters (and the files are all there) nothing is regenerated.
    """
    root = Path(root)
    categories = list(categories)
    for cat in categories:
        if cat not in _TINT_RGB:
            raise TransFusionError(f"demo data: unknown category {cat!r}; expected one of {GENERATOR_TEXTURES}")
    if len(set(categories)) != len(categories) or not categories:
        raise TransFusionError(f"demo data: categories must be distinct and non-empty, got {categories}")
    if image_size < 32:
        raise TransFusionError(f"demo data: image_size must be >= 32, got {image_size}")
    if n_train < 1 or n_test_good < 1 or n_test_per_defect < 1:
        raise TransFusionError("demo data: n_train, n_test_good and n_test_per_defect must all be >= 1")

    manifest = {
        "generator": "transfusion-demo",
        "version": GENERATOR_VERSION,
        "categories": categories,
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "seed": int(seed),
        "defects": list(DEFECT_TYPES),
    }
    manifest_path = root / MANIFEST_NAME
    old: dict | None = None
    if manifest_path.is_file():
        try:
            old = load_json_file(manifest_path)
        except (OSError, BadJsonFile):
            old = None  # unreadable manifest: treat as no build
    if old == manifest and all(p.is_file() for p in _expected_files(root, categories, n_train, n_test_good,
                                                                     n_test_per_defect)):
        return root

    # Remove the manifest first: a rebuild interrupted half-way must never look complete.
    manifest_path.unlink(missing_ok=True)
    owned = set(categories)
    if isinstance(old, dict) and old.get("generator") == "transfusion-demo" and isinstance(old.get("categories"), list):
        owned |= {c for c in old["categories"] if isinstance(c, str) and c in _TINT_RGB}
    for cat in sorted(owned):  # only demo category names, never anything else under root
        shutil.rmtree(root / cat, ignore_errors=True)

    for cat in categories:
        for s in iter_category_samples(cat, image_size, n_train, n_test_good, n_test_per_defect, seed):
            atomic_write_bytes(root / cat / s.split / s.label / f"{s.stem}.png", _png_bytes(s.image))
            if s.mask is not None:
                atomic_write_bytes(root / cat / "ground_truth" / s.label / f"{s.stem}_mask.png",
                                   _png_bytes(s.mask))
    atomic_write_json(manifest_path, manifest)
    return root


# ----------------------------------------------------------------------------- preview


def _tile(path: Path, size: int, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise TransFusionError(f"demo data: cannot read {path}; rebuild the demo dataset")
    # Nearest-neighbour so the preview shows the actual pixels, not a smoothed version.
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)


def write_preview(root: Path, path: Path, n_train: int = 3, tile: int = 128) -> Path:
    """Write one PNG contact sheet: per category a row of train images, a good test image, then
    each defect type twice (plain, and with its mask outline in red)."""
    root, path = Path(root), Path(path)
    cats = [c for c in DEMO_CATEGORIES if (root / c).is_dir()]
    if not cats:
        raise TransFusionError(f"demo data: no demo categories under {root}")
    labels = [f"train{i}" for i in range(n_train)] + ["good"]
    for d in DEFECT_TYPES:
        labels += [d, f"{d} mask"]
    header = 18
    sheet = np.full((header + len(cats) * (tile + 4), len(labels) * (tile + 4), 3), 255, np.uint8)
    for j, lab in enumerate(labels):
        cv2.putText(sheet, lab, (j * (tile + 4) + 3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for r, cat in enumerate(cats):
        tiles: list[np.ndarray] = []
        for i in range(n_train):
            tiles.append(_tile(root / cat / "train" / "good" / f"{i:03d}.png", tile))
        tiles.append(_tile(root / cat / "test" / "good" / "000.png", tile))
        for d in DEFECT_TYPES:
            img = _tile(root / cat / "test" / d / "000.png", tile)
            mask = _tile(root / cat / "ground_truth" / d / "000_mask.png", tile, cv2.IMREAD_GRAYSCALE)
            outlined = img.copy()
            contours, _ = cv2.findContours((mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(outlined, contours, -1, (0, 0, 255), 1)
            tiles += [img, outlined]
        y = header + r * (tile + 4)
        for j, t in enumerate(tiles):
            sheet[y : y + tile, j * (tile + 4) : j * (tile + 4) + tile] = t
        cv2.putText(sheet, cat, (3, y + tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise TransFusionError(f"demo data: cannot write preview {path}")
    return path
