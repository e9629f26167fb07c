"""The README's command blocks, as the tests run them: in order, in one shell state, from a fresh directory.

Every ```bash block of README.md is preceded by a marker,
``<!-- readme-test: id=ID [data=raw|ncf] [docker] -->`` (a block without one fails `blocks()`), except
the three in `UNMARKED`, each run elsewhere. `data=` marks the alternatives of a step (one per data source):
a path takes one of them. `docker` marks a block that needs a Docker engine
(tests/container/test_readme_docker.py).

`Shell` runs blocks one after the other as bash scripts (`set -euo pipefail`) in a directory laid out like a
fresh clone (symlinks to the repository's files; `data/`, `models/` and what the blocks write are the
directory's own), carrying every variable a block sets to the next one (`set -a`, then `export -p`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.paths import ROOT

README = ROOT / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<attrs>[^>]*?)\s*-->\s*\n```bash\n(?P<body>.*?)```", re.S)
BLOCK = re.compile(r"```bash\n(?P<body>.*?)```", re.S)
# Blocks not run by the README tests, each with the test that runs it instead.
UNMARKED = {
    "bash scripts/quickstart.sh\n": "tests/container/test_quickstart.py runs it",
    "bash scripts/test.sh\n": "the test command itself (.ci/run runs it)",
    "python3 -m venv .venv && . .venv/bin/activate\npip install -e '.[train,serve,aws,mlops]'\n": (
        "the install (needs PyPI); scripts/test.sh installs the same project with its extras"
    ),
}
# What a clone holds that the blocks use; everything else in the working directory is the blocks' own.
CHECKOUT = ("scripts", "mlops", "containers", "ncf_core", "docker-compose.yml", "pyproject.toml", "README.md")


@dataclass
class Block:
    id: str
    body: str
    data: str | None = None
    docker: bool = False
    attrs: dict = field(default_factory=dict)


def blocks(text: str | None = None) -> list[Block]:
    """The README's marked bash blocks in order; AssertionError for a bash block with no marker."""
    text = README.read_text() if text is None else text
    marked = []
    for match in MARKER.finditer(text):
        attrs = dict(tuple(a.split("=", 1)) if "=" in a else (a, True) for a in match["attrs"].split())
        marked.append(
            Block(
                id=attrs["id"],
                body=match["body"],
                data=attrs.get("data"),
                docker=bool(attrs.get("docker")),
                attrs=attrs,
            )
        )
    every = [m["body"] for m in BLOCK.finditer(text)]
    unmarked = [b for b in every if b not in {m.body for m in marked} and b not in UNMARKED]
    assert not unmarked, f"README bash blocks without a <!-- readme-test: ... --> marker: {unmarked}"
    return marked


def path(data: str, text: str | None = None) -> list[Block]:
    """The blocks in README order for one data source: the shared ones and that source's alternatives."""
    return [b for b in blocks(text) if b.data in (None, data)]


class Shell:
    """A fresh-clone directory and the exported state of the blocks run so far."""

    def __init__(self, work: Path, env: dict[str, str]):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        for name in CHECKOUT:
            (work / name).symlink_to(ROOT / name)
        bin_dir = work.parent / f"{work.name}-bin"
        bin_dir.mkdir(exist_ok=True)
        for name in ("python", "python3"):  # the README's `python`: this interpreter, with its packages
            (bin_dir / name).symlink_to(sys.executable)
        self.env = env | {
            "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]),
            "PYTHON": sys.executable,
        }
        self.state = work.parent / f"{work.name}-state.sh"
        self.state.write_text("")
        self.outputs: dict[str, str] = {}

    def run(self, block: Block, timeout: float = 600) -> str:
        """Run one block as written; assert it succeeded; return its stdout."""
        script = f"set -a\n. {self.state}\nset -euo pipefail\n{block.body}\nexport -p > {self.state}\n"
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, (
            f"README block {block.id!r} failed (exit {proc.returncode}):\n{block.body}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"
        )
        self.outputs[block.id] = proc.stdout
        return proc.stdout

    def var(self, name: str) -> str:
        """A variable the blocks exported so far."""
        proc = subprocess.run(
            ["bash", "-c", f'. {self.state}; printf %s "${{{name}:-}}"'],
            env=self.env,
            capture_output=True,
            text=True,
        )
        return proc.stdout
