"""Training and serving cost at MovieLens-20M scale, on synthetic data of ML-20M's shape; JSON lines.

    python -m benchmarks.scale_bench                       # 1M and 5M interactions
    python -m benchmarks.scale_bench --sizes 1M,5M,20M --max-steps 300

(from the repository root). For each size a ``ratings.csv`` in ML-20M's format (``userId,movieId,rating,
timestamp``; written once into ``--workdir`` and reused) goes through the same path a real one takes —
``ncf_core.data.load`` (parse, leave-one-out split, validation, 99 test negatives per user), a
``Trainer`` with today's defaults, evaluation, a checkpoint, the artifact and ``Recommender`` — in a fresh
process per size, so its peak RSS is that size's own. One JSON line per size:

- ``load_split_s``; ``epoch_s`` and ``samples_per_s`` (an epoch's training, negatives included; with
  ``--max-steps`` the first steps only, ``epoch_s`` then extrapolated to the whole epoch);
- ``eval_s`` (HR@10/NDCG@10 over every test user, figures included: the planted groups make them
  meaningful); ``checkpoint_mb``/``checkpoint_s``; ``artifact_load_s``; ``top10_all_items_ms`` (median
  over 50 users); ``peak_rss_mb``.

The generator: 138,493 users and 26,744 items at 20M interactions (users scale with the size, so each
still has ML-20M's ~144 on average), every user ≥ 20 interactions (log-normal tail), Zipf-like item
popularity, sparse movie ids as in ML-20M, and planted taste groups (a user draws 70% of its items from its
group) so that a model can learn something a popularity ranking cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ML20M_USERS, ML20M_ITEMS, ML20M_PAIRS = 138_493, 26_744, 20_000_000
ML20M_MAX_MOVIE_ID = 131_262
MIN_PER_USER = 20
GROUPS = 20
IN_GROUP = 0.7


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


# --------------------------------------------------------------------------------------------- generator
def _zipf_cdf(n: int, exponent: float = 0.9, offset: float = 10.0) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + offset) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _user_counts(rng: np.random.Generator, users: int, pairs: int, items: int) -> np.ndarray:
    """≥ MIN_PER_USER each, a log-normal tail, summing to ``pairs``, none over half the catalogue."""
    cap = items // 2
    tail = rng.lognormal(0.0, 1.2, users)
    counts = MIN_PER_USER + np.floor(tail / tail.sum() * (pairs - MIN_PER_USER * users)).astype(np.int64)
    counts = np.minimum(counts, cap)
    while (short := pairs - int(counts.sum())) > 0:
        room = np.flatnonzero(counts < cap)
        counts[rng.choice(room, min(short, len(room)), replace=False)] += 1
    return counts


def _draw_items(rng: np.random.Generator, users: np.ndarray, items: int) -> np.ndarray:
    """One item per entry of ``users``: from the user's group with probability IN_GROUP, else any."""
    per_group = items // GROUPS
    group_cdf, all_cdf = _zipf_cdf(per_group), _zipf_cdf(items)
    in_group = rng.random(len(users)) < IN_GROUP
    out = np.searchsorted(all_cdf, rng.random(len(users)))
    rank = np.searchsorted(group_cdf, rng.random(int(in_group.sum())))
    out[in_group] = (users[in_group] % GROUPS) + rank * GROUPS
    return np.minimum(out, items - 1)


