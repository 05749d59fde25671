"""data/image_cache.py and the images the training set and the texture source keep decoded:
the same tensors as a read of the file (docs/method.md §1), from memory, shared with the
DataLoader workers without a copy."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from data.datasets import TrainDataset
from data.image_cache import DecodedImages, decoded_bytes
from data.textures import TextureSource
from utils.core.errors import TransFusionError


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colours plus noise: values all over 0..255, so that rounding would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([127 + 120 * np.sin(xx / (5 + c) + seed) * np.cos(yy / (7 + c)) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _image_folder(root: Path) -> Path:
    """A folder of training images in the formats a dataset holds: RGB, grey, 16-bit grey,
    RGBA, palette, JPEG, a JPEG turned by its EXIF orientation; non-square, odd sizes."""
    folder = root / "parts"
    folder.mkdir(parents=True)
    Image.fromarray(_photo(90, 70, 0)).save(folder / "a_rgb.png")
    Image.fromarray(_photo(61, 83, 1)[..., 0]).save(folder / "b_grey.png")
    Image.fromarray((_photo(40, 50, 2)[..., 1].astype(np.uint16) * 257)).save(folder / "c_grey16.png")
    Image.fromarray(np.dstack([_photo(64, 64, 3), _photo(64, 64, 4)[..., :1]])).save(folder / "d_rgba.png")
    Image.fromarray(_photo(48, 40, 5)).convert("P", palette=Image.ADAPTIVE).save(folder / "e_palette.png")
    Image.fromarray(_photo(77, 101, 6)).save(folder / "f_photo.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    Image.fromarray(_photo(50, 80, 7)).save(folder / "g_turned.jpg", exif=exif.tobytes())
    return folder


def test_decoded_bytes_are_n_times_s_squared_times_three() -> None:
    # hazelnut, MVTec AD's largest training set: 391 images at 256 px, one byte per channel
    assert decoded_bytes(391, 256) == 391 * 256 * 256 * 3 == 76_873_728
    assert DecodedImages(391, 256).nbytes == 76_873_728


@pytest.mark.parametrize("size", [32, 45])
def test_kept_images_give_the_very_tensor_a_read_gives(tmp_path: Path, size: int) -> None:
    folder = _image_folder(tmp_path)
    ds = TrainDataset("folder", folder, "parts", "rgb", size)
    read = [ds[i]["image"] for i in range(len(ds))]
    assert not ds.keeps_decoded and ds.decoded_bytes == 7 * size * size * 3
    ds.keep_decoded(threads=2)
    for f in folder.iterdir():
        f.unlink()  # from now on the items can only come from memory
    assert ds.keeps_decoded
    for i in range(len(ds)):
        item = ds[i]["image"]
        assert item.dtype == torch.float32 and item.shape == (3, size, size)
        assert torch.equal(item, read[i]), ds.paths[i].name
    # docs/method.md §1 by hand for the RGB file: PIL bilinear to S x S on the 8-bit values,
    # then (v/255 - 0.5) * 2 in float32
    resized = np.asarray(Image.fromarray(_photo(90, 70, 0)).resize((size, size), Image.BILINEAR), np.float32)
    expected = torch.from_numpy(((resized / np.float32(255) - np.float32(0.5)) * np.float32(2)).transpose(2, 0, 1))
    assert torch.equal(ds[0]["image"], expected)
    # grey is stacked to three equal channels
    grey = ds[1]["image"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_an_item_cannot_change_the_kept_image(tmp_path: Path) -> None:
    ds = TrainDataset("folder", _image_folder(tmp_path), "parts", "rgb", 32)
    ds.keep_decoded()
    first = ds[0]["image"].clone()
    ds[0]["image"].fill_(7.0)  # what a careless consumer might do
    assert torch.equal(ds[0]["image"], first)


def test_a_damaged_training_image_fails_while_decoding_naming_it(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path)
    data = (folder / "b_grey.png").read_bytes()
    (folder / "b_grey.png").write_bytes(data[: len(data) // 2])  # truncated
    ds = TrainDataset("folder", folder, "parts", "rgb", 32)
    with pytest.raises(TransFusionError, match=r"cannot read image '.*b_grey\.png'"):
        ds.keep_decoded(threads=2)
    assert not ds.keeps_decoded


def _dtd(root: Path) -> Path:
    """A DTD-layout folder: JPEGs of several sizes (one already 32 px), a grey one, a PNG."""
    for i, (h, w) in enumerate([(300, 400), (32, 32), (57, 33), (640, 480)]):
        sub = root / "images" / ("banded" if i % 2 else "dotted")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(h, w, 10 + i)).save(sub / f"t_{i}.jpg", quality=90)
    Image.fromarray(_photo(80, 80, 20)[..., 2]).save(root / "images" / "dotted" / "grey.jpg")
    Image.fromarray(_photo(70, 90, 21)).save(root / "images" / "banded" / "p.png")
    return root


@pytest.mark.parametrize("source", ["dtd", "builtin"])
def test_kept_textures_give_the_same_samples(tmp_path: Path, source: str) -> None:
    textures = TextureSource.from_dtd(_dtd(tmp_path)) if source == "dtd" else TextureSource.builtin()
    size = 32
    drawn = [textures.sample(size, np.random.default_rng(i)) for i in range(60)]
    textures.keep_decoded(size, threads=2)
    assert textures.keeps_decoded(size) and not textures.keeps_decoded(64)
    if source == "dtd":
        for p in textures.paths:
            p.unlink()  # the samples at 32 px can only come from memory now
    for i in range(60):
        again = textures.sample(size, np.random.default_rng(i))
        assert again.dtype == torch.uint8 and again.shape == (3, size, size) and again.is_contiguous()
        assert torch.equal(again, drawn[i]), i
    again.fill_(0)  # a sample is the caller's own: the kept texture does not change
    assert torch.equal(textures.sample(size, np.random.default_rng(59)), drawn[59])


class _SmapsOfKept(Dataset):
    """Reads every kept image in a DataLoader worker, then reports the worker's own view of the
    pages of the kept array (from /proc/self/smaps)."""

    def __init__(self, ds: TrainDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return 1

    def __getitem__(self, _: int) -> dict[str, int]:
        total = sum(float(self.ds[i]["image"].sum()) for i in range(len(self.ds)))
        address = self.ds._decoded.array.ctypes.data  # type: ignore[union-attr]
        fields: dict[str, int] = {}
        inside = False
        for line in Path("/proc/self/smaps").read_text().splitlines():
            head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if head:
                inside = int(head.group(1), 16) <= address < int(head.group(2), 16)
            elif inside and line.split(":")[0] in ("Rss", "Private_Dirty", "Private_Clean"):
                fields[line.split(":")[0]] = int(line.split()[1])
        return {**fields, "read": int(total != 0)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")
def test_workers_read_the_kept_pages_without_copying_them(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(24):
        Image.fromarray(_photo(96, 96, i)).save(folder / f"{i:02d}.png")
    ds = TrainDataset("folder", folder, "many", "rgb", 128)  # 24 x 48 KiB: 1.1 MiB kept
    ds.keep_decoded()
    out = next(iter(DataLoader(_SmapsOfKept(ds), batch_size=None, num_workers=1)))
    assert out["read"] == 1
    assert out["Rss"] >= ds.decoded_bytes // 1024  # every page was read in the worker ...
    assert out["Private_Dirty"] == 0 and out["Private_Clean"] == 0  # ... and none is its own copy
