"""``scripts/pipeline.sh --local``: the same pipeline object, run on this machine by the SDK's local mode.

``sagemaker.workflow.pipeline_context.LocalPipelineSession`` runs each step in Docker (docker compose, as
SageMaker would run the job: ``IMAGE train`` for Train, the ``evaluate`` entrypoint for Evaluate) on the
images built here (``ncf-train:local`` and ``ncf-serve:local`` unless --train-image / --serve-image), and
evaluates the condition and the Fail step's message itself. What local mode still asks of AWS is S3: the
channels and processing inputs are downloaded from S3, the model.tar.gz and evaluation.json uploaded there,
and the property file read back from there; they go to the bucket given (an explicit default bucket, never
``sagemaker-REGION-ACCOUNT``) at the endpoint of ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set
(the tests' moto server) or at S3.

Registration: local mode cannot run a RegisterModel step (it runs training, processing, transform,
create-model, condition and fail steps only). So the local pipeline's Register step creates the (local)
model instead (``Register-CreateModel``), and once that step has succeeded this module sends the real
Register step's CreateModelPackage request itself: the arguments of the very step that ``upsert`` deploys,
worked out with the SDK's own local evaluator against this execution's parameters and properties (model
data, evaluation.json of this execution), to SageMaker (or ``AWS_ENDPOINT_URL``). The model package group
must exist (mlops/infra creates it), as for a pipeline on SageMaker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ncf_launch.aws_client import (
    LOCAL_TAG,
    SERVE_REPOSITORY,
    TRAIN_REPOSITORY,
    Failure,
    UsageError,
    ecr_image_uri,
    result,
    say,
    show_request,
)

from . import parameters as P
from .pipeline import REGISTER_STEP, Settings, build
from .session import SDK_DEFAULTS

LOCAL_IMAGES = {
    "train_image": f"{TRAIN_REPOSITORY}:{LOCAL_TAG}",
    "serve_image": f"{SERVE_REPOSITORY}:{LOCAL_TAG}",
}
REGISTER_REQUEST_STEP = f"{REGISTER_STEP}-RegisterModel"  # the deployed pipeline's step (a ModelStep's)
LOCAL_REGISTER_STEP = f"{REGISTER_STEP}-CreateModel"  # what --local runs in its place


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def check_images(settings: Settings) -> None:
    """Both images must be on this machine's Docker engine: local mode would otherwise try to pull them."""
    for image in (settings.train_image, settings.serve_image):
        try:
            proc = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True)
        except FileNotFoundError:
            raise UsageError("no `docker` command on PATH: --local runs the steps in Docker") from None
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
            raise UsageError(
                f"no local image {image} ({reason}): build it with scripts/build_and_push.sh --cpu --no-push"
            )


def local_session(settings: Settings) -> Any:
    """A ``LocalPipelineSession`` for the settings' region with the settings' bucket as default bucket."""
    import boto3

    # Local training imports sagemaker.experiments._metrics, whose import calls logging.basicConfig at INFO
    # (each boto3 client would then log its credentials and endpoint): imported first, the level put back.
    import sagemaker.experiments._metrics  # noqa: F401
    from sagemaker.workflow.pipeline_context import LocalPipelineSession

    logging.getLogger().setLevel(logging.WARNING)
    boto_session = boto3.Session(region_name=settings.region)
    session = LocalPipelineSession(
        boto_session=boto_session, default_bucket=settings.bucket, s3_endpoint_url=s3_endpoint()
    )
    session._default_bucket = settings.bucket  # known: default_bucket() must not look for it (or create it)
    session.sagemaker_config = SDK_DEFAULTS  # telemetry off (no call to a public S3 URL per step)
    return session


def typed(overrides: dict[str, str]) -> dict[str, str | int | float]:
    """The checked ``--param`` texts as the local executor wants them: of the parameter's own type."""
    kinds = {p.name: p.kind for p in P.parameters(data_uri="")}
    return {name: kinds[name](text) for name, text in overrides.items()}


def seconds(step: dict) -> float | None:
    start, end = step.get("StartTime"), step.get("EndTime")
    return None if start is None or end is None else end - start


def deployed_settings(settings: Settings, account: str, given: dict[str, str | None]) -> Settings:
    """The settings ``upsert`` would deploy with: the images given, else ``:latest`` in the account's ECR
    (a model package names an ECR image; ``ncf-serve:local`` exists on this machine only)."""
    images = {
        flag: given.get(flag) or ecr_image_uri(account, settings.region, repository)
        for flag, repository in (("train_image", TRAIN_REPOSITORY), ("serve_image", SERVE_REPOSITORY))
    }
    return dataclasses.replace(settings, **images)


