"""Training and serving cost at MovieLens-20M scale, on synthetic data of ML-20M's shape; JSON lines.

    python -m benchmarks.scale_bench                          # 1M and 5M interactions, one epoch each
    python -m benchmarks.scale_bench --sizes 1M,5M,20M --epochs 3

(from the repository root). For each size a ``ratings.csv`` in ML-20M's format (``userId,movieId,rating,
timestamp``; written once into ``--workdir`` and reused) goes through the same path a real one takes —
``ncf_core.data.load`` (parse, leave-one-out split, validation, 99 test negatives per user), a
``Trainer`` with today's defaults, evaluation, a checkpoint, the artifact and ``Recommender`` — in a fresh
process per size, so its peak RSS is that size's own. One JSON line per size:

- ``load_split_s``; ``popularity_hr``/``popularity_ndcg`` (the test users ranked by training popularity);
- per whole epoch (never extrapolated from its first steps: a slowdown once set in minutes into a 20M
  epoch): ``train_s``, ``samples_per_s`` and the rates of its first and last tenth of steps, ``eval_s``
  (validation and test, every user), test ``hr``/``ndcg``, the ReLU units that never fire per MLP layer
  and the largest share of subnormal values in any weight (``ncf_core.health``);
- ``test_eval_s`` (the test users alone), ``checkpoint_mb``/``checkpoint_s``; ``artifact_load_s``;
  ``top10_all_items_ms`` (median over 50 users); ``peak_rss_mb``.

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


def draw_pairs(rng: np.random.Generator, pairs: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(user, item, users, items): ``pairs`` distinct (user, item) interactions of ML-20M's shape, in
    contiguous indices (in the order drawn, not sorted), and the numbers of users and items."""
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
    return user, item, users, items


def generate(path: Path, pairs: int, seed: int = 0) -> dict[str, Any]:
    """Write ``pairs`` distinct (user, item) interactions of ML-20M's shape to ``path`` as ratings.csv."""
    import pandas as pd

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    user, item, users, items = draw_pairs(rng, pairs)
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
def tenth_rates(marks: list[tuple[int, float]]) -> tuple[int, int]:
    """Samples per second over an epoch's first and last tenth of steps (``Trainer.epoch_marks``)."""
    (s0, t0), (s1, t1) = marks[0], marks[1]
    (s8, t8), (s9, t9) = marks[-2], marks[-1]
    return round((s1 - s0) / (t1 - t0)), round((s9 - s8) / (t9 - t8))


def popularity_metrics(data: Any, k: int) -> dict[str, float]:
    """HR@k / NDCG@k of ranking each user's test candidates by training popularity: the bar a model must
    clear to have learnt anything personal."""
    from ncf_core.evaluation import evaluate_scores

    pop = np.bincount(data.train_items, minlength=data.num_items).astype(np.float64)
    m = evaluate_scores(pop[data.test.items], pop[data.test.negatives], k)
    return {"popularity_hr": round(m.hr, 4), "popularity_ndcg": round(m.ndcg, 4)}


def measure(csv: Path, epochs: int, workdir: Path, embedding_updates: str = "auto") -> dict[str, Any]:
    from ncf_core import runtime

    runtime.flush_denormals()  # first, as the programs do (before torch's threads start)

    import torch

    from ncf_core import data as ncf_data
    from ncf_core.evaluation import evaluate
    from ncf_core.inference import Recommender
    from ncf_core.jobs import save_artifact
    from ncf_core.training import EpochReport, TrainConfig, Trainer

    out: dict[str, Any] = {}
    t = time.perf_counter()
    data = ncf_data.load(csv, seed=0)
    out["load_split_s"] = round(time.perf_counter() - t, 1)
    out["users"], out["items"], out["train_pairs"] = (
        len(data.user_ids),
        len(data.item_ids),
        len(data.train_users),
    )
    config = TrainConfig(epochs=epochs, device="cpu", embedding_updates=embedding_updates)
    out |= popularity_metrics(data, config.top_k)
    checkpoints = Path(tempfile.mkdtemp(dir=workdir, prefix="ckpt-"))
    per_epoch: list[dict[str, Any]] = []
    trainer = Trainer(data, config, checkpoint_dir=checkpoints)

    def on_epoch(report: EpochReport) -> None:
        first, last = tenth_rates(trainer.epoch_marks)
        health = trainer.health  # checked at the epoch's end
        line = {
            "epoch": report.epoch,
            "train_s": round(report.train_s, 1),
            "samples_per_s": round(trainer.epoch_samples / report.train_s),
            "first_tenth_samples_per_s": first,
            "last_tenth_samples_per_s": last,
            "eval_s": round(report.eval_s, 1),  # validation and test, every user of each
            "hr": round(report.test.hr, 4),
            "ndcg": round(report.test.ndcg, 4),
            "dead_units": [round(h.dead_units, 3) for h in health if h.dead_units is not None],
            "subnormal_max": round(max(h.subnormal for h in health), 4),
        }
        per_epoch.append(line)
        print(json.dumps(line), file=sys.stderr, flush=True)

    trainer.on_epoch = on_epoch
    out["steps_per_epoch"] = trainer.steps_per_epoch()
    out["embedding_updates"] = {
        side: "lazy" if lazy else "dense"
        for side, lazy in zip(("users", "items"), trainer.lazy_sides, strict=True)
    }
    t = time.perf_counter()
    trainer.fit()
    out["fit_s"] = round(time.perf_counter() - t, 1)
    out["epochs"] = per_epoch
    train_s = sum(e["train_s"] for e in per_epoch)
    out["samples_per_s"] = round(trainer.epoch_samples * len(per_epoch) / train_s)
    t = time.perf_counter()
    evaluate(trainer.model, data.test, config.top_k, "cpu")
    out["test_eval_s"] = round(time.perf_counter() - t, 1)
    out["eval_users"] = len(data.test)
    t = time.perf_counter()
    path = trainer.save_checkpoint()
    out["checkpoint_s"] = round(time.perf_counter() - t, 2)
    out["checkpoint_mb"] = round(path.stat().st_size / 2**20, 1) if path else None
    model_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="model-"))
    save_artifact(model_dir, trainer.model, data)
    trainer = data = None  # free them before timing the load
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
    parser.add_argument("--epochs", type=int, default=1, help="whole epochs of training per size")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ncf-scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-updates", choices=("auto", "dense", "lazy"), default="auto")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size here
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        csv = args.workdir / f"ratings-{args.one}-{args.seed}.csv"
        print(json.dumps(measure(csv, args.epochs, args.workdir, args.embedding_updates)))
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
        cmd += ["--epochs", str(args.epochs)]
        t = time.perf_counter()
        # The child's per-epoch lines go to stderr as they come (a 20M epoch takes minutes).
        child = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        if child.returncode != 0:
            line["error"] = f"exit code {child.returncode}"
        else:
            line |= json.loads(child.stdout.strip().splitlines()[-1])
        line["wall_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
