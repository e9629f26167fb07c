"""Where things are: the repository root, the MovieLens data outside it, and a skip for missing files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """MovieLens lives outside the repository: $NCF_DATA_DIR, default ../shared/data."""
    return Path(os.environ.get("NCF_DATA_DIR", ROOT.parent / "shared" / "data"))


def require_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found (set NCF_DATA_DIR to the MovieLens data directory)")
    return path
