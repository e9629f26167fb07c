"""How long ``monitor`` takes on a day of data capture at the seed payload's size.

    python -m benchmarks.monitor_day [--rate 1.0] [--dir /tmp/ncf-monitor-day]

(from the repository root). Writes a day of SageMaker data capture (``--rate`` requests a second, 86,400
at 1/s; each the workshop's request, one ML-1M user against 100 candidate items, answered with 10 items;
one file every 5 minutes, as the platform rolls them) and a baseline over an ML-1M-sized catalogue
(6,040 users, 3,706 items; the analysis reads only the baseline's figures and ids, not the model), then
times the ``monitor`` program as a process over that day. One JSON line:
``{"records", "capture_mb", "files", "wall_s", "records_per_s"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from ncf_core.monitoring import RECOMMEND, SCORES, TOP_ITEMS, Catalogue, Thresholds, Window
from ncf_sagemaker import monitor_job
from tests.support import capture

USERS, ITEMS, CANDIDATES, K = 6040, 3706, 100, 10
DAY = datetime(2024, 5, 1, tzinfo=UTC)


def write_baseline(out: Path, rng: np.random.Generator) -> None:
    popularity = rng.zipf(1.3, ITEMS)
    cat = Catalogue.build(list(range(USERS)), list(range(ITEMS)), popularity.tolist())
    window = Window(cat)
    for user in rng.choice(USERS, 2000, replace=False).tolist():
        window.query(RECOMMEND, [user])
        window.answer(RECOMMEND, rng.choice(ITEMS, K, replace=False).tolist(), rng.beta(5, 2, K), False)
        window.query(TOP_ITEMS, [user])
        window.answer(TOP_ITEMS, rng.choice(ITEMS, K, replace=False).tolist())
        window.query(SCORES, [user])
        window.answer(SCORES, None, rng.beta(1, 4, 20), [False] * 20)
    section = {"kind": "baseline", "settings": {}, "known_ids": cat.to_dict(), **window.summary()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "statistics.json").write_text(json.dumps(monitor_job.statistics_document(section)))
    (out / "constraints.json").write_text(json.dumps(monitor_job.constraints_document(Thresholds())))


def write_day(root: Path, rate: float, rng: np.random.Generator) -> int:
    n = int(86_400 * rate)
    step = 1 / rate
    per_file = max(1, int(300 * rate))
    lines = []
    for i in range(n):
        when = DAY + timedelta(seconds=i * step)
        user = int(rng.integers(USERS))
        items = rng.choice(ITEMS, CANDIDATES, replace=False).tolist()
        body = json.dumps({"user": [user] * CANDIDATES, "item": items, "k": K}).encode()
        reply = json.dumps(items[:K]).encode()
        lines.append((when, capture.record(body, "application/json", reply, "application/json", when)))
    capture.write(root, "ncf-endpoint", "AllTraffic", lines, per_file=per_file)
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=1.0, help="requests a second (default 1)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/ncf-monitor-day"))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    source = args.dir / "endpointdata"
    shutil.rmtree(args.dir, ignore_errors=True)
    records = write_day(source, args.rate, rng)
    write_baseline(args.dir / "baseline", rng)
    files = list(source.rglob("*.jsonl"))
    size = sum(f.stat().st_size for f in files)
    env = {
        **os.environ,
        "dataset_source": str(source),
        "output_path": str(args.dir / "out"),
        "start_time": "2024-05-01T00:00:00Z",
        "end_time": "2024-05-02T00:00:00Z",
        "baseline_statistics": str(args.dir / "baseline" / "statistics.json"),
        "baseline_constraints": str(args.dir / "baseline" / "constraints.json"),
        "sagemaker_endpoint_name": "ncf-endpoint",
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ncf_sagemaker.monitor_job"], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    result = {"records": records, "capture_mb": round(size / 2**20, 1), "files": len(files),
              "wall_s": round(wall, 2), "records_per_s": round(records / wall)}  # fmt: skip
    print(json.dumps(result))
    print(proc.stdout, file=sys.stderr)


if __name__ == "__main__":
    main()
