"""Command line: ``python -m ncf_core {train,evaluate,recommend,download,synthetic,ncf-files,export,
hyperparameters}``.

The ``train`` options are generated from ``ncf_core.config``, the same schema as the image's
hyperparameters."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from . import config
from . import data as ncf_data
from .config import DataConfig, TrainConfig
from .errors import NcfError


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="NCF prefix or directory, or a raw ratings file/directory")
    p.add_argument("--model-dir", required=True, help="where the artifact is written")
    p.add_argument("--checkpoint-dir", help="checkpoint every epoch here and resume from it when restarted")
    for e in config.entries():
        kwargs: dict[str, Any] = {"dest": e.name, "default": e.default, "help": e.help.replace("`", "")}
        if e.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction  # --validation / --no-validation
        else:
            if e.auto:
                kwargs["type"] = _number_or_auto
            elif e.kind is not str:
                kwargs["type"] = e.kind
            if e.choices:
                kwargs["choices"] = e.choices
            else:  # named as the flag, not as the field (--layers N, not NUM_LAYERS)
                kwargs["metavar"] = e.flag.removeprefix("--").replace("-", "_").upper()
        p.add_argument(e.flag, **kwargs)


def _number_or_auto(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor auto") from None


def train_settings(args: argparse.Namespace) -> tuple[TrainConfig, DataConfig]:
    """The parsed ``train`` arguments as the two settings objects, checked (``config.settings``) before any
    data is read."""
    checked = config.settings({e.name: getattr(args, e.name) for e in config.entries()})
    return checked.config, checked.data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ncf_core", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_args(sub.add_parser("train", help="train a model and write its artifact"))
    ev = sub.add_parser("evaluate", help="HR@K / NDCG@K of a saved model")
    ev.add_argument("--model-dir", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--top-k", type=int, default=config.DEFAULT_TOP_K)
    rec = sub.add_parser("recommend", help="top-K items for users (raw ids)")
    rec.add_argument("--model-dir", required=True)
    rec.add_argument("--user", action="append", required=True)
    rec.add_argument("--top-k", type=int, default=config.DEFAULT_TOP_K)
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
    nf = sub.add_parser(
        "ncf-files", help="write a ratings file's leave-one-out split as NCF files (PREFIX.train.rating...)"
    )
    nf.add_argument("--data", required=True, help="raw ratings file or directory (u.data, ratings.dat...)")
    nf.add_argument("--to", required=True, type=Path, help="the files' prefix, e.g. data/ml-100k/ml-100k")
    nf.add_argument("--seed", type=int, default=0, help="seed of the sampled test negatives")
    ex = sub.add_parser("export", help="write an artifact as a Triton model repository (docs/triton.md)")
    ex.add_argument("--model-dir", required=True, help="the artifact to export")
    ex.add_argument("--to", required=True, type=Path, help="the Triton model repository to write into")
    ex.add_argument(
        "--name", default="ncf", help="the entry model's name; the others are NAME_* (default ncf)"
    )
    ex.add_argument("--top-k", type=int, default=config.DEFAULT_TOP_K, help="K of the top-K model")
    ex.add_argument("--packages", type=Path, help="also write NAME.tar.gz and NAME_scores.tar.gz here")
    sub.add_parser("hyperparameters", help="print the training image's hyperparameters as a markdown table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command in ("train", "evaluate", "recommend"):
        from .runtime import flush_denormals

        flush_denormals()  # before any torch thread starts (runtime.py)
    try:
        return _run(args)
    except NcfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from .jobs import train_to_artifact

        train, split = train_settings(args)
        data = ncf_data.load(
            args.data,
            seed=train.seed,
            num_eval_negatives=split.num_eval_negatives,
            validation=split.validation,
            min_rating=split.min_rating,
        )
        result = train_to_artifact(data, train, args.model_dir, checkpoint_dir=args.checkpoint_dir)
        print(json.dumps(result.summary()))
        return 0
    if args.command == "evaluate":
        from .jobs import evaluate_artifact

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
    if args.command == "ncf-files":
        data = ncf_data.load(args.data, seed=args.seed, validation=False)
        print(ncf_data.write_ncf(data, args.to))
        return 0
    if args.command == "export":
        from .triton import export, write_packages

        exported = export(args.model_dir, args.to, args.name, args.top_k)
        packages = [] if args.packages is None else write_packages(exported, args.packages)
        summary = {"repository": str(exported.repository), "models": exported.models, "top_k": exported.k}
        print(json.dumps(summary | {"packages": [str(p) for p in packages]}))
        return 0
    if args.command == "hyperparameters":
        print(config.hyperparameter_table(), end="")
        return 0
    raise AssertionError(args.command)
