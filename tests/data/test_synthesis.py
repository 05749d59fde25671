"""Tests for anomaly synthesis: Perlin maps, augmentations, textures, synthesizer, training data feed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import data.synthesis as synthesis_module
from data import augment, synthesis
from data.perlin import perlin_anomaly_map, rand_perlin_2d, rotate_map
from data.synthesis import AnomalySynthesizer, choose_tau, depth_perturbation, shuffle_tiles, to_uint8_image
from data.textures import EXCLUDED_SKIMAGE_STEMS, TextureSource
from data.training_data import HalfBatchSampler, SyntheticAnomalyDataset, make_train_loader
from tests.fixtures.helpers import SHARED
from utils.core.errors import TransFusionError

DTD = SHARED / "data" / "dtd"
needs_dtd = pytest.mark.skipif(not (DTD / "images").is_dir(), reason=f"real DTD sample not found at {DTD}")


@pytest.fixture(scope="module")
def builtin() -> TextureSource:
    return TextureSource.builtin()


def _rand_image(rng: np.random.Generator, c: int = 3, s: int = 64) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(-1, 1, size=(c, s, s)).astype(np.float32))


def _depth_image(rng: np.random.Generator, s: int = 64) -> torch.Tensor:
    """Normalised depth in [-1, -0.5) with a block of missing points (0)."""
    d = rng.uniform(-1.0, -0.5, size=(1, s, s)).astype(np.float32)
    d[:, : s // 4, :] = 0.0
    return torch.from_numpy(d)


# ---------------------------------------------------------------- Perlin


def test_perlin_shape_range_and_seed() -> None:
    a = rand_perlin_2d((64, 32), (4, 2), np.random.default_rng(1))
    b = rand_perlin_2d((64, 32), (4, 2), np.random.default_rng(1))
    c = rand_perlin_2d((64, 32), (4, 2), np.random.default_rng(2))
    assert a.shape == (64, 32)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.abs(a).max() <= 1.0 + 1e-9
    assert a.std() > 0.05
    # Gradient noise is exactly zero on the lattice points.
    np.testing.assert_allclose(a[::16, ::16], 0.0, atol=1e-12)
    with pytest.raises(ValueError):
        rand_perlin_2d((30, 32), (4, 2), np.random.default_rng(0))


def _perlin_reference(shape, res, seed) -> np.ndarray:
    """Pixel-by-pixel textbook Perlin noise (scaled by sqrt(2)) drawing the same gradients."""
    angles = 2 * np.pi * np.random.default_rng(seed).random((res[0] + 1, res[1] + 1))
    dy, dx = shape[0] // res[0], shape[1] // res[1]
    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3
    out = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            cy, cx, u, v = i // dy, j // dx, (i % dy) / dy, (j % dx) / dx
            dot = lambda oy, ox: np.cos(angles[cy + oy, cx + ox]) * (u - oy) + np.sin(angles[cy + oy, cx + ox]) * (v - ox)
            a = dot(0, 0) + fade(u) * (dot(1, 0) - dot(0, 0))
            b = dot(0, 1) + fade(u) * (dot(1, 1) - dot(0, 1))
            out[i, j] = np.sqrt(2) * (a + fade(v) * (b - a))
    return out


def test_perlin_matches_textbook_reference() -> None:
    for shape, res in (((32, 32), (4, 2)), ((16, 32), (1, 8)), ((32, 32), (32, 32))):
        got = rand_perlin_2d(shape, res, np.random.default_rng(11))
        np.testing.assert_allclose(got, _perlin_reference(shape, res, 11), atol=1e-12)


def test_perlin_is_smooth() -> None:
    p = rand_perlin_2d((64, 64), (2, 2), np.random.default_rng(3))
    # Two lattice cells over 64 px: neighbouring pixels differ by a small amount only.
    assert np.abs(np.diff(p, axis=0)).max() < 0.15
    assert np.abs(np.diff(p, axis=1)).max() < 0.15


def test_perlin_anomaly_map_reproducible_and_size_check() -> None:
    a = perlin_anomaly_map(64, np.random.default_rng(5))
    b = perlin_anomaly_map(64, np.random.default_rng(5))
    assert a.shape == (64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.0 + 1e-6
    with pytest.raises(TransFusionError, match="multiple of 32") as e:
        perlin_anomaly_map(48, np.random.default_rng(0))
    assert "\n" not in str(e.value)


def test_perlin_rotation_is_applied() -> None:
    for seed in range(5):
        rng = np.random.default_rng(seed)
        got = perlin_anomaly_map(64, rng)
        # Replay the same draws by hand: scales, noise, then the angle.
        replay = np.random.default_rng(seed)
        a, b = replay.integers(0, 6, size=2)
        raw = rand_perlin_2d((64, 64), (2 ** int(a), 2 ** int(b)), replay)
        angle = replay.uniform(-90, 90)
        np.testing.assert_allclose(got, rotate_map(raw, angle), atol=1e-6)
        if abs(angle) > 5:
            assert not np.allclose(got, raw, atol=1e-3)
    # Zero fill: a 45-degree turn of a constant map empties the corners, keeps the centre.
    r = rotate_map(np.ones((64, 64)), 45.0)
    assert r[0, 0] == 0 and r[-1, -1] == 0 and r[32, 32] == pytest.approx(1.0)
    np.testing.assert_allclose(rotate_map(np.arange(16.0).reshape(4, 4), 0.0), np.arange(16.0).reshape(4, 4))


def test_perlin_scales_cover_range() -> None:
    # With (2^a, 2^b), a, b in 0..5, some maps are coarse and some very fine.
    rough = [np.abs(np.diff(perlin_anomaly_map(64, np.random.default_rng(s)), axis=1)).mean() for s in range(40)]
    assert min(rough) < 0.02 and max(rough) > 0.1


# ---------------------------------------------------------------- augmentations


def _test_image(seed: int = 0, s: int = 48) -> torch.Tensor:
    """A colourful image with structure (so that rotate/sharpness/etc. visibly change it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:s, 0:s]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=0) % 256
    noise = rng.integers(0, 40, size=(3, s, s))
    return torch.from_numpy(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("name,op", augment.AUGMENTATIONS, ids=[n for n, _ in augment.AUGMENTATIONS])
def test_each_augmentation_changes_image_keeps_format(name: str, op) -> None:
    img = _test_image()
    changed = False
    for seed in range(6):  # a few draws: some parameters (posterize 8 bits) are an identity
        out = op(img, np.random.default_rng(seed))
        assert out.dtype == torch.uint8 and out.shape == img.shape
        changed |= not torch.equal(out, img)
        # Reproducible from the generator.
        assert torch.equal(out, op(img, np.random.default_rng(seed)))
    assert changed, name
    assert torch.equal(img, _test_image()), "ops must not modify their input in place"


def test_augmentation_semantics() -> None:
    img = _test_image()
    rng = np.random.default_rng(0)
    assert torch.equal(augment.invert(img, rng), 255 - img)
    for seed in range(40):
        sol = augment.solarize(img, np.random.default_rng(seed))
        if torch.equal(sol, img):
            continue  # the p = 0.5 coin said no (test_solarize_applies_half_the_time)
        # Solarize keeps dark values (< 32 always below threshold) and inverts very bright ones (>= 128).
        assert torch.equal(sol[img < 32], img[img < 32])
        assert torch.equal(sol[img >= 128], 255 - img[img >= 128])
    # Posterize keeps only top bits: the lowest bit is always cleared (nb_bits <= 8 ... draw until < 8).
    post = augment.posterize(img, np.random.default_rng(1))
    assert int((post.int() & 1).sum()) == 0 or torch.equal(post, img)
    # Per-channel gamma: channels get different gammas.
    flat = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    g = augment.gamma_contrast(flat, np.random.default_rng(2))
    assert len({int(g[c, 0, 0]) for c in range(3)}) > 1
    # Hue/saturation shift on a grey image changes nothing when only the hue moves; on a colour
    # image it moves colours but keeps the value (max channel) up to rounding.
    hs = augment.hue_saturation(img, np.random.default_rng(3))
    assert (hs.int().amax(0) - img.int().amax(0)).abs().max() <= 1


def test_autocontrast_matches_pil() -> None:
    from PIL import Image, ImageOps

    img = _test_image(3)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    for seed in range(4):
        cutoff = int(np.random.default_rng(seed).integers(0, 21))
        ref = np.asarray(ImageOps.autocontrast(pil, cutoff=cutoff))
        got = augment.autocontrast(img, np.random.default_rng(seed)).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, ref)
    eq = np.asarray(ImageOps.equalize(pil))
    np.testing.assert_array_equal(augment.equalize(img, np.random.default_rng(0)).permute(1, 2, 0).numpy(), eq)


