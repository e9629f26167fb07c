"""SageMaker hyperparameters → ``TrainConfig`` + ``DataConfig``.

Names, aliases and types come from the schema in ``ncf_core.config`` (the seed workshop's names such as
``factor_num`` and ``num_ng`` are aliases there, so its estimator settings carry over). SageMaker delivers
every value as a string, and SDK ≥ 2.110 JSON-encodes them (``"256"``, ``"\\"neumf\\""``): both forms are
accepted. Unknown or invalid names fail before any work, with a message that says what to fix (it becomes
the job's FailureReason); ``sagemaker_*`` keys are the platform's and are passed through.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ncf_core import config as schema
from ncf_core.config import DataConfig, TrainConfig
from ncf_core.errors import ConfigError


@dataclass
class JobOptions:
    config: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    platform: dict[str, Any] = field(default_factory=dict)  # sagemaker_* keys (script mode, MPI...)


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


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def require_object(value: Any, source: str) -> dict[str, Any]:
    """``value`` if it is a JSON object (SageMaker's config files all are); else a ConfigError naming
    ``source`` (the file) and what it holds instead."""
    if isinstance(value, dict):
        return value
    kind = _JSON_KINDS.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )
    raise ConfigError(f"{source} must be a JSON object, not {kind}")


def parse(raw: dict[str, Any]) -> JobOptions:
    """Validate and convert a hyperparameters.json mapping."""
    require_object(raw, "hyperparameters.json")
    accepted = schema.hyperparameters()
    values: dict[type, dict[str, Any]] = {section: {} for section in schema.SECTIONS}
    plat: dict[str, Any] = {}
    for key, raw_value in raw.items():
        if schema.is_platform_key(key):
            plat[key] = decode(raw_value)
        elif key in accepted:
            entry = accepted[key]
            null = schema.null_text(entry)
            if null is not None and str(decode(raw_value)).strip().lower() == null:
                value = None
            else:
                value = convert(key, raw_value, entry.kind)
            values[entry.section][entry.name] = value
    unknown = schema.unknown_hyperparameters(raw)
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}"
        )
    config = TrainConfig(**values[TrainConfig])
    try:
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"invalid hyperparameters: {exc}") from None
    data = DataConfig(**values[DataConfig])
    try:
        data.validate()
    except ConfigError as exc:
        raise ConfigError(f"hyperparameter {exc}") from None
    return JobOptions(config, data, plat)
