from __future__ import annotations

from pathlib import Path

import pytest

from ncf_core import data as ncf_data
from tests.support.synthetic import write_ncf_files, write_ratings_csv


@pytest.fixture(autouse=True)
def _subnormals_representable_on_the_test_thread():
    """Trainer and Recommender flush subnormal floats to zero (ncf_core.runtime.flush_denormals), which
    is processor state: Python's floats on that thread flush too, and hypothesis then refuses to draw
    floats. Each test starts with this thread back to IEEE floats (torch's worker threads keep flushing;
    tests/unit/test_runtime.py checks flushing in processes of their own)."""
    import torch

    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The small NeuMF artifact the serving tests share (trained once a session); copy it to change it."""
    from tests.support.serving import trained_artifact

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
