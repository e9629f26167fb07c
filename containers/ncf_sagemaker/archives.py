"""Unpacking archives that arrive through the platform (code bundles, model.tar.gz of earlier jobs)."""

from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path

from ncf_core.errors import DataError


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``, refusing absolute paths, '..', links out of it and devices.

    Python ≥ 3.11.4 has tarfile's ``data`` filter for this; Debian bookworm's 3.11.2 (the images' Python)
    does not, so older versions get the same rules from ``extract_checked``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            extract_checked(tar, dest, archive)


def extract_checked(tar: tarfile.TarFile, dest: Path, archive: Path) -> None:
    """The ``data`` filter's rules by hand, for Pythons without it.

    Only regular files and directories are unpacked (links of either kind and devices are refused), and
    only inside ``dest``. Modes lose setuid/setgid/sticky and group/other write bits; a file keeps its
    execute bits only if its owner may execute it, and its owner may always read and write it; directories
    get the default mode (0o777 less the umask). Ownership is not restored, even when running as root.
    """
    root = dest.resolve()
    dir_mode = 0o777 & ~_umask()
    uid, gid = os.getuid(), os.getgid()
    members = []
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        if not target.is_relative_to(root) or not (member.isfile() or member.isdir()):
            raise DataError(
                f"refusing archive member {member.name!r} (outside the target or not a file)", archive
            )
        safe = copy.copy(member)
        if member.isdir():
            safe.mode = dir_mode
        else:
            safe.mode = member.mode & 0o755
            if not safe.mode & 0o100:
                safe.mode &= ~0o111
            safe.mode |= 0o600
        # tarfile chowns only as root, to these ids: ours, so nothing changes hands.
        safe.uid, safe.gid, safe.uname, safe.gname = uid, gid, "", ""
        members.append(safe)
    # The members are vetted above; where this Python has filters, tell it not to apply its own.
    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    tar.extractall(dest, members=members, **trusted)


def _umask() -> int:
    """The process umask, read without changing it (Linux); the usual 0o022 where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
