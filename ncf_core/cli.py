"""Command line: ``python -m ncf_core {train,evaluate,recommend,download}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

from . import data as ncf_data
from .errors import NcfError
from .training import TrainConfig


def _add_train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--data", required=True, help="NCF prefix or directory, or a raw ratings file/directory")
    p.add_argument("--model-dir", required=True, help="where the artifact is written")
    p.add_argument("--checkpoint-dir", help="checkpoint every epoch here and resume from it when restarted")
    p.add_argument("--model", choices=("gmf", "mlp", "neumf"), default=d.model)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--factor", type=int, default=d.factor, help="predictive factors (last layer size)")
    p.add_argument("--layers", type=int, default=d.num_layers, dest="num_layers", help="MLP layers")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--num-neg", type=int, default=d.num_neg, help="training negatives per positive")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr-decay", type=float, default=d.lr_decay, help="final lr = lr * this (linear decay)")
    p.add_argument("--patience", type=int, default=d.patience, help="early stop after N epochs without gain")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--pretrain-dir", help="directory with gmf/ and mlp/ artifacts to initialise NeuMF")
    p.add_argument(
        "--pretrain-alpha",
        type=_alpha,
        default=d.pretrain_alpha,
        help="GMF weight in the pre-trained NeuMF, 0-1, or auto (default: picked on validation)",
    )
    p.add_argument("--min-rating", type=float, help="raw data: keep ratings ≥ this as interactions")


def _alpha(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number in [0, 1] nor auto") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ncf_core", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_args(sub.add_parser("train", help="train a model and write its artifact"))
    ev = sub.add_parser("evaluate", help="HR@K / NDCG@K of a saved model")
    ev.add_argument("--model-dir", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--top-k", type=int, default=10)
    rec = sub.add_parser("recommend", help="top-K items for users (raw ids)")
    rec.add_argument("--model-dir", required=True)
    rec.add_argument("--user", action="append", required=True)
    rec.add_argument("--top-k", type=int, default=10)
    rec.add_argument("--include-seen", action="store_true")
    dl = sub.add_parser("download", help="fetch a MovieLens zip from GroupLens and check its checksum")
    dl.add_argument("name", choices=("ml-100k", "ml-1m", "ml-20m"))
    dl.add_argument("--to", required=True, type=Path)
    syn = sub.add_parser(
        "synthetic", help="write a SYNTHETIC ratings CSV (planted groups) for offline trials"
    )
    syn.add_argument("--to", required=True, type=Path, help="CSV file to write")
    syn.add_argument("--users", type=int, default=600)
    syn.add_argument("--items", type=int, default=300)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run(args)
    except NcfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from .pipeline import train_to_artifact

        names = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
        config.validate()
        data = ncf_data.load(args.data, seed=config.seed, min_rating=args.min_rating)
        result = train_to_artifact(data, config, args.model_dir, checkpoint_dir=args.checkpoint_dir)
        print(json.dumps(result.summary()))
        return 0
    if args.command == "evaluate":
        from .pipeline import evaluate_artifact

        print(json.dumps(evaluate_artifact(args.model_dir, args.data, args.top_k)))
        return 0
    if args.command == "recommend":
        from .inference import Recommender

        rec = Recommender.load(args.model_dir)
        for r in rec.recommend_many(args.user, args.top_k, exclude_seen=not args.include_seen):
            print(json.dumps(r.as_dict()))
        return 0
    if args.command == "download":
        from .download import download

        print(download(args.name, args.to))
        return 0
    if args.command == "synthetic":
        from .synthetic import write_ratings_csv

        print(write_ratings_csv(args.to, num_users=args.users, num_items=args.items, groups=10, per_user=20))
        return 0
    raise AssertionError(args.command)
