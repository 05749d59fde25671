"""-c predict keeps every prediction (issue 26, item 5) and says why it skips a very large image
(item 7).

Each invocation writes into a folder of its own (predictions/<category>/<stamp>/), so four predicts
into one run and category leave four predictions.jsonl with their own heat maps beside them, an
index page lists all four, and the last line says where this one went. A valid image too large
for the decoder's pixel limit is skipped with the limit and how to raise it, not with advice to
re-copy the file; raised with --max-image-pixels, it is scored.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.fuzzing import png_claiming
from tests.fixtures.helpers import cli, tiny_tested_run

# every test here drives the command line on a trained run
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tested(tmp_path_factory):
    return tiny_tested_run(tmp_path_factory.mktemp("predict"), "p", size=32)


def _folders(logs: Path) -> list[Path]:
    return sorted(p for p in (logs / "p" / "predictions" / "bottle").iterdir() if p.is_dir())


def test_four_predicts_into_one_category_keep_all_four(tested):
    data, logs, common = tested
    inputs = [data / "bottle" / "test" / "good", data / "bottle" / "test" / "crack",
              data / "bottle" / "test" / "good" / "000.png", data / "bottle" / "train" / "good"]
    lasts = [cli("-c", "predict", *common, "--input", str(i)).stdout.strip().splitlines()[-1] for i in inputs]
    folders = _folders(logs)
    assert len(folders) == 4
    for folder, given, last in zip(folders, inputs, lasts):
        recs = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
        expected = sorted(given.iterdir()) if given.is_dir() else [given]
        assert [Path(r["path"]) for r in recs] == expected  # this invocation's inputs, and only them
        for r in recs:  # each score keeps its heat map, in the invocation's own folder
            assert Path(r["heatmap"]).parent == folder and Path(r["heatmap"]).is_file()
            assert r["invocation"] == folder.name
        assert (folder / "report.html").is_file()
        assert f"in {folder} " in last and str(logs / "p" / "predictions" / "bottle" / "index.html") in last
    index = (logs / "p" / "predictions" / "bottle" / "index.html").read_text()
    listed = re.findall(r'data-folder="([^"]+)"', index)
    assert listed == [f.name for f in reversed(folders)]  # every invocation, newest first
    for f in folders:
        assert f'href="{f.name}/report.html"' in index
    heat_maps = [p for f in folders for p in f.glob("*.png")]
    assert len(heat_maps) == len({(p.parent.name, p.name) for p in heat_maps}) == sum(
        len((f / "predictions.jsonl").read_text().splitlines()) for f in folders)


def test_a_very_large_image_is_skipped_with_the_pixel_limit_and_how_to_raise_it(tested, tmp_path):
    data, logs, common = tested
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "huge.png").write_bytes(png_claiming(20000, 20000))
    Image.fromarray(np.full((48, 40, 3), 120, np.uint8)).save(folder / "small.png")
    out = cli("-c", "predict", *common, "--input", str(folder)).stdout
    skipped = [ln for ln in out.splitlines() if ln.startswith("skipped: ")]
    assert len(skipped) == 1 and str(folder / "huge.png") in skipped[0]
    line = skipped[0]
    assert "400,000,000 pixels" in line and "pixel limit" in line  # 20000 x 20000
    assert "--max-image-pixels 400000000" in line
    assert "re-copy" not in line and "remove it" not in line  # the file is fine: the advice was wrong
    assert "1 image(s) scored, 1 skipped" in out


def test_max_image_pixels_raises_and_lowers_the_limit(tested, tmp_path):
    """48 x 40 = 1920 pixels: refused under --max-image-pixels 1919 with the hint to give 1920, and
    scored with it."""
    data, logs, common = tested
    image = tmp_path / "small.png"
    Image.fromarray(np.full((48, 40, 3), 120, np.uint8)).save(image)
    out = cli("-c", "predict", *common, "--input", str(image), "--max-image-pixels", "1919").stdout
    assert "0 image(s) scored, 1 skipped" in out and "--max-image-pixels 1920" in out
    out = cli("-c", "predict", *common, "--input", str(image), "--max-image-pixels", "1920")
    assert "1 image(s) scored, 0 skipped" in out.stdout and "warning" not in out.stderr
    from data.io import pixel_limit

    assert pixel_limit() == 2 * 89_478_485  # PIL's own limit again after the command
