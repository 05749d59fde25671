"""The HTML reports, read as a program reads them (html.parser): every image row, number and
decision on a page must be the one per_image.csv, summary.json or predictions.jsonl holds; the
pages are self-contained (data URIs only, thumbnails at display size, nothing fetched)."""
from __future__ import annotations

import base64
import csv
import json

import cv2
import numpy as np
import pytest

from tests.fixtures.helpers import TINY_FLAGS, cli, latest_prediction
from tests.fixtures.html_pages import Page, check_self_contained, decoded_size
from tests.fixtures.layouts import make_mvtec, make_mvtec3d
from utils.reports.crops import DETAIL_SIDE
from utils.reports.html import (
    MAX_IMAGE_ROWS,
    THUMB_SIDE,
    CategoryPage,
    FigureSection,
    ImageRow,
    IndexEntry,
    render_category_pages,
    render_index,
)

METRICS = ("image_auroc", "aupro", "pixel_auroc", "pixel_ap", "image_ap", "image_f1_max")


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
            assert decoded_size(img["src"]) == (THUMB_SIDE, THUMB_SIDE)


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


def _uri(side: int) -> str:
    ok, buf = cv2.imencode(".png", np.zeros((side, side, 3), np.uint8))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def test_details_and_further_figures_are_shown_and_names_escaped():
    hostile = '<img src=x onerror="alert(1)">.png'
    row = ImageRow(path="/x/" + hostile, name="bad/" + hostile, score=0.5, label=1, decision="defect",
                   pictures={"input": _uri(THUMB_SIDE), "input (detail)": _uri(DETAIL_SIDE)},
                   detail="64×64 px at x=3, y=4 of 900×600 (×4), around the largest defect region")
    section = FigureSection("MVTec AD 2 protocol", [("AU-PRO@0.05", 0.4567, "up to 0.05"), ("SegF1 at v", None, "")],
                            note="at each image's own resolution")
    text = render_category_pages(CategoryPage("t", [], ["input"], [row], sections=[section],
                                              detail_columns=["input (detail)"]))["report.html"]
    page = Page(text)
    check_self_contained(page, text)
    assert "<img src=x" not in text and "onerror=\"" not in text
    (shown,) = page.rows
    assert shown["attrs"]["data-path"] == "/x/" + hostile
    assert [(i["data-column"], int(i["width"])) for i in shown["images"]] == [("input", THUMB_SIDE),
                                                                             ("input (detail)", DETAIL_SIDE)]
    assert decoded_size(shown["images"][1]["src"]) == (DETAIL_SIDE, DETAIL_SIDE)
    assert any("around the largest defect region" in t for _, t in shown["cells"])
    assert page.figures == [("AU-PRO@0.05", "45.67"), ("SegF1 at v", "n/a")]
    assert any("own resolution" in n for n in page.notes)


def test_the_index_shows_further_columns_with_their_mean_only_where_every_category_has_one():
    metrics = dict.fromkeys(METRICS, 0.9)
    a = IndexEntry("a", metrics, None, None, 3, None, "a/report.html", extra={"AU-PRO@0.05": 0.5, "SegF1": 0.25})
    b = IndexEntry("b", metrics, None, None, 3, None, "b/report.html", extra={"AU-PRO@0.05": 0.7, "SegF1": None})
    page = Page(render_index("r", [a, b], []))
    assert page.figures == [("AU-PRO@0.05", "50.00"), ("SegF1", "25.00"), ("AU-PRO@0.05", "70.00"),
                            ("SegF1", "n/a"), ("AU-PRO@0.05", "60.00"), ("SegF1", "n/a")]
    plain = Page(render_index("r", [IndexEntry("a", metrics, None, None, 3, None, "a/report.html")], []))
    assert plain.figures == []  # other datasets' index is as before
