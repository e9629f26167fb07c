"""End-to-end jobs shared by the CLI and the training container: data → train → artifact, and evaluate."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import artifact, pretraining
from . import data as ncf_data
from .config import DEFAULT_TOP_K, PRETRAIN_PARTS
from .errors import ConfigError, DataError
from .evaluation import Metrics, evaluate
from .models import NCF
from .training import Distributed, EpochReport, TrainConfig, Trainer, TrainResult

log = logging.getLogger("ncf_core.jobs")


def load_pretrained(pretrain_dir: str | Path, data: ncf_data.Interactions, config: TrainConfig) -> NCF:
    """NeuMF initialised from ``DIR/gmf`` and ``DIR/mlp`` artifacts trained on the same ids."""
    root = Path(pretrain_dir)
    parts = {}
    for name in PRETRAIN_PARTS:
        art = artifact.load(root / name)
        if art.user_ids != data.user_ids or art.item_ids != data.item_ids:
            raise ConfigError(f"pre-trained {root / name} was trained on other user/item ids than this data")
        parts[name] = art.model
    model, _ = pretraining.combine(
        parts["gmf"], parts["mlp"], data.val, config.pretrain_alpha, config.top_k, dropout=config.dropout
    )
    c = model.config
    if (c.factor, c.num_layers) != (config.factor, config.num_layers):
        raise ConfigError(
            f"pre-trained models have factor {c.factor} and {c.num_layers} layers, "
            f"but training asks for factor {config.factor} and {config.num_layers} layers"
        )
    return model


def train_to_artifact(
    data: ncf_data.Interactions,
    config: TrainConfig,
    model_dir: str | Path | None,
    *,
    checkpoint_dir: str | Path | None = None,
    dist: Distributed | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    extra_training_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (resuming from ``checkpoint_dir``) and, on the main rank, write the artifact."""
    initial = load_pretrained(config.pretrain_dir, data, config) if config.pretrain_dir else None
    trainer = Trainer(
        data,
        config,
        checkpoint_dir=checkpoint_dir,
        dist=dist,
        initial_model=initial,
        should_stop=should_stop,
        on_epoch=on_epoch,
    )
    trainer.resume()
    result = trainer.fit()
    if result.stopped or model_dir is None or not trainer.dist.is_main:
        return result
    metrics = result.summary()
    training = {
        "config": {k: v for k, v in vars(config).items()},
        "data_source": data.source,
        "split": data.split,
        "history": result.history,
        **(extra_training_info or {}),
    }
    save_artifact(model_dir, result.model, data, metrics=metrics, training=training)
    return result


def save_artifact(
    model_dir: str | Path,
    model: NCF,
    data: ncf_data.Interactions,
    *,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """The artifact of ``model`` trained on ``data``: its id maps, history and popularity come from there."""
    return artifact.save(
        model_dir,
        model,
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        history=data.history_csr(),
        item_popularity=data.item_popularity(),
        metrics=metrics,
        training=training,
    )


def evaluate_artifact(
    model_dir: str | Path, data_spec: str | Path, k: int = DEFAULT_TOP_K, seed: int | None = None
) -> dict:
    """Test (and validation) HR/NDCG of a saved model on data split the way training split it."""
    art = artifact.load(model_dir)
    if seed is None:
        seed = int(art.training.get("config", {}).get("seed", 0))
    data = ncf_data.load(data_spec, seed=seed)
    if art.user_ids != data.user_ids or art.item_ids != data.item_ids:
        raise ConfigError(f"{data_spec} has other user/item ids than the model in {model_dir}")
    out: dict[str, Any] = {"k": k}
    if data.test is not None:
        out |= evaluate(art.model, data.test, k).as_dict()
        out["users"] = len(data.test)
    if data.val is not None:
        out |= evaluate(art.model, data.val, k).as_dict("val_")
    return out


def load_test_split(
    art: artifact.Artifact, rating_file: str | Path, negative_file: str | Path
) -> ncf_data.EvalSplit:
    """The held-out pairs of an NCF ``*.test.rating`` with their ``*.test.negative`` lists, in the model's
    indices (ids mapped through its id maps, so a model trained on raw ids is evaluated on raw ids).

    Raises DataError when there is no test user, a pair has no negatives line, or an id is not the model's:
    a quality gate must never pass on an empty or foreign test set."""
    users, items = ncf_data.read_pairs(rating_file)
    neg_users, neg_items, negatives = ncf_data.read_negatives(negative_file)
    if len(users) == 0:
        raise DataError("no test users: nothing to evaluate", rating_file)
    row = {(int(u), int(i)): k for k, (u, i) in enumerate(zip(neg_users, neg_items, strict=True))}
    missing = [(int(u), int(i)) for u, i in zip(users, items, strict=True) if (int(u), int(i)) not in row]
    if missing:
        raise DataError(f"{len(missing)} test pairs have no line in {negative_file} (first: {missing[0]})")
    order = np.asarray([row[(int(u), int(i))] for u, i in zip(users, items, strict=True)], np.int64)
    user_index = {raw: k for k, raw in enumerate(art.user_ids)}
    item_index = {raw: k for k, raw in enumerate(art.item_ids)}

    def mapped(ids: np.ndarray, index: dict, kind: str, path: str | Path) -> np.ndarray:
        unknown = sorted({int(x) for x in np.unique(ids)} - index.keys())
        if unknown:
            raise DataError(f"{len(unknown)} {kind} ids the model does not know (first: {unknown[0]})", path)
        return np.asarray([index[int(x)] for x in ids.ravel()], np.int64).reshape(ids.shape)

    return ncf_data.EvalSplit(
        mapped(users, user_index, "user", rating_file),
        mapped(items, item_index, "item", rating_file),
        mapped(negatives[order], item_index, "item", negative_file),
    )


def evaluate_raw_split(model_dir: str | Path, ratings: str | Path, k: int = DEFAULT_TOP_K) -> Metrics:
    """HR@k / NDCG@k of a saved model on a raw ratings file, held out the way its training held it out.

    The split (each user's latest interaction as test, its sampled negatives) is redone with the settings the
    artifact recorded (seed, test_num_ng, min_rating, validation), so it is the test set training reported.
    Raises ConfigError when the file gives other ids than the model's (another data set)."""
    art = artifact.load(model_dir)
    split = art.training.get("split") or {"seed": int(art.training.get("config", {}).get("seed", 0))}
    data = ncf_data.load(ratings, **split)
    if art.user_ids != data.user_ids or art.item_ids != data.item_ids:
        raise ConfigError(f"{ratings} has other user/item ids than the model in {model_dir}")
    if data.test is None:
        raise DataError("no test users: nothing to evaluate", ratings)
    return evaluate(art.model, data.test, k)


def evaluate_test_files(
    model_dir: str | Path, rating_file: str | Path, negative_file: str | Path, k: int = DEFAULT_TOP_K
) -> Metrics:
    """HR@k / NDCG@k of a saved model on NCF test files (the pipeline's Evaluate step)."""
    art = artifact.load(model_dir)
    return evaluate(art.model, load_test_split(art, rating_file, negative_file), k)
