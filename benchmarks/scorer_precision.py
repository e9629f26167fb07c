"""The scorer in bf16 against fp32 on an ML-1M model: top-K agreement and all-items speed, in one process.

    python -m benchmarks.scorer_precision --model-dir /tmp/ml1m-neumf
    python -m benchmarks.scorer_precision --rounds 3 --users 1024

Agreement: all-items top-``k`` (history excluded, as serving answers ``{"users": [u], "k": 10}``) for
every user the model knows, bf16 against fp32, as the fraction of list positions that hold the same item.
Speed: users per second of ``Recommender.recommend_many`` over the first ``--users`` users, fp32 (the
numpy backend, serving's CPU default; and the fp32 torch backend) and bf16 (the torch backend), run in
turns ``--rounds`` times so that other work on the cores slows each alike. ``serve_bench.py
--precisions fp32,bf16`` measures the same through the HTTP server. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ncf_core import artifact as artifact_io
from ncf_core.inference import Recommender
from ncf_core.runtime import cpu_has_bf16, flush_denormals

# (name, backend, precision): what is compared.
VARIANTS = (("fp32-numpy", "numpy", "fp32"), ("fp32-torch", "torch", "fp32"), ("bf16-torch", "torch", "bf16"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def agreement(fp32: list, bf16: list, k: int) -> dict:
    same = total = identical = 0
    for a, b in zip(fp32, bf16, strict=True):
        total += max(len(a.items), len(b.items))
        same += sum(x == y for x, y in zip(a.items, b.items, strict=False))
        identical += a.items == b.items
    return {
        "users": len(fp32),
        "k": k,
        "positions_equal": same / total,
        "lists_identical": identical / len(fp32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/ml1m-neumf"))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", type=int, default=1024, help="users per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (serving's default: 1)")
    args = parser.parse_args()
    flush_denormals()
    torch.set_num_threads(args.threads)

    art = artifact_io.load(args.model_dir, device="cpu")
    recs = {name: Recommender(art, "cpu", backend, precision) for name, backend, precision in VARIANTS}
    users = list(recs["fp32-numpy"].users.ids)
    result: dict = {
        "model_dir": str(args.model_dir),
        "cpu": cpu_name(),
        "cpu_has_bf16": cpu_has_bf16(),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    lists = {name: rec.recommend_many(users, args.k) for name, rec in recs.items()}
    result["agreement_bf16_vs_fp32_numpy"] = agreement(lists["fp32-numpy"], lists["bf16-torch"], args.k)
    result["agreement_fp32_torch_vs_fp32_numpy"] = agreement(lists["fp32-numpy"], lists["fp32-torch"], args.k)

    timed = users[: args.users]
    rounds: dict[str, list[float]] = {name: [] for name in recs}
    for _ in range(args.rounds):
        for name, rec in recs.items():
            rec.recommend_many(timed[:128], args.k)  # warm
            start = time.perf_counter()
            rec.recommend_many(timed, args.k)
            rounds[name].append(round(len(timed) / (time.perf_counter() - start), 1))
    result["users_per_s"] = rounds
    means = {name: float(np.mean(v)) for name, v in rounds.items()}
    result["users_per_s_mean"] = {name: round(v, 1) for name, v in means.items()}
    result["bf16_over_fp32_numpy"] = round(means["bf16-torch"] / means["fp32-numpy"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
