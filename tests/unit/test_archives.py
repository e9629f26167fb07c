"""Archives from the platform are unpacked safely, with or without tarfile's ``data`` filter."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from ncf_core.errors import DataError
from ncf_sagemaker import archives
from ncf_sagemaker.archives import extract_checked, extract_tar


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


def make_moded_tar(path: Path, members: list[tuple[str, int, bytes]]) -> Path:
    """``(name, mode, type)`` entries, owned by a uid/gid that does not exist here."""
    with tarfile.open(path, "w:gz") as tar:
        for name, mode, kind in members:
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.uid, info.gid = mode, kind, 4242, 4343
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    return path


# What the ``data`` filter makes of file modes: no setuid/setgid/sticky, no group/other write, execute bits
# only when the owner may execute, owner read+write always.
FILE_MODES = {
    0o777: 0o755,
    0o4755: 0o755,
    0o2644: 0o644,
    0o6777: 0o755,
    0o666: 0o644,
    0o400: 0o600,
    0o070: 0o640,
}


def test_modes_lose_special_and_group_other_write_bits(tmp_path: Path, variant):
    files = [(f"f{oct(mode)}", mode, tarfile.REGTYPE) for mode in FILE_MODES]
    dirs = [
        ("d777", 0o777, tarfile.DIRTYPE),
        ("d1777", 0o1777, tarfile.DIRTYPE),
        ("d500", 0o500, tarfile.DIRTYPE),
    ]
    archive = make_moded_tar(
        tmp_path / "modes.tar.gz", [*files, *dirs, ("d500/inner", 0o644, tarfile.REGTYPE)]
    )
    out = tmp_path / "out"
    extract_tar(archive, out)
    got = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert {name: got[name] for name, _, _ in files} == {f"f{oct(m)}": want for m, want in FILE_MODES.items()}
    umask = os.umask(0o022)
    os.umask(umask)
    assert {got["d777"], got["d1777"], got["d500"]} == {0o777 & ~umask}
    assert (out / "d500" / "inner").is_file()
    # Ownership is never taken from the archive (tarfile would chown to it when running as root).
    assert {p.stat().st_uid for p in out.rglob("*")} == {os.getuid()}


@pytest.mark.parametrize(
    ("kind", "linkname"),
    [
        (tarfile.LNKTYPE, "a.txt"),
        (tarfile.LNKTYPE, "/etc/passwd"),
        (tarfile.SYMTYPE, "a.txt"),
        (tarfile.CHRTYPE, ""),
    ],
)
def test_fallback_refuses_links_and_devices(tmp_path: Path, kind, linkname):
    archive = tmp_path / "special.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("a.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo("special")
        info.type, info.linkname = kind, linkname
        tar.addfile(info)
    with tarfile.open(archive) as tar, pytest.raises(DataError, match="refusing archive member 'special'"):
        extract_checked(tar, tmp_path / "out", archive)
    assert not (tmp_path / "out" / "special").exists()


def test_fallback_is_what_extract_tar_uses_without_data_filter(tmp_path: Path, monkeypatch):
    calls = []
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.setattr(archives, "extract_checked", lambda *args: calls.append(args))
    archive = make_tar(tmp_path / "a.tar.gz", [("a.txt", b"a", None)])
    extract_tar(archive, tmp_path / "out")
    assert len(calls) == 1 and calls[0][1:] == (tmp_path / "out", archive)
