"""Fetch GroupLens' official MovieLens archives, verify them and unpack them.

Why this exists: GroupLens' terms forbid redistributing MovieLens, so the project ships no ratings and
users with internet access fetch the zips themselves. Every archive is checked against checksums pinned
below before it is unpacked, so a truncated transfer, a changed upstream file or a tampered mirror fails
loudly instead of silently changing what the model is trained and evaluated on.

    from ncf_core.download import download
    ratings_dir = download("ml-1m", Path("data"))  # -> data/ml-1m

``base_url`` (or the ``NCF_DOWNLOAD_BASE_URL`` environment variable) replaces the GroupLens host, e.g.
for a mirror or a test server; the pinned checksums still apply unless ``checksum=`` is passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = [
    "BASE_URL_ENV",
    "DATASETS",
    "DEFAULT_BASE_URL",
    "MARKER_NAME",
    "DatasetSpec",
    "DownloadError",
    "download",
]

logger = logging.getLogger(__name__)  # "ncf_core.download"

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "NCF_DOWNLOAD_BASE_URL"
# Written into the unpacked dataset dir as the very last step; its presence means "complete".
MARKER_NAME = ".ncf-download.json"

_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")


class DownloadError(RuntimeError):
    """Fetching, verifying or unpacking a dataset archive failed."""


@dataclass(frozen=True)
class DatasetSpec:
    """One official GroupLens archive and the checksums its bytes must have."""

    name: str
    md5: str
    sha256: str
    size: int  # bytes of the zip

    @property
    def url(self) -> str:
        return f"{DEFAULT_BASE_URL}/{self.name}.zip"


# Checksums of the official zips. Sources (all agree where they overlap):
#   md5 - GroupLens publishes it next to each zip (<name>.zip.md5):
#     ml-1m, ml-20m: mlcommons/training recommendation/pytorch/verify_dataset.sh, which quotes those
#       .md5 files verbatim; ml-1m also PaddlePaddle python/paddle/dataset/movielens.py.
#     ml-100k: catalyst-team/catalyst catalyst/contrib/datasets/movielens.py.
#     all three: eli-osherovich/papers_with_code datasets/movielens/dl_config.py.
#     Disagreeing outlier, NOT used: catalyst's MovieLens20M class pins ml-20m md5
#       b2116463d890a6a9f1d9b66d91558ed2, contradicting the GroupLens .md5 file quoted by mlcommons.
#   sha256 and size - GroupLens publishes no sha256; these are tensorflow/datasets
#     tensorflow_datasets/url_checksums/movielens.txt (computed by TFDS from the same URLs); the ml-1m
#     sha256 also appears in tensorflow/examples lite/examples/recommendation/ml/data/
#     example_generation_movielens.py.
DATASETS: Mapping[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="ml-100k",
            md5="0e33842e24a9c977be4e0107933c0723",
            sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            size=4_924_029,
        ),
        DatasetSpec(
            name="ml-1m",
            md5="c4d9eecfca2ab87c1945afe126590906",
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            size=5_917_549,
        ),
        DatasetSpec(
            name="ml-20m",
            md5="cd245b17a1ae2cc31bb14903e1204af3",
            sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
            size=198_702_078,
        ),
    )
}


def download(
    name: str,
    dest: Path | str,
    *,
    base_url: str | None = None,
    checksum: str | None = None,
    timeout: float = 60,
) -> Path:
    """Download, verify and unpack MovieLens archive ``name`` under ``dest``; return ``dest / name``.

    Does nothing (no network access) if ``dest / name`` was already unpacked completely by an earlier
    call. ``base_url`` (default: env ``NCF_DOWNLOAD_BASE_URL``, then GroupLens) is the directory URL
    that holds ``<name>.zip``. ``checksum`` replaces the pinned checksums: 32 hex digits are an md5,
    64 a sha256. ``timeout`` is in seconds, per blocking network operation.

    Raises ValueError for an unknown ``name`` or a malformed ``checksum``, and DownloadError when the
    transfer fails, the checksum does not match or the archive is unsafe or malformed.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    expected = _expected_digests(spec, checksum)

    dest = Path(dest)
    target = dest / name
    if (target / MARKER_NAME).is_file():
        logger.info("%s already present in %s; not downloading", name, target)
        return target
    if target.exists():
        raise DownloadError(
            f"{target} exists but has no {MARKER_NAME} marker, so it was not unpacked by "
            f"ncf_core.download; remove it (or use it as it is) and call again"
        )

    root = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    url = f"{root.rstrip('/')}/{name}.zip"
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".zip.part", dir=dest)
    os.close(fd)
    part = Path(tmp)
    try:
        got = _fetch(url, part, timeout=timeout, size_hint=spec.size)
        for algo, want in expected.items():
            if got[algo] != want:
                raise DownloadError(f"checksum mismatch for {url}: expected {algo} {want}, got {got[algo]}")
        logger.info("verified %s (%s)", url, ", ".join(f"{a} {h}" for a, h in expected.items()))
        _unpack(part, url=url, name=name, dest=dest, digests=got)
    finally:
        part.unlink(missing_ok=True)
    logger.info("%s ready in %s", name, target)
    return target


def _expected_digests(spec: DatasetSpec, checksum: str | None) -> dict[str, str]:
    if checksum is None:
        return {"md5": spec.md5, "sha256": spec.sha256}
    value = checksum.strip().lower()
    algo = {32: "md5", 64: "sha256"}.get(len(value))
    if algo is None or not _HEX.fullmatch(value):
        raise ValueError(f"checksum must be 32 (md5) or 64 (sha256) hex digits, got {checksum!r}")
    return {algo: value}


def _fetch(url: str, part: Path, *, timeout: float, size_hint: int) -> dict[str, str]:
    """Stream ``url`` into ``part``; return its md5 and sha256."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "ncf_core.download"})
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or size_hint
            done, next_report = 0, 0.1
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                sha256.update(chunk)
                done += len(chunk)
                if done >= next_report * total:
                    logger.info("%s: %.1f of %.1f MB", url, done / 1e6, total / 1e6)
                    next_report = int(done * 10 / total) / 10 + 0.1
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"could not download {url}: {exc.reason}") from exc
    except OSError as exc:  # connection reset or timeout mid-transfer, disk full, ...
        raise DownloadError(f"could not download {url}: {exc}") from exc
    logger.info("downloaded %s (%d bytes)", url, done)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _check_member(member: str, url: str) -> None:
    """Reject zip-slip members: absolute paths, drive letters and ``..`` components."""
    posix = PurePosixPath(member.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(member).drive or ".." in posix.parts:
        raise DownloadError(f"refusing to unpack {url}: unsafe member path {member!r}")


def _unpack(archive: Path, *, url: str, name: str, dest: Path, digests: Mapping[str, str]) -> None:
    """Unpack into a staging dir, mark it complete, then move ``<name>/`` into place atomically."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".unpack", dir=dest))
    target = dest / name
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                members = zf.namelist()
                for member in members:
                    _check_member(member, url)
                zf.extractall(staging)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{url} is not a valid zip archive: {exc}") from exc
        unpacked = staging / name
        if not unpacked.is_dir():
            raise DownloadError(f"{url} has no top-level {name}/ directory")
        marker = {"dataset": name, "url": url, "members": len(members), **digests}
        (unpacked / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        try:
            unpacked.rename(target)
        except OSError as exc:
            if not (target / MARKER_NAME).is_file():  # else a concurrent call finished first: fine
                raise DownloadError(f"could not move the unpacked {name}/ to {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
