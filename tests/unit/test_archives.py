"""Archives from the platform are unpacked safely, with or without tarfile's ``data`` filter."""

from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path

import pytest

from ncf_core.errors import DataError
from ncf_sagemaker.archives import extract_tar


def make_tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """``(name, file bytes, symlink target)`` entries."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(content or b"")
                tar.addfile(info, io.BytesIO(content or b""))
    return path


@pytest.fixture(params=["data_filter", "python_3_11_2"])
def variant(request, monkeypatch):
    if request.param == "python_3_11_2":  # the images' Debian Python has no extraction filters
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile.data_filter")
    return request.param


def test_files_and_directories_are_unpacked(tmp_path: Path, variant):
    archive = make_tar(
        tmp_path / "model.tar.gz", [("ncf_config.json", b"{}", None), ("sub/a.txt", b"a", None)]
    )
    extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "ncf_config.json").read_bytes() == b"{}"
    assert (tmp_path / "out" / "sub" / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize("member", [("../escape.txt", b"x", None), ("link", None, "/etc/passwd")])
def test_escaping_members_are_refused(tmp_path: Path, variant, member):
    archive = make_tar(tmp_path / "evil.tar.gz", [member])
    with pytest.raises((DataError, tarfile.TarError)):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_absolute_member_never_lands_outside(tmp_path: Path, variant):
    archive = make_tar(tmp_path / "abs.tar.gz", [(f"{tmp_path}/outside.txt", b"x", None)])
    # The data filter strips the leading "/" (the file lands inside); the fallback refuses it.
    with contextlib.suppress(DataError):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()
