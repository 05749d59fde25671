"""-c predict keeps every prediction (issue 26, item 5).

Each invocation writes into a folder of its own (predictions/<category>/<stamp>/), so four predicts
into one run and category leave four predictions.jsonl with their own heat maps beside them, an
index page lists all four, and the last line says where this one went.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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