def generate(path: Path, pairs: int, seed: int = 0) -> dict[str, Any]:
    """Write ``pairs`` distinct (user, item) interactions of ML-20M's shape to ``path`` as ratings.csv."""
    import pandas as pd

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    users = max(1, round(ML20M_USERS * pairs / ML20M_PAIRS))
    items = ML20M_ITEMS
    counts = _user_counts(rng, users, pairs, items)
    chosen_u, chosen_i = [], []
    need = counts.copy()
    for round_ in range(100):  # draw with headroom, keep distinct pairs, top up the short ones
        if not need.any():
            break
        u = np.repeat(np.arange(users), np.ceil(need * 1.3).astype(np.int64))
        # The heaviest users exhaust the popular items: after a few rounds the rest are drawn uniformly.
        drawn = _draw_items(rng, u, items) if round_ < 3 else rng.integers(0, items, len(u))
        keys = np.unique(u.astype(np.int64) * items + drawn)
        if chosen_u:
            keys = np.setdiff1d(keys, np.concatenate(chosen_u) * items + np.concatenate(chosen_i), True)
        rng.shuffle(keys)  # a random subset per user, not the smallest item ids
        keys = keys[np.argsort(keys // items, kind="stable")]
        ku = keys // items
        starts = np.searchsorted(ku, np.arange(users))
        rank = np.arange(len(keys)) - starts[ku]
        keep = rank < need[ku]
        chosen_u.append(ku[keep])
        chosen_i.append(keys[keep] % items)
        need -= np.bincount(ku[keep], minlength=users)
    if need.any():
        raise RuntimeError(f"the generator left {int(need.sum())} interactions undrawn")
    user = np.concatenate(chosen_u)
    item = np.concatenate(chosen_i)
    movie_ids = np.sort(rng.choice(np.arange(1, ML20M_MAX_MOVIE_ID + 1), items, replace=False))
    frame = pd.DataFrame(
        {
            "userId": user + 1,
            "movieId": movie_ids[item],
            "rating": rng.integers(1, 11, len(user)) / 2,
            "timestamp": rng.integers(789_652_009, 1_427_784_002, len(user)),
        }
    )
    frame.sample(frac=1.0, random_state=seed).to_csv(path, index=False)
    return {
        "users": users,
        "items": items,
        "pairs": len(frame),
        "generate_s": round(time.perf_counter() - start, 1),
        "csv_mb": round(path.stat().st_size / 2**20, 1),
    }


# --------------------------------------------------------------------------------------------- one size
def measure(
    csv: Path, max_steps: int | None, workdir: Path, embedding_updates: str = "auto"
) -> dict[str, Any]:
    import torch

    from ncf_core import data as ncf_data
    from ncf_core.evaluation import evaluate
    from ncf_core.inference import Recommender
    from ncf_core.pipeline import save_artifact
    from ncf_core.training import TrainConfig, Trainer

    out: dict[str, Any] = {}
    t = time.perf_counter()
    data = ncf_data.load(csv, seed=0)
    out["load_split_s"] = round(time.perf_counter() - t, 1)
    out["users"], out["items"], out["train_pairs"] = (
        len(data.user_ids),
        len(data.item_ids),
        len(data.train_users),
    )
    config = TrainConfig(epochs=1, device="cpu", embedding_updates=embedding_updates)
    steps_done = 0

    def stop_after() -> bool:
        nonlocal steps_done
        steps_done += 1
        return max_steps is not None and steps_done >= max_steps

    checkpoints = Path(tempfile.mkdtemp(dir=workdir, prefix="ckpt-"))
    trainer = Trainer(data, config, checkpoint_dir=checkpoints, should_stop=stop_after)
    steps = trainer.steps_per_epoch()
    out["embedding_updates"] = {
        side: "lazy" if lazy else "dense"
        for side, lazy in zip(("users", "items"), trainer.lazy_sides, strict=True)
    }
    t = time.perf_counter()
    finished = trainer._train_epoch(1)
    train_s = time.perf_counter() - t
    samples = trainer.epoch_samples
    out["steps_per_epoch"] = steps
    out["steps_timed"] = trainer.step_in_epoch if not finished else steps
    out["samples_per_s"] = round(samples / train_s)
    out["epoch_s"] = round(train_s * steps / max(1, out["steps_timed"]), 1)
    out["epoch_extrapolated"] = not finished
    t = time.perf_counter()
    metrics = evaluate(trainer.model, data.test, config.top_k, "cpu")
    out["eval_s"] = round(time.perf_counter() - t, 1)
    out["eval_users"] = len(data.test)
    out |= {k: round(v, 4) for k, v in metrics.as_dict().items()}
    t = time.perf_counter()
    path = trainer.save_checkpoint()
    out["checkpoint_s"] = round(time.perf_counter() - t, 2)
    out["checkpoint_mb"] = round(path.stat().st_size / 2**20, 1) if path else None
    model_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="model-"))
    save_artifact(model_dir, trainer.model, data)
    del trainer, data
    t = time.perf_counter()
    rec = Recommender.load(model_dir)
    out["artifact_load_s"] = round(time.perf_counter() - t, 2)
    latencies = []
    for user in rec.users.ids[:: max(1, len(rec.users) // 50)][:50]:
        t = time.perf_counter()
        rec.recommend(user, 10)
        latencies.append((time.perf_counter() - t) * 1000)
    out["top10_all_items_ms"] = round(float(np.median(latencies)), 2)
    out["torch_threads"] = torch.get_num_threads()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,5M", help="interactions per run, e.g. 1M,5M,20M")
    parser.add_argument("--max-steps", type=int, help="time only the first steps of the epoch")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncf-scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-updates", choices=("auto", "dense", "lazy"), default="auto")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size here
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        csv = args.workdir / f"ratings-{args.one}-{args.seed}.csv"
        print(json.dumps(measure(csv, args.max_steps, args.workdir, args.embedding_updates)))
        return
    for size in map(parse_size, args.sizes.split(",")):
        csv = args.workdir / f"ratings-{size}-{args.seed}.csv"
        line: dict[str, Any] = {"interactions": size}
        if not csv.is_file():
            tmp = csv.with_suffix(".tmp")
            line["generated"] = generate(tmp, size, args.seed)
            tmp.rename(csv)
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.scale_bench",
            "--one",
            str(size),
            "--workdir",
            str(args.workdir),
        ]
        cmd += ["--seed", str(args.seed), "--embedding-updates", args.embedding_updates]
        cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
        t = time.perf_counter()
        child = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if child.returncode != 0:
            line["error"] = child.stderr[-2000:]
        else:
            line |= json.loads(child.stdout.strip().splitlines()[-1])
        line["wall_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
