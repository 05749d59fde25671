"""Shared test setup: the repo on sys.path, and the real dataset slices of ../shared when present."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# As Experiment.py does before torch loads libgomp: in-process CLI runs otherwise train with
# spinning OpenMP threads, several times slower on a machine where anything else runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.fixtures.helpers import SHARED  # noqa: E402  (after the repo is on sys.path)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real dataset slices beside the project (MVTec AD bottle, MVTec 3D-AD tire, DTD)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the real dataset slices live there; the reference data travel with "
                    f"the repository in tests/fixtures/reference/)")
    return SHARED
