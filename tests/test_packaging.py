"""`pip install .` gives a working package: every sub-package of utils/ and its data files are in
it, so `import transfusion` and the published figures work outside the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.helpers import REPO


@pytest.mark.slow
def test_pip_install_then_import_transfusion_and_the_published_figures(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")  # the build backend, used without build isolation (no download)
    src = tmp_path / "src"
    src.mkdir()
    # what the distribution is built from (a copy, so the build leaves nothing in the checkout)
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-export.txt", "transfusion.py"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("models", "data", "utils"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(src)], check=True, capture_output=True, timeout=600)
    shutil.rmtree(src)  # only the installed copy is left to import from
    code = ("import transfusion, utils.commands, utils.Argparser\n"
            "import utils.training.command, utils.evaluation.command, utils.inference.predict, utils.deploy.export\n"
            "from utils.reports.published import published_table\n"
            "print(transfusion.__file__)\n"
            "print(round(100 * published_table('mvtec').mean['image_auroc'], 2))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    where, auroc = proc.stdout.split()
    assert Path(where).resolve().parent == site.resolve()
    assert auroc == "99.42"  # the authors' MVTec AD mean, read from the installed data file
