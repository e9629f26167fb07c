"""Experiment tracking: an MLflow run for each ``train`` and ``evaluate`` program, when
``MLFLOW_TRACKING_URI`` is set (a server URL, or a SageMaker managed MLflow tracking server ARN, which the
``sagemaker-mlflow`` plugin resolves and signs for).

Tracking is a side channel: the job's result is what it writes under /opt/ml. So any tracking failure (no
mlflow installed, a server that does not answer, a refused request) logs one WARNING and turns tracking off
for the rest of the program; it never fails the job, and it stalls it at most once: MLflow's own HTTP retry
policy (7 retries with exponential backoff, 120 s timeouts: minutes) is shortened unless the environment
sets it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import contract

log = logging.getLogger("ncf_sagemaker.tracking")

# Run tags; a training run is named after its training job (MLflow's run name).
PROGRAM_TAG = "ncf.program"
TRAINING_JOB_TAG = "sagemaker.training_job_name"
TRAINING_JOB_ARN_TAG = "sagemaker.training_job_arn"
PROCESSING_JOB_TAG = "sagemaker.processing_job_name"
PIPELINE_EXECUTION_TAG = "sagemaker.pipeline_execution_arn"
EVALUATED_JOB_TAG = "ncf.evaluated_training_job"  # an evaluation run: whose model it scored
KEPT_PREFIX = "best_"  # the kept epoch's figures: best_hr, best_val_ndcg...
UNPREFIXED_SUMMARY = ("best_epoch", "epochs_run")
REPORTS_PATH = "reports"  # artifact folders
MODEL_PATH = "model"
PARAM_LIMIT = 6000  # MLflow refuses longer parameter values
# Ours unless set: one stall of a few seconds (or 3 x the timeout if the host drops packets), not minutes.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
ARN_PREFIX = "arn:"  # a SageMaker managed MLflow tracking server
HEADER_PLUGIN_LOGGER = "mlflow.tracking.request_header.registry"


def tracking_uri() -> str:
    """The configured tracking URI; empty (the pipeline's default) means no tracking."""
    return os.environ.get(contract.MLFLOW_TRACKING_URI_ENV, "").strip()


def shown(uri: str) -> str:
    """``uri`` without a password, for logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Run:
    """An MLflow run, or none (``Run()``). Every call is a no-op once tracking is off; the first failure
    turns it off with one WARNING."""

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str = ""):
        self._client, self.run_id, self.uri = client, run_id, uri

    @property
    def active(self) -> bool:
        return self._client is not None

    def _call(self, what: str, call: Callable[[Any], Any]) -> Any:
        if self._client is None:
            return None
        try:
            return call(self._client)
        except Exception as exc:  # tracking never fails the job
            _warn(self.uri, what, exc)
            self._client = None
            return None

    def log_params(self, values: Mapping[str, Any]) -> None:
        """Parameters not logged yet (a resumed run keeps the values it started with: MLflow's are
        immutable)."""

        def call(client: Any) -> None:
            from mlflow.entities import Param

            logged = client.get_run(self.run_id).data.params
            new = [Param(k, _text(v)) for k, v in values.items() if k not in logged]
            changed = sorted(k for k, v in values.items() if k in logged and logged[k] != _text(v))
            if changed:
                log.info("resumed MLflow run keeps its first values of %s", ", ".join(changed))
            if new:
                client.log_batch(self.run_id, params=new)

        self._call("logging parameters", call)

    def log_metrics(self, values: Mapping[str, Any], step: int = 0) -> None:
        def call(client: Any) -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, step) for k, v in values.items() if _is_number(v)]
            client.log_batch(self.run_id, metrics=metrics)

        self._call("logging metrics", call)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """One epoch's figures (``EpochReport.as_dict()``), at step = epoch."""
        self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    def log_kept(self, summary: Mapping[str, Any]) -> None:
        """The kept epoch's figures as ``best_*`` (``TrainResult.summary()``), and which epoch that was."""
        self.log_metrics(
            {k if k in UNPREFIXED_SUMMARY else KEPT_PREFIX + k: v for k, v in summary.items()},
            step=int(summary.get("best_epoch", 0)),
        )

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_file():
            self._call(
                f"uploading {path.name}", lambda c: c.log_artifact(self.run_id, str(path), artifact_path)
            )

    def log_directory(self, path: Path, artifact_path: str) -> None:
        if path.is_dir():
            self._call(f"uploading {path}", lambda c: c.log_artifacts(self.run_id, str(path), artifact_path))

    def end(self, status: str = FINISHED) -> None:
        """Close the run. MLflow prints its run's URL on stdout (evaluate's stdout is its JSON report):
        logged here instead."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self._call("ending the run", lambda c: c.set_terminated(self.run_id, status))
        for line in printed.getvalue().splitlines():
            log.info("%s", line)
        self._client = None


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:PARAM_LIMIT]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _warn(uri: str, what: str, exc: BaseException) -> None:
    log.warning(
        "experiment tracking off: %s at %s failed (%s: %s); the job goes on without it",
        what,
        shown(uri),
        type(exc).__name__,
        str(exc).splitlines()[0][:300] if str(exc) else "",
    )


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created meanwhile by a concurrent job
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _unfinished_run(client: Any, experiment_id: str, program: str, tag: str, value: str) -> str | None:
    """The run an earlier attempt of the same job left open (a spot interruption resumes the job)."""
    query = f"tags.`{PROGRAM_TAG}` = '{program}' and tags.`{tag}` = '{value}'"
    runs = client.search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["start_time DESC"]
    )
    if runs and runs[0].info.status != FINISHED:
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    return None


def start(program: str, run_name: str | None, tags: Mapping[str, str], resume_tag: str | None = None) -> Run:
    """A run in ``MLFLOW_EXPERIMENT_NAME`` (default ``ncf``); ``Run()`` when tracking is not configured or
    the server cannot be reached. With ``resume_tag`` (one of ``tags``), an unfinished run carrying the same
    tag value is continued instead of starting another."""
    uri = tracking_uri()
    if not uri:
        return Run()
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        _warn(uri, "importing mlflow (install the tracking extra)", exc)
        return Run()
    if not uri.startswith(ARN_PREFIX):
        # sagemaker-mlflow's request-header plugin takes every tracking URI for an ARN and fails to parse
        # a URL on each request (a harmless WARNING per call): quiet for URLs.
        logging.getLogger(HEADER_PLUGIN_LOGGER).setLevel(logging.ERROR)
    experiment = os.environ.get(contract.MLFLOW_EXPERIMENT_NAME_ENV) or contract.DEFAULT_MLFLOW_EXPERIMENT
    tags = {k: v for k, v in tags.items() if v} | {PROGRAM_TAG: program}
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, experiment)
        run_id = None
        if resume_tag and tags.get(resume_tag) and "'" not in tags[resume_tag]:
            run_id = _unfinished_run(client, experiment_id, program, resume_tag, tags[resume_tag])
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    except Exception as exc:
        _warn(uri, "starting a run", exc)
        return Run()
    log.info("MLflow run %s (%s) in experiment %r at %s", run_id, run_name, experiment, shown(uri))
    return Run(client, run_id, uri)


def start_training(params: Mapping[str, Any]) -> Run:
    """The ``train`` program's run: named after the training job, tagged with it and with the pipeline
    execution when there is one; ``params`` are the resolved hyperparameters."""
    job_name = os.environ.get(contract.TRAINING_JOB_NAME_ENV) or None
    tags = {
        TRAINING_JOB_TAG: job_name or "",
        TRAINING_JOB_ARN_TAG: os.environ.get(contract.TRAINING_JOB_ARN_ENV, ""),
        PIPELINE_EXECUTION_TAG: os.environ.get(contract.PIPELINE_EXECUTION_ARN_ENV, ""),
    }
    run = start("train", job_name, tags, resume_tag=TRAINING_JOB_TAG)
    run.log_params(params)
    return run


def processing_job_name() -> str | None:
    """The processing job's name, from the request SageMaker leaves in the container."""
    try:
        return json.loads(contract.processing_job_config_file().read_text()).get("ProcessingJobName")
    except (OSError, ValueError, AttributeError):
        return None


def start_evaluation() -> Run:
    """The ``evaluate`` program's run: named after the processing job, tagged with it, the training job
    whose model it scores and the pipeline execution (what the pipeline passes)."""
    job_name = processing_job_name()
    tags = {
        PROCESSING_JOB_TAG: job_name or "",
        EVALUATED_JOB_TAG: os.environ.get(contract.EVALUATED_TRAINING_JOB_ENV, ""),
        PIPELINE_EXECUTION_TAG: os.environ.get(contract.PIPELINE_EXECUTION_ARN_ENV, ""),
    }
    return start("evaluate", job_name, tags)
