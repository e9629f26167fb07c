"""MovieLens may not be redistributed: no MovieLens file is tracked, and where the README puts data is
ignored by git and left out of every Docker build context."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support import ROOT

# MovieLens' own file names, GroupLens' archives and the NCF paper's split files.
MOVIELENS = re.compile(
    r"(^|/)(u\.(data|item|user|base|test)|u[1-5a-b]\.(base|test)|(ratings|movies|users|tags|links)\.(dat|csv)"
    r"|ml-(100k|1m|10m|20m|25m|32m|latest(-small)?)\.zip|[^/]+\.(train|test)\.rating|[^/]+\.test\.negative)$"
)
# The download targets the README names: `ncf_core download ... --to data/`, `ncf-files --to data/...`.
README_TARGETS = ("data/ml-100k/u.data", "data/ml-1m/ratings.dat", "data/ml-100k-ncf/ml-100k.train.rating")


def git(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def test_no_movielens_file_is_tracked():
    tracked = git("ls-files", "-z").stdout.split("\0")
    assert [path for path in tracked if MOVIELENS.search(path)] == []


def test_the_readme_download_targets_are_ignored_by_git():
    proc = git("check-ignore", "--no-index", *README_TARGETS)
    assert proc.stdout.split() == list(README_TARGETS), proc.stderr


def test_the_readme_download_targets_are_out_of_the_docker_build_context():
    patterns = [
        line.strip().strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "data" in patterns
    for target in README_TARGETS:
        assert target.split("/")[0] in patterns, target


def test_the_readme_downloads_only_under_data():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"--to\s+(\S+)", text):
        assert target.startswith(("data/", "./data/")), f"README downloads or writes data to {target}"
