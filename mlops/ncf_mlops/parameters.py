"""The pipeline's parameters, declared once: names, kinds, defaults and what a value must satisfy.

Kept free of the SageMaker SDK: ``scripts/pipeline.sh start`` checks overrides against this list (unknown
names, thresholds outside 0–1, hyperparameters the image would refuse) before any AWS call, and
``pipeline.py`` turns the same list into ``ParameterString`` / ``ParameterInteger`` / ``ParameterFloat``.
The training hyperparameters are ``ncf_core.config``'s, one string parameter each (named as the
hyperparameter, defaulting to the schema's default as SageMaker would send it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ncf_core import config as schema
from ncf_core.config import DEFAULT_TOP_K
from ncf_core.errors import ConfigError
from ncf_launch.aws_client import TRAIN_INSTANCE_TYPE, UsageError

GATE_K = DEFAULT_TOP_K  # the gate is on HR@10 and NDCG@10

INPUT_DATA = "InputDataUri"
TEST_DATA = "TestDataUri"
TRAIN_INSTANCE_TYPE_PARAM = "TrainInstanceType"
TRAIN_INSTANCE_COUNT = "TrainInstanceCount"
EVAL_INSTANCE_TYPE = "EvalInstanceType"
EVAL_INSTANCE_COUNT = "EvalInstanceCount"
MIN_HR = f"MinHrAt{GATE_K}"
MIN_NDCG = f"MinNdcgAt{GATE_K}"
MODEL_PACKAGE_GROUP = "ModelPackageGroupName"
APPROVAL_STATUS = "ModelApprovalStatus"
MLFLOW_TRACKING_URI = "MlflowTrackingUri"
TRITON_GROUP = "TritonModelPackageGroupName"  # only in a pipeline upserted with --triton

APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")
DEFAULT_GROUP = "ncf-models"  # the model package group (mlops/infra/ creates it; the rule listens to it)
DEFAULT_TRITON_GROUP = "ncf-models-triton"  # the Triton packages' group (created by hand: docs/triton.md)
DEFAULT_EVAL_INSTANCE_TYPE = "ml.m5.large"
# ML-1M NeuMF-32 reaches 0.70 / 0.42 (README, Results): a model well below that is not registered.
DEFAULT_MIN_HR = 0.6
DEFAULT_MIN_NDCG = 0.35


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter; ``hyperparameter`` is the schema entry when it is one."""

    name: str
    kind: type  # str, int or float: ParameterString / ParameterInteger / ParameterFloat
    default: str | int | float
    help: str
    choices: tuple[str, ...] | None = None
    unit_interval: bool = False  # a threshold: 0 ≤ value ≤ 1
    minimum: int | None = None
    hyperparameter: schema.Entry | None = None


def hyperparameter_parameters() -> tuple[Parameter, ...]:
    """One string parameter per training hyperparameter (canonical names, not the workshop's aliases)."""
    return tuple(
        Parameter(e.hyperparameter, str, schema.default_as_sent(e), e.help, hyperparameter=e)
        for e in schema.entries()
        if e.hyperparameter is not None
    )


def parameters(data_uri: str, tracking_uri: str = "", triton: bool = False) -> tuple[Parameter, ...]:
    """Every parameter, in the order the definition lists them; ``data_uri`` is the default data prefix
    (NCF files: ``*.train.rating`` for training, ``*.test.rating`` + ``*.test.negative`` for the gate),
    ``tracking_uri`` the default MLflow tracking server (empty: no tracking); ``triton``: the pipeline also
    exports and registers the Triton package."""
    extra = (
        (Parameter(TRITON_GROUP, str, DEFAULT_TRITON_GROUP, "model package group of the Triton package"),)
        if triton
        else ()
    )
    return (
        Parameter(INPUT_DATA, str, data_uri, "the train channel (S3 prefix)"),
        Parameter(TEST_DATA, str, data_uri, "NCF test files the Evaluate step scores (S3 prefix)"),
        Parameter(TRAIN_INSTANCE_TYPE_PARAM, str, TRAIN_INSTANCE_TYPE, "training instance type"),
        Parameter(TRAIN_INSTANCE_COUNT, int, 1, "training instances (more than 1: distributed)", minimum=1),
        Parameter(EVAL_INSTANCE_TYPE, str, DEFAULT_EVAL_INSTANCE_TYPE, "evaluation instance type"),
        Parameter(EVAL_INSTANCE_COUNT, int, 1, "evaluation instances", minimum=1),
        Parameter(MIN_HR, float, DEFAULT_MIN_HR, f"least HR@{GATE_K} to register", unit_interval=True),
        Parameter(MIN_NDCG, float, DEFAULT_MIN_NDCG, f"least NDCG@{GATE_K} to register", unit_interval=True),
        Parameter(MODEL_PACKAGE_GROUP, str, DEFAULT_GROUP, "model package group the model is registered in"),
        Parameter(
            APPROVAL_STATUS,
            str,
            APPROVAL_STATUSES[0],
            "status of a registered model",
            choices=APPROVAL_STATUSES,
        ),
        Parameter(
            MLFLOW_TRACKING_URI,
            str,
            tracking_uri,
            "MLflow tracking server (URL or tracking server ARN) Train and Evaluate log to; empty: none",
        ),
        *extra,
        *hyperparameter_parameters(),
    )


def check_value(p: Parameter, text: str) -> str:
    """``text`` if the pipeline (and the image) would accept it for ``p``; else a UsageError saying why."""
    if p.hyperparameter is not None:
        try:
            schema.parse_hyperparameters({p.name: text})  # what the image parses with
        except ConfigError as exc:
            raise UsageError(f"--param {p.name}={text}: {exc}") from None
        return text
    if p.choices and text not in p.choices:
        raise UsageError(f"--param {p.name}={text}: must be one of {', '.join(p.choices)}")
    if p.kind is int:
        try:
            number = int(text)
        except ValueError:
            raise UsageError(f"--param {p.name}={text}: not an integer") from None
        if p.minimum is not None and number < p.minimum:
            raise UsageError(f"--param {p.name}={text}: must be at least {p.minimum}")
    if p.kind is float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UsageError(f"--param {p.name}={text}: not a number")
        if p.unit_interval and not 0.0 <= value <= 1.0:
            raise UsageError(f"--param {p.name}={text}: a threshold must lie in 0–1")
    if p.kind is str and p.name in (INPUT_DATA, TEST_DATA):
        from ncf_launch.aws_client import parse_s3_uri

        parse_s3_uri(text, f"--param {p.name}")
    return text


def check_overrides(overrides: dict[str, str], params: tuple[Parameter, ...]) -> dict[str, str]:
    """The overrides, each checked; unknown names are refused with the list of known ones."""
    by_name = {p.name: p for p in params}
    unknown = sorted(set(overrides) - by_name.keys())
    if unknown:
        raise UsageError(
            f"unknown pipeline parameter(s) {', '.join(unknown)}; the pipeline has: {', '.join(by_name)}"
        )
    return {name: check_value(by_name[name], text) for name, text in overrides.items()}
