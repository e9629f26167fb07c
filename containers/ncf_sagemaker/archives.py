"""Unpacking archives that arrive through the platform (code bundles, model.tar.gz of earlier jobs)."""

from __future__ import annotations

import tarfile
from pathlib import Path


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``; the ``data`` filter refuses absolute paths, '..' and devices."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
