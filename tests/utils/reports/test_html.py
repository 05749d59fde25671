"""The HTML reports, read as a program reads them (html.parser): every image row, number and
decision on a page must be the one per_image.csv, summary.json or predictions.jsonl holds; the
pages are self-contained (data URIs only, thumbnails at display size, nothing fetched)."""
from __future__ import annotations

import base64
import csv
import json
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from tests.fixtures.helpers import TINY_FLAGS, cli, latest_prediction
from tests.fixtures.layouts import make_mvtec, make_mvtec3d
from utils.reports.html import MAX_IMAGE_ROWS, THUMB_SIDE, CategoryPage, ImageRow, render_category_pages

METRICS = ("image_auroc", "aupro", "pixel_auroc", "pixel_ap", "image_ap", "image_f1_max")


class Page(HTMLParser):
    """What a report holds: image rows (attributes, cell texts, pictures), metric cells, every
    src/href, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.metric_rows: list[list[tuple[dict, str]]] = []
        self.links: list[str] = []
        self.scripts: list[str] = []
        self.curves: list[str] = []
        self.notes: list[str] = []
        self.thresholds: list[dict] = []
        self._row: dict | None = None
        self._cell: list[str] | None = None
        self._cell_attrs: dict = {}
        self._in_script = False
        self._in_note = False
        self._table: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag == "table":
            self._table.append(a.get("class", ""))
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "tr":
            if "data-threshold" in a:
                self.thresholds.append(a)
            self._row = {"attrs": a, "cells": [], "images": [], "table": self._table[-1] if self._table else ""}
        elif tag in ("td", "th") and self._row is not None:
            self._cell, self._cell_attrs = [], a
        elif tag == "img":
            if self._row is not None:
                self._row["images"].append(a)
            if "data-curve" in a:
                self.curves.append(a["data-curve"])
        elif tag == "p" and "note" in a.get("class", ""):
            self._in_note = True
            self.notes.append("")

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table.pop()
        elif tag == "script":
            self._in_script = False
        elif tag == "p":
            self._in_note = False
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row["cells"].append((self._cell_attrs, "".join(self._cell).strip()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if "data-path" in self._row["attrs"]:
                self.rows.append(self._row)
            elif self._row["table"] in ("metrics", "index"):
                self.metric_rows.append(self._row["cells"])
            self._row = None

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        if self._cell is not None:
            self._cell.append(data)
        if self._in_note:
            self.notes[-1] += data


def _decoded_size(uri: str) -> tuple[int, int]:
    head, _, payload = uri.partition(",")
    assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
    img = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)
    return img.shape[1], img.shape[0]


def check_self_contained(page: Page, text: str) -> None:
    """No network: every src is a data URI, links are relative pages; one small sorting script."""
    for link in page.links:
        assert link.startswith("data:image/") or (link.endswith(".html") and "://" not in link), link[:60]
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert len(page.scripts) <= 1 and all(len(s) < 1000 for s in page.scripts)


def check_rows_against(page: Page, expected: list[dict], columns: list[str]) -> None:
    """Every expected image appears once, with its score, label and decision, and its pictures."""
    by_path = {r["attrs"]["data-path"]: r for r in page.rows}
    assert len(by_path) == len(page.rows) == len(expected)
    for e in expected:
        row = by_path[e["path"]]
        a = row["attrs"]
        assert float(a["data-score"]) == pytest.approx(e["score"], abs=5e-9)
        assert a["data-label"] == e["label"] and a["data-decision"] == e["decision"]
        texts = [t for _, t in row["cells"]]
        assert f"{e['score']:.6f}" in texts
        assert (e["decision"] or "") in texts
        if e["label"]:
            assert ("defective" if e["label"] == "1" else "good") in texts
        assert [img["data-column"] for img in row["images"]] == columns
        for img in row["images"]:  # thumbnails encoded at the size they are shown at
            assert int(img["width"]) == int(img["height"]) == THUMB_SIDE
            assert _decoded_size(img["src"]) == (THUMB_SIDE, THUMB_SIDE)


def mistakes_first(page: Page) -> None:
    flags = ["mistake" in r["attrs"].get("class", "") for r in page.rows]
    assert flags == sorted(flags, reverse=True)
    for r in page.rows:  # a mistake is a decision against the label
        a = r["attrs"]
        wrong = a["data-decision"] != "" and (a["data-decision"] == "defect") != (a["data-label"] == "1")
        assert wrong == ("mistake" in a.get("class", ""))


@pytest.fixture(scope="module")
def tested(tmp_path_factory):
    data = make_mvtec(tmp_path_factory.mktemp("data"), n_train=4, n_test_good=3, defects=("crack", "hole"),
                      n_per_defect=2, size=32)
    logs = tmp_path_factory.mktemp("logs")
    common = ["-r", "t", "--category", "bottle", "--log-path", str(logs), *TINY_FLAGS]
    cli("-c", "train", "-d", str(data), "--epoch-num", "1", *common)
    cli("-c", "test", "-d", str(data), *common)
    return data, logs, common


@pytest.mark.slow
def test_the_test_report_matches_per_image_csv_and_summary_json(tested):
    _, logs, _ = tested
    results = logs / "t" / "results" / "bottle"
    text = (results / "report.html").read_text()
    page = Page(text)
    check_self_contained(page, text)
    rows = list(csv.DictReader((results / "per_image.csv").open()))
    assert {r["decision"] for r in rows} <= {"defect", "OK"} and all(r["decision"] for r in rows)
    expected = [{"path": r["image_path"], "score": float(r["score"]), "label": r["label"],
                 "decision": r["decision"]} for r in rows]
    check_rows_against(page, expected, ["input", "heat map", "ground truth"])
    mistakes_first(page)
    summary = json.loads((results / "summary.json").read_text())
    # decisions: the F1-max threshold of this test (no calibration yet), defect when score >= it
    t = summary["decision_threshold"]
    assert t["kind"] == "F1-max" and t["value"] == summary["metrics"]["image_f1_threshold"]
    assert all(r["decision"] == ("defect" if float(r["score"]) >= t["value"] - 5e-9 else "OK") for r in rows)
    assert summary["n_mistakes"] == sum(("defect" == r["decision"]) != (r["label"] == "1") for r in rows)
    # the metrics table: ours, published and Δ for bottle (mvtec, rgb), in percent
    table = {cells[0][1]: cells for cells in page.metric_rows[1:]}
    names = {"image AUROC": "image_auroc", "AUPRO": "aupro", "pixel AUROC": "pixel_auroc", "pixel AP": "pixel_ap",
             "image AP": "image_ap", "image F1-max": "image_f1_max"}
    for name, key in names.items():
        cells = [c for _, c in table[name]]
        assert cells[1] == f"{100 * summary['metrics'][key]:.2f}"
        if key in summary["published"]:
            assert cells[2] == f"{100 * summary['published'][key]:.2f}"
            assert float(cells[3]) == pytest.approx(100 * summary["delta"][key], abs=0.005)
    assert sorted(page.curves) == ["PRO", "image ROC"]
    assert len(text.encode()) <= 5e6 * max(1.0, len(rows) / 100)


def test_the_run_index_lists_each_category_with_its_numbers_and_link(tested):
    _, logs, _ = tested
    text = (logs / "t" / "results" / "index.html").read_text()
    page = Page(text)
    check_self_contained(page, text)
    assert "bottle/report.html" in page.links
    summary = json.loads((logs / "t" / "results" / "bottle" / "summary.json").read_text())
    rows = {cells[0][1]: cells for cells in page.metric_rows[1:]}
    assert set(rows) == {"bottle", "mean"}
    for key in METRICS:
        got = [c for a, c in rows["bottle"] if a.get("data-metric") == key]
        assert got == [f"{100 * summary['metrics'][key]:.2f}"]
    published = [c for a, c in rows["bottle"] if "data-metric-published" in a]
    assert published == [f"{100 * summary['published'][k]:.2f}" for k in ("image_auroc", "aupro", "pixel_auroc",
                                                                          "pixel_ap")]
    assert [c for a, c in rows["mean"] if "data-metric-published" in a] == published  # one category


def test_predict_report_matches_predictions_jsonl(tested):
    data, logs, common = tested
    cli("-c", "predict", *common, "--input", str(data / "bottle" / "test" / "*" / "*.png"))
    folder = latest_prediction(logs, "t", "bottle")
    recs = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    text = (folder / "report.html").read_text()
    page = Page(text)
    check_self_contained(page, text)
    expected = [{"path": r["path"], "score": r["score"], "label": "", "decision": r["decision"]} for r in recs]
    check_rows_against(page, expected, ["input", "heat map"])
    scores = [float(r["attrs"]["data-score"]) for r in page.rows]
    assert scores == sorted(scores, reverse=True)  # no labels: highest score first
    meta = json.loads((logs / "t" / "models" / "bottle_meta.json").read_text())
    assert page.thresholds == [{"data-threshold": "F1-max", "data-value": repr(meta["f1_threshold"])}]
    assert all(r["decision"] == ("defect" if r["score"] >= meta["f1_threshold"] else "OK") for r in recs)


def test_a_test_set_without_defects_has_no_curves_and_says_why(tmp_path):
    data = make_mvtec(tmp_path / "data", n_train=3, n_test_good=2, defects=(), size=32)
    common = ["-r", "g", "--category", "bottle", "--log-path", str(tmp_path / "logs"), *TINY_FLAGS]
    cli("-c", "train", "-d", str(data), "--epoch-num", "1", *common)
    cli("-c", "test", "-d", str(data), *common)
    results = tmp_path / "logs" / "g" / "results" / "bottle"
    page = Page((results / "report.html").read_text())
    assert page.curves == []
    assert any("no ROC curve" in n and "no PRO curve" in n for n in page.notes)
    rows = list(csv.DictReader((results / "per_image.csv").open()))
    assert all(r["decision"] == "" for r in rows)  # no threshold: no F1-max without defects, no calibration
    check_rows_against(page, [{"path": r["image_path"], "score": float(r["score"]), "label": "0", "decision": ""}
                              for r in rows], ["input", "heat map", "ground truth"])


def test_rgbd_rows_show_rgb_and_depth(tmp_path):
    data = make_mvtec3d(tmp_path / "data", n_train=2, n_val=0, n_test_good=1, n_per_defect=1, size=32)
    common = ["-r", "d", "-ds", "mvtec3d", "--mode", "rgbd", "--category", "tire", "--log-path",
              str(tmp_path / "logs"), *TINY_FLAGS, "--unet-channel-num", "16"]
    cli("-c", "train", "-d", str(data), "--epoch-num", "1", *common)
    cli("-c", "test", "-d", str(data), *common)
    results = tmp_path / "logs" / "d" / "results" / "tire"
    page = Page((results / "report.html").read_text())
    rows = list(csv.DictReader((results / "per_image.csv").open()))
    expected = [{"path": r["image_path"], "score": float(r["score"]), "label": r["label"], "decision": r["decision"]}
                for r in rows]
    check_rows_against(page, expected, ["input", "depth", "heat map", "ground truth"])


def _row(i: int, score: float, label: int, decision: str) -> ImageRow:
    return ImageRow(path=f"/x/{i:04d}.png", name=f"{i:04d}.png", score=score, label=label, decision=decision,
                    pictures={"input": "data:image/png;base64,AA=="})


def test_at_most_500_picture_rows_per_page_the_rest_listed_and_mistakes_always_shown():
    rng = np.random.default_rng(0)
    rows = [_row(i, float(s), 0, "OK") for i, s in enumerate(rng.random(520))]
    rows[7].decision = rows[300].decision = rows[519].decision = "defect"  # three false alarms
    rows[519].score = -1.0  # the lowest score: last by score, first as a mistake
    pages = render_category_pages(CategoryPage("t", [], ["input"], rows))
    assert list(pages) == ["report.html"]
    page = Page(pages["report.html"])
    pictured = [r for r in page.rows if r["images"]]
    listed = [r for r in page.rows if not r["images"]]
    assert len(pictured) == MAX_IMAGE_ROWS and len(listed) == 20
    assert {r["attrs"]["data-path"] for r in pictured[:3]} == {"/x/0007.png", "/x/0300.png", "/x/0519.png"}
    rest = [float(r["attrs"]["data-score"]) for r in pictured[3:] + listed]
    assert rest == sorted(rest, reverse=True)
    # more mistakes than fit on a page: they continue on further pages, none is only listed
    many = [_row(i, float(s), 1, "OK") for i, s in enumerate(rng.random(1100))]
    pages = render_category_pages(CategoryPage("t", [], ["input"], many))
    assert list(pages) == ["report.html", "report-2.html", "report-3.html"]
    parsed = [Page(t) for t in pages.values()]
    assert [len(p.rows) for p in parsed] == [500, 500, 100]
    assert all(r["images"] for p in parsed for r in p.rows)
    assert len({r["attrs"]["data-path"] for p in parsed for r in p.rows}) == 1100
