from __future__ import annotations

import os
from pathlib import Path

import pytest

from ncf_core import data as ncf_data
from tests.synthetic import write_ncf_files, write_ratings_csv

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """MovieLens lives outside the repository: $NCF_DATA_DIR, default ../shared/data."""
    return Path(os.environ.get("NCF_DATA_DIR", ROOT.parent / "shared" / "data"))


def require_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found (set NCF_DATA_DIR to the MovieLens data directory)")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The small NeuMF artifact the serving tests share (trained once a session); copy it to change it."""
    from tests.test_serving_support import trained_artifact

    return trained_artifact(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def rec(model_dir: Path):
    """``Recommender`` over ``model_dir`` (test_inference defines its own)."""
    from ncf_core.inference import Recommender

    return Recommender.load(model_dir)


@pytest.fixture
def ratings_csv(tmp_path: Path) -> Path:
    return write_ratings_csv(tmp_path / "ratings.csv")


@pytest.fixture
def ncf_prefix(tmp_path: Path) -> Path:
    return write_ncf_files(tmp_path / "ncf" / "toy")


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> ncf_data.Interactions:
    path = write_ratings_csv(tmp_path_factory.mktemp("planted") / "ratings.csv")
    return ncf_data.load(path, seed=0)
