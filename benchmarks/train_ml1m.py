"""Train NeuMF on the NCF paper's ML-1M split and print one JSON line per epoch plus a JSON summary.

    python -m benchmarks.train_ml1m                      # NeuMF-32, 3 layers, no pre-training
    python -m benchmarks.train_ml1m --pretrain           # GMF + MLP first, then NeuMF from them
    python -m benchmarks.train_ml1m --seeds 1,2,3        # three whole runs, then their mean

Each run also times the workshop's training loop on the same machine (``benchmarks/workshop_reference.py``,
``--workshop-batches``, 0 to skip) and reports how many times faster this run was: per epoch, and to a
model at HR@10 ≥ 0.70 (the workshop's 20 epochs against this run's whole wall time, when its kept epoch
reaches 0.70).

Data: $NCF_DATA_DIR (default ../shared/data beside the checkout), ``ml-1m/`` with the genuine test files and
``ml-1m/derived/ml-1m.train.pairs.tsv`` as the training set. Targets are in README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks import workshop_reference
from ncf_core import data as ncf_data
from ncf_core.evaluation import evaluate
from ncf_core.health import network_health
from ncf_core.pretraining import combine
from ncf_core.sampling import PositiveSet, sample_distinct_negatives
from ncf_core.training import EpochReport, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("NCF_DATA_DIR", ROOT.parent / "shared" / "data"))


def load_ml1m(seed: int) -> ncf_data.Interactions:
    base = data_dir() / "ml-1m"
    data = ncf_data.load_ncf(
        base / "derived" / "ml-1m.train.pairs.tsv", base / "ml-1m.test.rating", base / "ml-1m.test.negative"
    )
    ncf_data.add_validation(data, seed=seed, chronological=False)
    return data


def resampled_test(data: ncf_data.Interactions, seed: int) -> ncf_data.EvalSplit:
    """The test positives against a second set of 99 negatives drawn with the paper's protocol (items the
    user never interacted with), so that a recipe tuned to the genuine negatives shows it."""
    import torch

    users, items = data.known_positives()
    positives = PositiveSet(torch.from_numpy(users), torch.from_numpy(items), data.num_users, data.num_items)
    gen = torch.Generator().manual_seed(10_007 + seed)
    test = data.test
    negatives = sample_distinct_negatives(torch.from_numpy(test.users), 99, positives, gen).numpy()
    return ncf_data.EvalSplit(test.users, test.items, negatives)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def run(stage: str, data, config: TrainConfig, initial_model=None):
    def on_epoch(report: EpochReport) -> None:
        emit({"stage": stage, **report.as_dict()})

    return train(data, config, on_epoch=on_epoch, initial_model=initial_model)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--lr-decay", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--mlp-weight-decay", type=float, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--factor", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument(
        "--seeds", default="42", help="comma-separated seeds, one whole run each, then their mean"
    )
    parser.add_argument("--pretrain", action="store_true", help="pre-train GMF and MLP, then NeuMF from them")
    parser.add_argument("--num-neg", type=int, default=None)
    parser.add_argument("--embedding-updates", choices=("auto", "dense", "lazy"), default=None)
    parser.add_argument("--precision", choices=("auto", "fp32", "tf32", "bf16", "fp16"), default=None)
    parser.add_argument(
        "--workshop-batches", type=int, default=2000, help="batches of the workshop loop to time (0: skip)"
    )
    return parser.parse_args()


def run_seed(args: argparse.Namespace, seed: int) -> tuple[dict, ncf_data.Interactions]:
    """One whole run (data split, training, evaluation) for ``seed``; its summary and its data."""
    t0 = time.perf_counter()
    data = load_ml1m(seed)
    load_s = time.perf_counter() - t0
    base = TrainConfig(factor=args.factor, num_layers=args.layers, seed=seed)
    overrides = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("batch_size", args.batch_size),
            ("lr", args.lr),
            ("lr_decay", args.lr_decay),
            ("weight_decay", args.weight_decay),
            ("mlp_weight_decay", args.mlp_weight_decay),
            ("warmup_steps", args.warmup_steps),
            ("dropout", args.dropout),
            ("num_neg", args.num_neg),
            ("embedding_updates", args.embedding_updates),
            ("precision", args.precision),
        )
        if v is not None
    }
    stages = {}
    if args.pretrain:
        gmf = run("gmf", data, replace(base, model="gmf", **PRETRAIN["gmf"]))
        mlp = run("mlp", data, replace(base, model="mlp", **PRETRAIN["mlp"]))
        init, alpha = combine(gmf.model, mlp.model, data.val)  # alpha picked on validation
        stages = {"gmf": gmf.summary(), "mlp": mlp.summary(), "alpha": alpha}
        result = run("neumf", data, replace(base, **(PRETRAIN["neumf"] | overrides)), initial_model=init)
    else:
        result = run("neumf", data, replace(base, **overrides))
    total_s = time.perf_counter() - t0
    # The 156 users whose own test item is among their negatives: how the choice moves the numbers.
    pessimistic = evaluate(result.model, data.test, 10, drop_duplicate_negatives=False)
    resampled = evaluate(result.model, resampled_test(data, seed), 10)
    health = network_health(result.model)
    epochs = [h for h in result.history if "loss" in h]
    epoch_s = sum(h["train_s"] + h["eval_s"] for h in epochs) / max(len(epochs), 1)
    summary = {
        "summary": True,
        "model": "neumf",
        "pretrain": args.pretrain,
        "seed": seed,
        "load_s": round(load_s, 2),
        "total_s": round(total_s, 2),
        "epoch_s": round(epoch_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **result.summary(),
        "hr_dup_negative_as_loss": round(pessimistic.hr, 6),
        "ndcg_dup_negative_as_loss": round(pessimistic.ndcg, 6),
        "resampled_hr": round(resampled.hr, 6),
        "resampled_ndcg": round(resampled.ndcg, 6),
        # The kept model's MLP units that never fire on random pairs, per layer, and the largest share
        # of subnormal values in any weight (ncf_core.health): the tower must stay alive.
        "dead_units": [round(h.dead_units, 3) for h in health if h.dead_units is not None],
        "subnormal_max": round(max(h.subnormal for h in health), 4),
        "stages": stages,
    }
    return summary, data


def workshop_ratios(reference: dict, summary: dict) -> dict:
    """How many times faster than the workshop's loop: per epoch, and to a kept model at HR@10 ≥ 0.70 and
    NDCG@10 ≥ 0.42 (None when this run's kept epoch does not get there)."""
    if not reference:
        return {}
    good = summary.get("hr", 0.0) >= 0.70 and summary.get("ndcg", 0.0) >= 0.42
    return {
        "x_faster_per_epoch": round(reference["workshop_epoch_s"] / summary["epoch_s"], 1),
        "x_faster_to_hr_070": (
            round(reference["workshop_time_to_hr_070_s"] / summary["total_s"], 1) if good else None
        ),
    }


MEAN_KEYS = ("hr", "ndcg", "resampled_hr", "resampled_ndcg", "val_hr", "val_ndcg", "total_s", "epoch_s")


def main() -> None:
    args = parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    reference: dict = {}
    summaries = []
    for seed in seeds:
        summary, data = run_seed(args, seed)
        if args.workshop_batches and not reference:  # timed once, after the first run, on its data
            reference = workshop_reference.time_epoch(
                data.train_users,
                data.train_items,
                data.num_users,
                data.num_items,
                np.concatenate([data.test.users[:, None], data.test.items[:, None], data.test.negatives], 1),
                batches=args.workshop_batches,
            )
        summary |= reference | workshop_ratios(reference, summary)
        summaries.append(summary)
        emit(summary)
    if len(seeds) > 1:
        mean = {k: round(float(np.mean([s[k] for s in summaries])), 6) for k in MEAN_KEYS}
        emit(
            {
                "mean_of_seeds": seeds,
                "pretrain": args.pretrain,
                **mean,
                "min_hr": round(min(s["hr"] for s in summaries), 6),
                "min_resampled_hr": round(min(s["resampled_hr"] for s in summaries), 6),
                "best_epochs": [s["best_epoch"] for s in summaries],
                **workshop_ratios(reference, mean),
            }
        )


# Pre-training (the paper's recipe, Adam everywhere): GMF and MLP trained apart with 8 negatives (both gain
# from more negatives than NeuMF needs), combined with alpha picked on validation, then NeuMF fine-tuned
# with a tiny constant lr. The combination alone is already strong (epoch 0 of the fine-tuning stage, a
# candidate for the kept epoch); lr 1e-4 fine-tuning made it worse.
PRETRAIN = {
    "gmf": {"epochs": 20, "lr": 0.01, "num_neg": 8},
    "mlp": {"epochs": 12, "lr": 0.006, "num_neg": 8},
    "neumf": {"epochs": 2, "lr": 1e-5, "lr_decay": 1.0},
}

if __name__ == "__main__":
    main()
