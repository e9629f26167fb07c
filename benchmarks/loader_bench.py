"""Loader time and peak RSS: ``ncf_core.data.load`` on one ratings file, each run in a fresh process.

    python -m benchmarks.loader_bench FILE [FILE ...] [--trees TREE ...] [--repeats 2]

Each ``--trees`` entry is a checkout (default: this one) put first on PYTHONPATH; with several, the runs
alternate between them so a busy machine slows each about as much. One line per run: seconds in
``load`` (imports excluded), peak RSS (``ru_maxrss``) and a digest of the resulting Interactions, which
must match between trees that claim to load the same data.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

_CHILD = """
import hashlib, resource, sys, time
import numpy as np
from ncf_core import data
t = time.perf_counter()
x = data.load(sys.argv[1], seed=0)
seconds = time.perf_counter() - t
h = hashlib.sha256()
for s in (x.test, x.val):
    for a in (s.users, s.items, s.negatives):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
for a in (x.train_users, x.train_items):
    h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
h.update(repr((x.num_users, x.num_items, x.user_ids, x.item_ids)).encode())
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"{seconds:.1f} {rss:.2f} {h.hexdigest()[:16]}")
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(__file__).resolve().parents[1]])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    for path in args.files:
        for _ in range(args.repeats):
            for tree in args.trees:
                env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(path)],
                    env=env,
                    cwd=tree,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.split()
                print(
                    f"{tree.name:20s} {path.name:28s} {out[0]:>7s} s  peak RSS {out[1]} GB  {out[2]}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
