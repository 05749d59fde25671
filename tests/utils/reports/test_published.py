"""The authors' published figures beside ours: the data files, their lookup, the like-with-like
mean, and -c test on the bottle slice with a released-layout checkpoint printing ours, published
and Δ (docs/method.md §7 metrics; the figures from the original repository's results/ folder)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from models.unet import UNetConfig
from tests.fixtures.checkpoints import synthetic_state_dict
from tests.fixtures.helpers import REPO, TINY_FLAGS, TINY_NET, cli
from tests.fixtures.layouts import make_mvtec
from utils.reports.output_csv import OUTPUT_CSV_COLUMNS, append_output_csv
from utils.reports.published import PUBLISHED_DIR, published_figures, published_table
from utils.reports.tables import markdown_table

SHARED = REPO.parent / "shared"
BOTTLE_SLICE = SHARED / "data" / "mvtec_ad"
# bottle in utils/reports/published_data/mvtec.csv (= ../shared/reference/published/mvtec.csv), as fractions
BOTTLE = {"image_auroc": 1.0, "aupro": 0.9781305987954658, "pixel_auroc": 0.9899590471948777,
          "pixel_ap": 0.9168443986265533}


@pytest.mark.parametrize("name", ["mvtec.csv", "visa.csv", "mvtec3d.csv"])
def test_the_data_files_are_the_published_ones_byte_for_byte(name):
    shared = SHARED / "reference" / "published" / name
    if not shared.is_file():
        pytest.skip("../shared/reference/published is not here")
    assert (PUBLISHED_DIR / name).read_bytes() == shared.read_bytes()


@pytest.mark.parametrize("dataset,n", [("mvtec", 15), ("visa", 12), ("mvtec3d", 10)])
def test_each_table_has_every_category_and_its_mean_row_is_their_mean(dataset, n):
    from data.catalog import DATASET_CATEGORIES

    table = published_table(dataset)
    assert set(table.categories) == set(DATASET_CATEGORIES[dataset]) and len(table.categories) == n
    for k, mean in table.mean.items():
        ours = sum(c[k] for c in table.categories.values()) / n
        assert ours == pytest.approx(mean, abs=1e-12)


def test_figures_only_where_dataset_mode_and_category_match():
    assert published_figures("mvtec", "rgb", "bottle") == BOTTLE
    assert published_figures("mvtec", "rgbd", "bottle") is None
    assert published_figures("mvtec3d", "rgb", "tire") is None  # the released run is rgbd
    assert published_figures("mvtec3d", "rgbd", "tire")["image_auroc"] == pytest.approx(0.992183908045977)
    assert published_figures("visa", "rgb", "candle")["image_auroc"] == pytest.approx(0.982)
    assert published_figures("folder", "rgb", "bottle") is None
    assert published_figures("mvtec", "rgb", "brick") is None


def _cells(table: str, row: str) -> list[str]:
    line = next(x for x in table.splitlines() if x.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_mean_row_compares_like_with_like():
    """Two categories tested: the published mean is theirs, not the file's 15-category Average."""
    ours = {"bottle": {"image_auroc": 0.99, "aupro": 0.90, "pixel_auroc": 0.95, "pixel_ap": 0.70},
            "cable": {"image_auroc": 0.97, "aupro": 0.80, "pixel_auroc": 0.93, "pixel_ap": None}}
    pub = {c: published_figures("mvtec", "rgb", c) for c in ours}
    table = markdown_table(ours, pub)
    head = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert head[:4] == ["category", "image AUROC", "published", "Δ"]
    bottle, mean = _cells(table, "bottle"), _cells(table, "**mean**")
    assert bottle[1:4] == ["99.00", "100.00", "-1.00"]
    assert bottle[4:7] == ["90.00", "97.81", "-7.81"]
    cable_aupro = 0.927084566063108
    assert mean[5] == f"{100 * (BOTTLE['aupro'] + cable_aupro) / 2:.2f}"
    assert mean[6] == f"{100 * ((0.90 + 0.80) / 2 - (BOTTLE['aupro'] + cable_aupro) / 2):+.2f}"
    # pixel AP: only bottle has ours, so the published mean is bottle's alone
    assert mean[10:13] == ["70.00", "91.68", f"{100 * (0.70 - BOTTLE['pixel_ap']):+.2f}"]
    assert _cells(table, "cable")[10:13] == ["n/a", "77.86", "n/a"]  # cable AP Pixel 0.7786...