def test_random_augment_uses_three_distinct_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def make(name: str):
        def op(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
            calls.append(name)
            return img

        return op

    monkeypatch.setattr(augment, "AUGMENTATIONS", [(n, make(n)) for n, _ in augment.AUGMENTATIONS])
    seen: set[str] = set()
    orders: set[tuple[str, ...]] = set()
    for seed in range(60):
        calls.clear()
        augment.random_augment(_test_image(), np.random.default_rng(seed))
        assert len(calls) == 3 and len(set(calls)) == 3
        seen.update(calls)
        orders.add(tuple(calls))
    assert len(seen) == 10
    assert any(tuple(reversed(o)) in orders for o in orders), "application order should vary"


def test_random_augment_reproducible() -> None:
    img = _test_image()
    a = augment.random_augment(img, np.random.default_rng(9))
    b = augment.random_augment(img, np.random.default_rng(9))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == img.shape


# ---------------------------------------------------------------- textures


def test_builtin_textures(builtin: TextureSource) -> None:
    assert len(builtin) >= 8
    assert "built-in" in builtin.description and "--dtd-path" in builtin.description
    assert "\n" not in builtin.description
    names = {p.stem.lower() for p in builtin.paths}
    assert not names & EXCLUDED_SKIMAGE_STEMS
    kinds = set()
    for seed in range(30):
        t = builtin.sample(40, np.random.default_rng(seed))
        assert t.dtype == torch.uint8 and t.shape == (3, 40, 40)
        assert torch.equal(t, builtin.sample(40, np.random.default_rng(seed)))
        kinds.add(int(np.random.default_rng(seed).integers(len(builtin))) >= len(builtin.paths))
    assert kinds == {True, False}, "both files and procedural textures should be drawn"
    from data.textures import PROCEDURAL_KINDS, _procedural

    for kind in PROCEDURAL_KINDS:
        a = _procedural(kind, 36, np.random.default_rng(0))
        assert a.shape == (36, 36, 3) and a.dtype == np.uint8 and a.std() > 5


def test_dtd_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "images" / "banded").mkdir(parents=True)
    (tmp_path / "images" / "banded" / "notes.txt").write_text("x")
    with pytest.raises(TransFusionError) as e:
        TextureSource.from_dtd(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "images/<texture>/*.jpg" in msg
    with pytest.raises(TransFusionError, match="does not exist"):
        TextureSource.from_dtd(tmp_path / "nope")


def test_dtd_layout_and_case(tmp_path: Path) -> None:
    from PIL import Image

    d = tmp_path / "dtd" / "images" / "dotted"
    d.mkdir(parents=True)
    Image.new("RGB", (20, 30), (200, 10, 10)).save(d / "a.JPG")
    Image.new("L", (20, 20), 90).save(d / "b.png")
    for root in (tmp_path / "dtd", tmp_path / "dtd" / "images"):
        src = TextureSource.from_dtd(root)
        assert len(src) == 2 and "(2 images)" in src.description
        t = src.sample(32, np.random.default_rng(0))
        assert t.shape == (3, 32, 32) and t.dtype == torch.uint8
    (d / "c.jpg").write_bytes(b"not a jpeg")
    src = TextureSource.from_dtd(tmp_path / "dtd")
    with pytest.raises(TransFusionError, match="c.jpg"):
        for seed in range(40):
            src.sample(32, np.random.default_rng(seed))


@needs_dtd
def test_real_dtd() -> None:
    src = TextureSource.from_dtd(DTD)
    assert len(src) == len(TextureSource.from_dtd(DTD / "images")) > 0
    assert src.description.startswith("DTD at")
    t = src.sample(64, np.random.default_rng(0))
    assert t.shape == (3, 64, 64) and t.dtype == torch.uint8 and t.float().std() > 1
    synth = AnomalySynthesizer("rgb", 64, src)
    out = synth(_rand_image(np.random.default_rng(0)), torch.ones(1, 64, 64), np.random.default_rng(4))
    assert out["eps"].abs().max() <= 1


# ---------------------------------------------------------------- synthesizer


def test_shuffle_tiles_is_a_tile_permutation() -> None:
    s, g = 64, 8
    # Every tile gets a distinct constant value, so tiles can be identified after shuffling.
    ids = torch.arange(g * g, dtype=torch.float32).reshape(g, g)
    img = ids.repeat_interleave(s // g, 0).repeat_interleave(s // g, 1)[None].repeat(3, 1, 1)
    img[1] += 1000  # channels must move together
    out = shuffle_tiles(img, np.random.default_rng(0), grid=g)
    tiles = out.reshape(3, g, s // g, g, s // g).permute(1, 3, 0, 2, 4)
    got = []
    for ty in range(g):
        for tx in range(g):
            t = tiles[ty, tx]
            assert torch.all(t[0] == t[0, 0, 0]) and torch.equal(t[1], t[0] + 1000) and torch.equal(t[2], t[0])
            got.append(int(t[0, 0, 0]))
    assert sorted(got) == list(range(g * g))
    assert got != list(range(g * g))
    assert torch.equal(out, shuffle_tiles(img, np.random.default_rng(0), grid=g))


def test_structure_appearance_is_shuffled_augmented_image(monkeypatch: pytest.MonkeyPatch, builtin) -> None:
    monkeypatch.setattr(synthesis, "TEXTURE_PROB", 0.0)  # always the structure image
    monkeypatch.setattr(synthesis, "random_augment", lambda img, rng, k=3: img)
    synth = AnomalySynthesizer("rgb", 64, builtin)
    img = _rand_image(np.random.default_rng(0))
    a = synth._appearance(img, np.random.default_rng(1))
    src = to_uint8_image(img).float() / 255 * 2 - 1
    tile = lambda x: {x[:, i : i + 8, j : j + 8].numpy().tobytes() for i in range(0, 64, 8) for j in range(0, 64, 8)}
    assert tile(a) == tile(src) and not torch.equal(a, src)


@pytest.mark.parametrize("mode", ["rgb", "rgbd"])
def test_rgb_eps_mask_properties(mode: str, builtin: TextureSource) -> None:
    c = 3 if mode == "rgb" else 4
    synth = AnomalySynthesizer(mode, 64, builtin)
    fg = torch.zeros(1, 64, 64)
    fg[:, :, 16:] = 1  # the left quarter is background
    nonempty = 0
    for seed in range(25):
        rng = np.random.default_rng(seed)
        img = _rand_image(rng, c)
        if mode == "rgbd":
            img[3:] = _depth_image(rng)
        out = synth(img, fg, np.random.default_rng(seed))
        eps, m, mc = out["eps"], out["mask"], out["mask_c"]
        assert eps.shape == (c, 64, 64) and m.shape == mc.shape == (1, 64, 64)
        assert all(v.dtype == torch.float32 for v in out.values())
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        assert torch.all(m <= fg) and torch.all(mc <= fg)
        assert torch.all(eps[:, m[0] == 0] == 0)
        assert eps[:3].abs().max() <= 1.0
        if mode == "rgbd":
            assert torch.all(m[0][img[3] == 0] == 0) and torch.all(mc[0][img[3] == 0] == 0)
            assert eps[3].abs().max() <= 0.1 + 1e-6
        nonempty += int(m.sum() > 0)
        # Same seed, same sample.
        again = synth(img, fg, np.random.default_rng(seed))
        assert all(torch.equal(out[k], again[k]) for k in out)
    assert nonempty >= 10


def test_depth_eps_properties() -> None:
    synth = AnomalySynthesizer("d", 64, None)
    fg = torch.ones(1, 64, 64)
    signs = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        img = _depth_image(rng)
        out = synth(img, fg, np.random.default_rng(seed))
        eps, m = out["eps"], out["mask"]
        assert eps.shape == (1, 64, 64)
        assert torch.all(m[0][img[0] == 0] == 0)
        assert torch.all(eps[m == 0] == 0)
        assert eps.abs().max() <= 0.1 + 1e-6
        assert torch.all(eps[m == 1] != 0)
        if (eps > 0).any():
            signs.add(1)
        if (eps < 0).any():
            signs.add(-1)
    assert signs == {1, -1}


def test_condition_mask_tau_cases() -> None:
    p = perlin_anomaly_map(64, np.random.default_rng(0))
    taus = np.array([choose_tau(p, np.random.default_rng(s)) for s in range(800)])
    top = p.max()  # docs/method.md §2: the maximum of the SIGNED map
    assert top > 0.5
    frac = {
        "max": np.mean(taus == top),
        "equal": np.mean(taus == 0.5),
        "above": np.mean((taus > 0.5) & (taus < 1.0) & (taus != top)),
        "below": np.mean(taus < 0.5),
    }
    for k, f in frac.items():
        assert 0.18 < f < 0.32, (k, frac)
    assert np.all((taus >= 0) & (taus <= max(top, 1.0)))


def _two_hills(size: int, positive: float, negative: float) -> np.ndarray:
    """A smooth map with one positive hill of height ``positive`` and one negative hill of
    depth ``negative`` (both > 0.5 in magnitude), zero elsewhere."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    hill = lambda cy, cx: np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2)))
    return (positive * hill(size / 3, size / 3) - negative * hill(2 * size / 3, 2 * size / 3)).astype(np.float32)


def test_deeper_negative_hill_stays_in_the_condition_mask_of_the_first_case(monkeypatch) -> None:
    """tau = max(P) (docs/method.md §2): where the negative hill is deeper than the positive one is high,
    M_c = 1[|P| > max P] keeps the part of the negative hill below -max P, not nothing."""
    p = _two_hills(64, positive=0.7, negative=0.9)
    monkeypatch.setattr(synthesis_module, "perlin_anomaly_map", lambda size, rng: p.copy())
    synth = AnomalySynthesizer("d", 64, None)
    fg = torch.ones(1, 64, 64)
    deep_part = torch.from_numpy(p < -p.max())[None]
    assert deep_part.any()
    cases = 0
    for seed in range(200):
        out = synth(torch.full((1, 64, 64), -0.7), fg, np.random.default_rng(seed))
        mc = out["mask_c"].bool()
        if torch.equal(mc, deep_part):
            cases += 1
    assert 30 < cases < 70  # about a quarter of the draws


def test_depth_bump_rises_from_zero_at_the_mask_edge() -> None:
    """docs/method.md §2: (P - 0.5) on positive hills, (P + 0.5) on negative ones, each divided by its own
    largest magnitude, times 0.1: 0 at the edge |P| = 0.5, +-0.1 at the extremes."""
    for seed in range(10):
        p = perlin_anomaly_map(64, np.random.default_rng(seed)).astype(np.float64)
        got = depth_perturbation(p)
        expected = np.zeros_like(p)
        if p.max() > 0.5:
            expected = np.where(p > 0.5, 0.1 * (p - 0.5) / (p.max() - 0.5), expected)
        if p.min() < -0.5:
            expected = np.where(p < -0.5, 0.1 * (p + 0.5) / (-0.5 - p.min()), expected)
        np.testing.assert_allclose(got * (np.abs(p) > 0.5), expected, atol=1e-12)
        if p.max() > 0.5:
            assert got.max() == pytest.approx(0.1)
        if p.min() < -0.5:
            assert got.min() == pytest.approx(-0.1)
        inside = np.abs(p) > 0.5
        if inside.sum() > 50:
            assert np.abs(got[inside]).min() < 0.005  # no step at the edge


def test_solarize_applies_half_the_time() -> None:
    """The released code passes p = 0.5 to imgaug's Solarize: half the draws leave the image."""
    img = _test_image()
    applied = sum(not torch.equal(augment.solarize(img, np.random.default_rng(s)), img) for s in range(400))
    assert 0.42 < applied / 400 < 0.58


def test_brightness_uses_six_colour_spaces_equally(monkeypatch) -> None:
    """MultiplyAndAddToBrightness draws YCrCb, HSV, HLS, Lab, Luv or YUV per image (docs/method.md §2)."""
    import cv2

    forward = {cv2.COLOR_RGB2YCrCb: "YCrCb", cv2.COLOR_RGB2HSV: "HSV", cv2.COLOR_RGB2HLS: "HLS",
               cv2.COLOR_RGB2Lab: "Lab", cv2.COLOR_RGB2Luv: "Luv", cv2.COLOR_RGB2YUV: "YUV"}
    seen: list[str] = []
    real = cv2.cvtColor

    def spy(img, code):
        if code in forward:
            seen.append(forward[code])
        return real(img, code)

    monkeypatch.setattr(augment.cv2, "cvtColor", spy)
    img = _test_image()
    for s in range(600):
        augment.brightness(img, np.random.default_rng(s))
    counts = {name: seen.count(name) for name in forward.values()}
    assert len(seen) == 600 and all(70 < c < 130 for c in counts.values()), counts


def test_brightness_changes_only_the_brightness_channel() -> None:
    """Chroma stays (up to uint8 rounding) in the space that was drawn: hue and saturation in
    HSV, for instance, so a grey image stays grey."""
    grey = torch.full((3, 16, 16), 100, dtype=torch.uint8)
    for s in range(30):
        out = augment.brightness(grey, np.random.default_rng(s))
        spread = (out.int().amax(0) - out.int().amin(0)).max()
        assert spread <= 2, s


def test_condition_mask_statistics() -> None:
    synth = AnomalySynthesizer("d", 64, None)
    fg = torch.ones(1, 64, 64)
    empty = subset = superset = n = 0
    for seed in range(160):
        out = synth(torch.full((1, 64, 64), -0.7), fg, np.random.default_rng(seed))
        m, mc = out["mask"].bool(), out["mask_c"].bool()
        if not m.any():
            continue
        n += 1
        # Thresholds of one map are nested: M_c is always a subset or a superset of M.
        assert torch.all(mc <= m) or torch.all(m <= mc)
        empty += int(not mc.any())
        subset += int(mc.any() and torch.all(mc <= m) and not torch.equal(mc, m))
        superset += int(torch.all(m <= mc) and not torch.equal(mc, m))
    assert n >= 80
    assert 0.12 < empty / n < 0.40
    assert subset > 0.1 * n and superset > 0.1 * n


def test_empty_foreground_gives_zeros(builtin: TextureSource) -> None:
    synth = AnomalySynthesizer("rgbd", 32, builtin)
    img = _rand_image(np.random.default_rng(0), 4, 32)
    out = synth(img, torch.zeros(1, 32, 32), np.random.default_rng(0))
    assert all(float(v.abs().sum()) == 0 for v in out.values())


def test_synthesizer_argument_errors(builtin: TextureSource) -> None:
    with pytest.raises(TransFusionError, match="multiple of 32"):
        AnomalySynthesizer("rgb", 100, builtin)
    with pytest.raises(TransFusionError, match="mode"):
        AnomalySynthesizer("xyz", 64, builtin)
    with pytest.raises(ValueError):
        AnomalySynthesizer("rgb", 64, None)
    with pytest.raises(ValueError):
        AnomalySynthesizer("rgb", 64, builtin)(torch.zeros(1, 64, 64), torch.ones(1, 64, 64), np.random.default_rng(0))


# ---------------------------------------------------------------- sampler and dataset


def test_sampler_half_batches_and_short_tail() -> None:
    s = HalfBatchSampler(11, 4, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 3
    assert [len(b) for b in batches] == [4, 4, 3]
    for b in batches:
        flags = [k[1] for k in b]
        assert flags == [True] * (len(b) // 2) + [False] * (len(b) - len(b) // 2)
    assert sorted(k[0] for b in batches for k in b) == list(range(11))
    assert len({k[2] for b in batches for k in b}) == 11
    one = list(HalfBatchSampler(3, 1, seed=0))
    assert all(b[0][1] for b in one)
    tail = list(HalfBatchSampler(5, 4, seed=0))
    assert [k[1] for k in tail[-1]] == [True]  # B == 1 gets an anomaly
    assert len(list(HalfBatchSampler(11, 4, seed=3, drop_last=True))) == len(HalfBatchSampler(11, 4, 3, drop_last=True)) == 2
    assert [k[0] for b in HalfBatchSampler(6, 4, 0, shuffle=False) for k in b] == list(range(6))


def test_sampler_seed_and_epoch() -> None:
    a, b = HalfBatchSampler(20, 4, seed=7), HalfBatchSampler(20, 4, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    ka, kb = list(a), list(b)
    assert [k[0] for x in ka for k in x] != [k[0] for x in kb for k in x]
    assert {k[2] for x in ka for k in x}.isdisjoint({k[2] for x in kb for k in x})
    c = HalfBatchSampler(20, 4, seed=8)
    c.set_epoch(2)
    assert list(c) != ka


def test_sampler_resume_mid_epoch() -> None:
    for ws in (1, 2):
        full = HalfBatchSampler(23, 3, seed=4, rank=ws - 1, world_size=ws)
        full.set_epoch(5)
        expected = list(full)
        resumed = HalfBatchSampler(23, 3, seed=4, rank=ws - 1, world_size=ws)
        resumed.set_epoch(5, start_batch=2)
        assert list(resumed) == expected[2:]
        assert len(resumed) == len(full)
        resumed.set_epoch(6)
        assert len(list(resumed)) == len(full)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 40),
    bs=st.integers(1, 6),
    ws=st.integers(1, 4),
    drop=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_sampler_ranks_partition_global_batches(n: int, bs: int, ws: int, drop: bool, epoch: int) -> None:
    glob = HalfBatchSampler(n, bs, seed=1, drop_last=drop)
    glob.set_epoch(epoch)
    per_rank = []
    for r in range(ws):
        s = HalfBatchSampler(n, bs, seed=1, drop_last=drop, rank=r, world_size=ws)
        s.set_epoch(epoch)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
    assert len({len(b) for b in per_rank}) == 1, "every rank yields the same number of batches"
    # Dealing round-robin: rank r's j-th batch is global batch r + j*ws (padding cycles the epoch).
    global_batches = [[k[0] for k in b] for b in glob]
    for r, batches in enumerate(per_rank):
        for j, b in enumerate(batches):
            g = r + j * ws
            assert [k[0] for k in b] == global_batches[g % len(global_batches)]
            assert all(len(b) <= bs for b in batches)
    seen = [k[0] for batches in per_rank for b in batches for k in b]
    if not drop:
        assert set(seen) == set(range(n))  # nothing lost
    else:
        assert len(seen) == len(set(seen))  # nothing duplicated
    seeds = [k[2] for batches in per_rank for b in batches for k in b]
    assert len(seeds) == len(set(seeds))


class _TinyBase(torch.utils.data.Dataset):
    """Deterministic base dataset: image i is generated from seed i."""

    def __init__(self, n: int, c: int = 3, s: int = 32) -> None:
        self.n, self.c, self.s = n, c, s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(1000 + i)
        img = torch.from_numpy(rng.uniform(-1, 1, (self.c, self.s, self.s)).astype(np.float32))
        return {"image": img, "fg": torch.ones(1, self.s, self.s), "index": i}


def test_dataset_items(builtin: TextureSource) -> None:
    ds = SyntheticAnomalyDataset(_TinyBase(3), AnomalySynthesizer("rgb", 32, builtin))
    assert len(ds) == 3
    normal = ds[(1, False, 5)]
    assert set(normal) == {"image", "eps", "mask", "mask_c"}
    assert normal["eps"].shape == (3, 32, 32) and normal["mask"].shape == (1, 32, 32)
    assert float(normal["eps"].abs().sum() + normal["mask"].sum() + normal["mask_c"].sum()) == 0
    a, b = ds[(1, True, 5)], ds[(1, True, 5)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["image"], normal["image"])


def test_loader_independent_of_workers(builtin: TextureSource) -> None:
    synth = AnomalySynthesizer("rgb", 32, builtin)
    results = []
    for workers in (0, 2):
        loader = make_train_loader(_TinyBase(7), synth, batch_size=4, seed=3, workers=workers)
        epochs = []
        for epoch in (0, 1):
            loader.batch_sampler.set_epoch(epoch)
            epochs.append([{k: v.clone() for k, v in batch.items()} for batch in loader])
        results.append(epochs)
        del loader
    (w0, w2) = results
    for e in range(2):
        assert len(w0[e]) == len(w2[e]) == 2
        for b0, b2 in zip(w0[e], w2[e]):
            assert set(b0) == {"image", "eps", "mask", "mask_c"}
            assert b0["image"].shape == (4, 3, 32, 32) or b0["image"].shape == (3, 3, 32, 32)
            for k in b0:
                assert torch.equal(b0[k], b2[k]), k
            # Second half of each batch is normal.
            half = b0["mask"].shape[0] // 2
            assert float(b0["mask"][half:].sum() + b0["eps"][half:].abs().sum()) == 0
    assert not torch.equal(w0[0][0]["image"], w0[1][0]["image"])
