"""The README's one main-job command, offline: synthetic data → train → serve → a real /invocations answer."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support import ROOT, free_port, readme


def answer_after(lines: list[str], heading: str):
    """The JSON line printed right after the line containing ``heading``."""
    at = next(i for i, line in enumerate(lines) if heading in line)
    return json.loads(lines[at + 1])


def test_quickstart_offline_trains_serves_and_answers(tmp_path: Path):
    env = os.environ | {
        "NCF_DATA_DIR": str(tmp_path / "no-movielens"),
        "NCF_DOWNLOAD_BASE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there: offline
        "NCF_WORK_DIR": str(tmp_path / "work"),
        "EPOCHS": "3",
    }
    (command,) = [b for b in readme.UNMARKED if "quickstart" in b]  # the README's Quick start block
    assert f"```bash\n{command}```" in readme.README.read_text()
    proc = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SYNTHETIC data set" in proc.stdout  # never passed off as MovieLens
    lines = proc.stdout.splitlines()
    summary = answer_after(lines, "==> training NeuMF")
    assert summary["hr"] > 0.5, summary  # the planted groups are learnt, not a random model served
    seed_answer = answer_after(lines, "seed workshop's payload")
    assert isinstance(seed_answer, list) and len(seed_answer) == 10
    (top5,) = answer_after(lines, "top-5 over all items")["recommendations"]
    assert len(top5["items"]) == 5 and top5["fallback"] is False
