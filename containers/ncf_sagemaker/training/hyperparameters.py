"""SageMaker hyperparameters → ``TrainConfig``.

SageMaker delivers every value as a string, and SDK ≥ 2.110 JSON-encodes them (``"256"``, ``"\\"neumf\\""``):
both forms are accepted. The seed workshop's names (``factor_num``, ``num_ng``...) are aliases, so its
estimator settings carry over. Unknown or invalid names fail before any work, with a message that says
what to fix (it becomes the job's FailureReason).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any

from ncf_core.errors import ConfigError
from ncf_core.training import TrainConfig

from .. import platform

# Our name → (TrainConfig field or extra option, type).
HYPERPARAMETERS: dict[str, tuple[str, type]] = {
    "model": ("model", str),
    "epochs": ("epochs", int),
    "batch_size": ("batch_size", int),
    "lr": ("lr", float),
    "factor": ("factor", int),
    "num_layers": ("num_layers", int),
    "dropout": ("dropout", float),
    "num_neg": ("num_neg", int),
    "top_k": ("top_k", int),
    "seed": ("seed", int),
    "weight_decay": ("weight_decay", float),
    "lr_decay": ("lr_decay", float),
    "patience": ("patience", int),
    "device": ("device", str),
    "pretrain_alpha": ("pretrain_alpha", float),
    # Options of the data step rather than of training.
    "test_num_ng": ("num_eval_negatives", int),
    "min_rating": ("min_rating", float),
    "validation": ("validation", bool),
}
# Numbers that also accept "auto" (None in TrainConfig: decided from the data).
AUTO_MEANS_NONE = {"pretrain_alpha"}
# The seed workshop's names.
ALIASES = {"factor_num": "factor", "num_ng": "num_neg", "learning_rate": "lr", "num_epochs": "epochs"}
# Platform keys we read elsewhere or may safely ignore (they all start with "sagemaker_").
_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


@dataclass
class JobOptions:
    config: TrainConfig
    num_eval_negatives: int = 99
    min_rating: float | None = None
    validation: bool = True
    platform: dict[str, Any] | None = None  # sagemaker_* keys (script mode, MPI...)


def decode(value: Any) -> Any:
    """Undo SageMaker's string / JSON-string encoding of one value."""
    if not isinstance(value, str):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str | int | float | bool) or decoded is None else value


def convert(name: str, raw: Any, kind: type) -> Any:
    value = decode(raw)
    shown = raw if isinstance(raw, str) else json.dumps(raw)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise ConfigError(f"hyperparameter {name}={shown!r} is not a boolean (use true or false)")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"hyperparameter {name}={shown!r} is not an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"hyperparameter {name}={shown!r} is not an integer") from None
    if kind is float:
        try:
            number = float(str(value).strip()) if not isinstance(value, bool) else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"hyperparameter {name}={shown!r} is not a number")
        return number
    return str(value).strip()


def parse(raw: dict[str, Any]) -> JobOptions:
    """Validate and convert a hyperparameters.json mapping."""
    if not isinstance(raw, dict):
        raise ConfigError("hyperparameters.json must hold a JSON object")
    train_kwargs: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    plat: dict[str, Any] = {}
    unknown = []
    for key, raw_value in raw.items():
        if key.startswith(platform.DISTRIBUTION_HP_PREFIX):
            plat[key] = decode(raw_value)
            continue
        name = ALIASES.get(key, key)
        if name not in HYPERPARAMETERS:
            unknown.append(key)
            continue
        target, kind = HYPERPARAMETERS[name]
        if name in AUTO_MEANS_NONE and str(decode(raw_value)).strip().lower() == "auto":
            value = None
        else:
            value = convert(key, raw_value, kind)
        (train_kwargs if target in _TRAIN_FIELDS else extras)[target] = value
    if unknown:
        known = sorted(set(HYPERPARAMETERS) | set(ALIASES))
        raise ConfigError(
            f"unknown hyperparameter(s) {', '.join(sorted(unknown))}; accepted: {', '.join(known)}"
        )
    config = TrainConfig(**train_kwargs)
    try:
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"invalid hyperparameters: {exc}") from None
    options = JobOptions(config=config, platform=plat, **extras)
    if options.num_eval_negatives < 1:
        raise ConfigError(f"hyperparameter test_num_ng={options.num_eval_negatives} must be ≥ 1")
    return options
