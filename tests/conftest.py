"""Shared test setup: the repo on sys.path and the location of ../shared."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# As Experiment.py does before torch loads libgomp: in-process CLI runs otherwise train with
# spinning OpenMP threads, 3-25x slower on a machine where anything else runs (README).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (reference data and real dataset slices live there)")
    return SHARED
