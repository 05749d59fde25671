"""The report pages of `-c test -ds mvtec_ad2` (docs/mvtec_ad2.md): the scenario's protocol figures
as summary.json holds them, on its page and on the run's index, and per image a detail at the
image's own resolution around its largest defect region, where a thumbnail shrinks it away."""
from __future__ import annotations

import base64
import json
import re

import cv2
import numpy as np
import pytest
from scipy import ndimage

from data.discovery import find_test_samples
from data.io import read_mask_native
from tests.fixtures.helpers import TINY_FLAGS, cli
from tests.fixtures.html_pages import Page, check_self_contained, decoded_size
from tests.fixtures.layouts import make_mvtec_ad2
from utils.reports.crops import DETAIL_SIDE

pytestmark = pytest.mark.slow
HEIGHT, WIDTH = 150, 230  # larger than the working size, not square


@pytest.fixture(scope="module")
def tested(tmp_path_factory):
    root = tmp_path_factory.mktemp("ad2")
    data = make_mvtec_ad2(root / "data", categories=("can", "rice"), size=(HEIGHT, WIDTH), grey=("rice",))
    common = ["-r", "r", "-d", str(data), "-ds", "mvtec_ad2", "--category", "can,rice", "--log-path", str(root / "logs"), *TINY_FLAGS]
    cli("-c", "train", "--epoch-num", "1", *common)
    cli("-c", "test", "--eval-steps", "1", *common)
    return data, root / "logs" / "r" / "results"


def _picture(uri: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(uri.partition(",")[2]), np.uint8), cv2.IMREAD_COLOR)


def test_the_page_shows_the_protocol_figures_of_summary_json(tested):
    _, results = tested
    figures = json.loads((results / "can" / "summary.json").read_text())["mvtec_ad2"]
    text = (results / "can" / "report.html").read_text()
    page = Page(text)
    check_self_contained(page, text)
    shown = dict(page.figures)
    assert shown["AU-PRO@0.05"] == f"{100 * figures['aupro_005']:.2f}"
    assert shown["AU-PRO@0.3"] == f"{100 * figures['aupro']:.2f}"
    for name, f1 in figures["seg_f1"].items():
        assert shown[f"SegF1 at {name}"] == ("n/a" if f1 is None else f"{100 * f1:.2f}")
    assert any(f"{HEIGHT * WIDTH * 4:,} pixels" in n and "exact" in n for n in page.notes)


def test_every_image_has_a_detail_holding_its_largest_defect(tested):
    data, results = tested
    page = Page((results / "can" / "report.html").read_text())
    samples = {str(s.image_path): s for s in find_test_samples("mvtec_ad2", data, "can")}
    assert len(page.rows) == len(samples) == 4
    for row in page.rows:
        columns = [img["data-column"] for img in row["images"]]
        assert columns == ["input", "heat map", "ground truth", "input (detail)", "heat map (detail)",
                           "ground truth (detail)"]
        details = {img["data-column"]: img for img in row["images"][3:]}
        for img in details.values():
            assert int(img["width"]) == DETAIL_SIDE and decoded_size(img["src"]) == (DETAIL_SIDE, DETAIL_SIDE)
        sample = samples[row["attrs"]["data-path"]]
        caption = " ".join(t for _, t in row["cells"])
        truth = _picture(details["ground truth (detail)"]["src"])[..., 0] > 127
        if sample.mask_path is None:
            assert "around the highest map value" in caption and not truth.any()
        else:
            assert "around the largest defect region" in caption and f"of {WIDTH}×{HEIGHT}" in caption
            # the window of the caption holds the mask's largest 8-connected region, and the detail
            # shows the window's own ground truth, enlarged
            size, x, y = (int(v) for v in re.search(r"(\d+)×\d+ px at x=(\d+), y=(\d+)", caption).groups())
            mask = read_mask_native(sample.mask_path)
            labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
            largest = 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))
            ys, xs = np.nonzero(labels == largest)
            assert y <= ys.min() and ys.max() < y + size and x <= xs.min() and xs.max() < x + size
            assert truth.mean() == pytest.approx(mask[y:y + size, x:x + size].mean(), abs=0.03)

def test_the_index_has_the_protocol_columns_and_their_mean(tested):
    _, results = tested
    page = Page((results / "index.html").read_text())
    expected = [json.loads((results / c / "summary.json").read_text())["mvtec_ad2"]["aupro_005"] for c in ("can", "rice")]
    got = [t for name, t in page.figures if name == "AU-PRO@0.05"]
    assert got == [f"{100 * v:.2f}" for v in expected] + [f"{100 * np.mean(expected):.2f}"]
