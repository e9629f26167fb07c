"""Unpacking archives that arrive through the platform (code bundles, model.tar.gz of earlier jobs)."""

from __future__ import annotations

import tarfile
from pathlib import Path

from ncf_core.errors import DataError


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``, refusing absolute paths, '..', links out of it and devices.

    Python ≥ 3.11.4 has tarfile's ``data`` filter for this; Debian bookworm's 3.11.2 (the images' Python)
    does not, so older versions get the same checks here, and only files and directories are unpacked.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        members = []
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not target.is_relative_to(root) or not (member.isfile() or member.isdir()):
                raise DataError(
                    f"refusing archive member {member.name!r} (outside the target or not a file)", archive
                )
            members.append(member)
        tar.extractall(dest, members=members)