def register_request(settings: Settings, execution: Any, session: Any) -> dict:
    """The deployed Register step's CreateModelPackage arguments, with this execution's values."""
    from sagemaker.local.pipeline import LocalPipelineExecutor

    from .pipeline import GATE_STEP
    from .session import no_instance_metadata

    with no_instance_metadata():
        deployed = build(settings)
        (gate,) = [s for s in deployed.steps if s.name == GATE_STEP]
        # A ModelStep is a collection of steps (its RegisterModel among them); the others are steps.
        flat = [s for branch in gate.if_steps for s in getattr(branch, "steps", [branch])]
        (step,) = [s for s in flat if s.name == REGISTER_REQUEST_STEP]
        arguments = step.arguments
    evaluator = LocalPipelineExecutor(execution, session)
    return evaluator._parse_arguments(arguments, REGISTER_REQUEST_STEP)


def run(settings: Settings, deployed: Settings, overrides: dict[str, str], step_line) -> dict:
    """Run the pipeline of ``settings`` here; print each step's outcome and wall time; when the gate
    passed, send the Register step of the pipeline of ``deployed`` (the same but for its images)."""
    check_images(settings)
    session = local_session(settings)
    pipeline = build(settings, session)
    pipeline.upsert(role_arn=settings.role_arn)  # held in this process only (LocalSagemakerClient)
    say(f"running pipeline {settings.name} locally (steps in Docker; S3 at {s3_endpoint() or 'AWS'})")
    work = Path(tempfile.mkdtemp(prefix="ncf-local-pipeline-"))
    session.config = {"local": {"container_root": str(work)}}  # each job's /opt/ml trees, removed after
    started = time.monotonic()
    try:
        # The SDK copies the containers' output to stdout: stdout is kept for our result lines.
        with contextlib.redirect_stdout(sys.stderr), kept_failure_reasons() as reasons:
            execution = pipeline.start(parameters=typed(overrides))
        reason = reasons[-1] if reasons else None
    finally:
        remove_jobs(work)
    wall = time.monotonic() - started
    desc = execution.describe()
    status = desc["PipelineExecutionStatus"]
    steps = sorted(execution.list_steps()["PipelineExecutionSteps"], key=lambda s: s["StartTime"])
    for step in steps:
        said = step.get("FailureReason")
        if reason and said and said.startswith("RuntimeError: Failed to run:"):
            step["FailureReason"] = f"{reason} (local mode: {said})"
            desc["FailureReason"] = desc.get("FailureReason", "").replace(said, step["FailureReason"])
    result(f"execution {desc['PipelineExecutionArn']}: {status} in {wall:.1f} s")
    for step in steps:
        result(f"  {step_line(step, seconds(step))}")
    if status != "Succeeded":
        raise Failure(f"local pipeline execution {status.lower()}: {desc.get('FailureReason')}")
    if any(s["StepName"] == LOCAL_REGISTER_STEP and s["StepStatus"] == "Succeeded" for s in steps):
        register(deployed, execution, session)
    return desc


@contextlib.contextmanager
def kept_failure_reasons() -> Iterator[list[str]]:
    """The reasons failed jobs wrote (/opt/ml/output/failure for a training job, /opt/ml/output/message for
    the evaluate program), which SageMaker shows as a step's FailureReason. Local mode says only that docker
    compose exited 1, and deletes each job's /opt/ml tree right after it (``_SageMakerContainer._cleanup``):
    for the length of the execution, that cleanup reads them first."""
    from sagemaker.local.image import _SageMakerContainer

    reasons: list[str] = []
    cleanup = _SageMakerContainer._cleanup

    def reading_cleanup(container, dirs_to_delete=None):
        for host in container.hosts:
            for name in ("failure", "message"):
                path = Path(container.container_root, host, "output", name)
                if path.is_file() and (text := path.read_text(encoding="utf-8", errors="replace").strip()):
                    reasons.append(text)
        return cleanup(container, dirs_to_delete)

    _SageMakerContainer._cleanup = reading_cleanup
    try:
        yield reasons
    finally:
        _SageMakerContainer._cleanup = cleanup


def remove_jobs(work: Path) -> None:
    """The SDK leaves each job's stopped containers and its /opt/ml tree behind: remove both."""
    from sagemaker.local.image import DOCKER_COMPOSE_FILENAME, _SageMakerContainer

    compose = _SageMakerContainer._get_compose_cmd_prefix()
    for file in sorted(work.glob(f"*/{DOCKER_COMPOSE_FILENAME}")):
        down = [*compose, "-f", str(file), "down", "--remove-orphans"]
        subprocess.run(down, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(work, ignore_errors=True)  # files a container wrote as root may stay for a non-root user


def register(settings: Settings, execution: Any, session: Any) -> str:
    request = register_request(settings, execution, session)
    show_request("CreateModelPackage", request)
    sm = session.boto_session.client("sagemaker")  # AWS_ENDPOINT_URL applies, as for every client
    arn = sm.create_model_package(**request)["ModelPackageArn"]
    result(f"registered {arn}")
    return arn
