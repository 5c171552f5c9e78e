"""Shared fixtures: the reference data folder and a temporary MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = (REPO_ROOT / ".." / "shared" / "data").resolve()
SAMPLE_DIR = DATA_DIR / "ecseg_sample"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def require_data(path: Path) -> Path:
    """Skip the test when the reference data is not beside the repository."""
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return path


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return require_data(SAMPLE_DIR)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require_data(DATA_DIR)