def test_an_older_output_csv_is_upgraded_keeping_its_rows(tmp_path):
    path = tmp_path / "output.csv"
    path.write_text("timestamp,run,category,epoch,image_auroc,aupro,pixel_auroc,image_ap,image_f1_max\n"
                    "2026-01-01 00:00:00,old,bottle,5,90.00,80.00,95.00,91.00,88.00\n")
    metrics = {"image_auroc": 0.5, "aupro": 0.6, "pixel_auroc": 0.7, "pixel_ap": 0.2, "image_ap": 0.4,
               "image_f1_max": 0.3}
    append_output_csv(path, "new", "bottle", 1, metrics)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == list(OUTPUT_CSV_COLUMNS)
    assert rows[0]["run"] == "old" and rows[0]["image_f1_max"] == "88.00" and rows[0]["pixel_ap"] == ""
    assert rows[1]["run"] == "new" and rows[1]["pixel_ap"] == "20.00" and rows[1]["published_aupro"] == ""


def _released_run(logs: Path, run: str) -> None:
    """A checkpoint in the released layout (state dict with model. keys, no meta side file)."""
    models = logs / run / "models"
    models.mkdir(parents=True)
    sd = synthetic_state_dict(UNetConfig(mode="rgb", **TINY_NET), device="cpu", seed=0)
    sd["model.final_seg.norm.running_var"] = sd["model.final_seg.norm.running_var"].abs() + 0.5  # a variance
    torch.save(sd, models / "bottle_model.pkl")


def _bottle_data(tmp_path: Path, source: str) -> Path:
    if source == "slice":
        if not (BOTTLE_SLICE / "bottle").is_dir():
            pytest.skip("the bottle slice (../shared/data/mvtec_ad) is not here")
        return BOTTLE_SLICE
    return make_mvtec(tmp_path / "data", n_train=2, n_test_good=2, defects=("broken_large",), n_per_defect=2,
                      size=48)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["slice", "generated"])
def test_c_test_prints_ours_published_and_delta_for_bottle(tmp_path, source):
    data = _bottle_data(tmp_path, source)
    logs = tmp_path / "logs"
    _released_run(logs, "rel")
    out = cli("-c", "test", "-r", "rel", "-d", str(data), "-ds", "mvtec", "--mode", "rgb", "--category", "bottle",
              "--log-path", str(logs), *TINY_FLAGS).stdout
    lines = out.strip().splitlines()
    assert lines[-1].startswith("AVG AUROC: ") and ", AVG AUPRO: " in lines[-1]  # still the last line
    table = "\n".join(x for x in lines if x.startswith("|"))
    head = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    summary = json.loads((logs / "rel" / "results" / "bottle" / "summary.json").read_text())
    ours = summary["metrics"]
    bottle = _cells(table, "bottle")
    for name, key in (("image AUROC", "image_auroc"), ("AUPRO", "aupro"), ("pixel AUROC", "pixel_auroc"),
                      ("pixel AP", "pixel_ap")):
        i = head.index(name)
        assert head[i + 1:i + 3] == ["published", "Δ"]
        assert bottle[i] == f"{100 * ours[key]:.2f}"
        assert bottle[i + 1] == f"{100 * BOTTLE[key]:.2f}"
        assert float(bottle[i + 2]) == pytest.approx(100 * (ours[key] - BOTTLE[key]), abs=0.005)
        assert summary["published"][key] == pytest.approx(BOTTLE[key], abs=1e-15)
        assert summary["delta"][key] == pytest.approx(ours[key] - BOTTLE[key], abs=1e-12)
        assert _cells(table, "**mean**")[i:i + 3] == bottle[i:i + 3]  # one category: the mean is bottle's
    assert bottle[head.index("AUPRO") + 1] == "97.81"
    row = list(csv.DictReader((logs / "rel" / "output.csv").open()))[-1]
    assert row["published_aupro"] == "97.81" and row["aupro"] == f"{100 * ours['aupro']:.2f}"
    assert float(row["delta_aupro"]) == pytest.approx(100 * (ours["aupro"] - BOTTLE["aupro"]), abs=0.005)


def test_no_published_columns_for_a_mode_or_dataset_without_a_released_run(tmp_path):
    data = make_mvtec(tmp_path / "data", n_train=2, n_test_good=1, defects=("crack",), n_per_defect=1, size=32)
    logs = tmp_path / "logs"
    cli("-c", "train", "-r", "f", "-d", str(data / "bottle"), "-ds", "folder", "--category", "bottle",
        "--log-path", str(logs), "--epoch-num", "1", *TINY_FLAGS)
    out = cli("-c", "test", "-r", "f", "-d", str(data / "bottle"), "-ds", "folder", "--category", "bottle",
              "--log-path", str(logs), *TINY_FLAGS).stdout
    head = next(x for x in out.splitlines() if x.startswith("| category"))
    assert "published" not in head and "pixel AP" in head
    summary = json.loads((logs / "f" / "results" / "bottle" / "summary.json").read_text())
    assert summary["published"] is None and summary["delta"] is None
