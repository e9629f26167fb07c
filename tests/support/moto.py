"""The moto server the launch-script tests (tests/aws) run scripts/*.sh against, and their helpers.

moto's WSGI app (S3, ECR, STS, SageMaker, SageMaker runtime) on an ephemeral loopback port, recording every
request it receives. The tests run the real scripts as a user would (subprocesses, AWS_ENDPOINT_URL pointing
at moto, dummy credentials) and then read what they created back through boto3. What moto 5.2.1 lacks
are added to the in-process server, in `_extend_moto` (nothing else is changed):
- UpdateEndpoint is not implemented: it is added with SageMaker's semantics (the endpoint switches to the new
  config's variants and data capture);
- it overwrites a training job's MetricDefinitions with a canned one, and never fails a job or an endpoint:
  so metric definitions are checked in the CreateTrainingJob request the server received, and a test can
  ask for a job or endpoint to come up Failed with a given FailureReason (`FAILURES`);
- ListPipelineExecutionSteps is not implemented and every pipeline execution is Succeeded at once: a test
  sets the steps an execution of a pipeline lists (`PIPELINE_STEPS`) and, in `FAILURES` under the
  pipeline's name, the FailureReason its executions end Failed with;
- CreateProcessingJob drops the job's Environment and ProcessingResources: they are kept and described.
EventBridge Scheduler schedules are stored but never fire: tests/aws/test_monitor_schedule.py fires them.

The fixtures (`moto_server`, one a session; `aws`, a reset server and a bucket per test) are in
tests/aws/conftest.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import urllib.request

import boto3

from tests.support.paths import ROOT

SCRIPTS = ROOT / "scripts"
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
BUCKET = "ncf-test-bucket"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1,
            "digest": "sha256:" + "0" * 64,
        },
        "layers": [],
    }
)


# ------------------------------------------------------------------------------------------ moto server


class MotoServer:
    """moto's WSGI app on 127.0.0.1:<ephemeral>, recording every request it receives."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        _extend_moto()
        self.requests: list[dict] = []
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._recording(app), threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _recording(self, app):
        def wsgi(environ, start_response):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            headers = {
                k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
            }
            headers["content-type"] = environ.get("CONTENT_TYPE", "")
            self.requests.append(
                {
                    "target": (environ.get("HTTP_X_AMZ_TARGET") or "").rpartition(".")[2],
                    "method": environ["REQUEST_METHOD"],
                    "path": environ.get("PATH_INFO", ""),
                    "headers": headers,
                    "body": body,
                }
            )
            return app(environ, start_response)

        return wsgi

    def calls(self, target: str) -> list[dict]:
        """The JSON bodies of the SageMaker/ECR API calls named `target` (e.g. CreateTrainingJob)."""
        return [json.loads(r["body"] or b"{}") for r in self.requests if r["target"] == target]

    def reset(self) -> None:
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10
        )
        self.requests.clear()
        FAILURES.clear()
        PIPELINE_STEPS.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


FAILURES: dict[str, str] = {}  # training job, endpoint or pipeline name -> FailureReason it comes up with
PIPELINE_STEPS: dict[str, list[dict]] = {}  # pipeline name -> what ListPipelineExecutionSteps answers


def _extend_moto() -> None:
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    if getattr(SageMakerResponse, "_ncf_extended", False):
        return

    def update_endpoint(self):
        backend = self.sagemaker_backend
        name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
        backend.describe_endpoint(name)  # ValidationException when it does not exist
        config = backend.describe_endpoint_config(config_name)
        endpoint = backend.endpoints[name]
        endpoint.endpoint_config_name = config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        endpoint.data_capture_config = config["DataCaptureConfig"]
        endpoint.last_modified_time = utcnow()
        return ActionResult({"EndpointArn": endpoint.arn})

    create_job, create_endpoint = (
        SageMakerModelBackend.create_training_job,
        SageMakerModelBackend.create_endpoint,
    )

    def create_training_job(self, training_job_name, *args, **kwargs):
        job = create_job(self, training_job_name, *args, **kwargs)
        if training_job_name in FAILURES:
            stored = self.training_jobs[training_job_name]
            stored.training_job_status = stored.secondary_status = "Failed"
            stored.failure_reason = FAILURES[training_job_name]
        return job

    def create_failing_endpoint(self, endpoint_name, *args, **kwargs):
        endpoint = create_endpoint(self, endpoint_name, *args, **kwargs)
        if endpoint_name in FAILURES:
            endpoint.endpoint_status, endpoint.failure_reason = "Failed", FAILURES[endpoint_name]
        return endpoint

    def list_pipeline_execution_steps(self):
        arn = self._get_param("PipelineExecutionArn")
        self.sagemaker_backend.describe_pipeline_execution(arn)  # ValidationException when unknown
        pipeline = arn.split(":pipeline/", 1)[1].split("/execution/", 1)[0]
        return ActionResult({"PipelineExecutionSteps": PIPELINE_STEPS.get(pipeline, [])})

    start_execution = SageMakerModelBackend.start_pipeline_execution

    def start_pipeline_execution(self, pipeline_name, *args, **kwargs):
        started = start_execution(self, pipeline_name, *args, **kwargs)
        if pipeline_name in FAILURES:
            execution = self.pipelines[pipeline_name].pipeline_executions[started["PipelineExecutionArn"]]
            execution.pipeline_execution_status = "Failed"
            execution.pipeline_execution_failure_reason = FAILURES[pipeline_name]
        return started

    describe_execution = SageMakerModelBackend.describe_pipeline_execution

    def describe_pipeline_execution(self, arn):
        desc = describe_execution(self, arn)  # moto always answers FailureReason ""
        pipeline = arn.split(":pipeline/", 1)[1].split("/execution/", 1)[0]
        desc["FailureReason"] = (
            self.pipelines[pipeline].pipeline_executions[arn].pipeline_execution_failure_reason
        )
        return desc

    create_processing = SageMakerResponse.create_processing_job

    def create_processing_job(self):
        answer = create_processing(self)  # moto drops the job's Environment and ProcessingResources
        job = self.sagemaker_backend.processing_jobs[self._get_param("ProcessingJobName")]
        job.environment = self._get_param("Environment") or {}
        job.processing_resources = self._get_param("ProcessingResources")
        return answer

    SageMakerResponse.create_processing_job = create_processing_job
    SageMakerModelBackend.describe_pipeline_execution = describe_pipeline_execution
    SageMakerResponse.update_endpoint = update_endpoint
    SageMakerResponse.list_pipeline_execution_steps = list_pipeline_execution_steps
    SageMakerModelBackend.start_pipeline_execution = start_pipeline_execution
    SageMakerModelBackend.create_training_job = create_training_job
    SageMakerModelBackend.create_endpoint = create_failing_endpoint
    SageMakerResponse._ncf_extended = True


def aws_env(endpoint_url: str, **extra: str) -> dict[str, str]:
    """A user's environment aimed at `endpoint_url`: dummy credentials, none of the caller's AWS settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_", "NCF_"))}
    env |= {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_ROLE_ARN": ROLE,
        "PYTHON": sys.executable,
    }
    return env | extra


class Aws:
    """The test's view of the server: boto3 clients, the scripts' environment, and a script runner."""

    def __init__(self, server: MotoServer) -> None:
        self.server = server
        self.env = aws_env(server.url)
        session = boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.s3 = session.client("s3", endpoint_url=server.url)
        self.ecr = session.client("ecr", endpoint_url=server.url)
        self.sm = session.client("sagemaker", endpoint_url=server.url)
        self.session = session

    def run(self, script: str, *args: str, env: dict | None = None, input: str | None = None):
        return run_script(script, *args, env=env or self.env, input=input)

    def put(self, key: str, body: bytes = b"x") -> str:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return f"s3://{BUCKET}/{key}"

    def push_fake_image(self, repository: str, tag: str = "latest") -> str:
        """Register `repository:tag` in moto's ECR, as build_and_push.sh would have."""
        if not self.ecr.describe_repositories()["repositories"] or repository not in {
            r["repositoryName"] for r in self.ecr.describe_repositories()["repositories"]
        }:
            self.ecr.create_repository(repositoryName=repository)
        self.ecr.put_image(repositoryName=repository, imageManifest=MANIFEST, imageTag=tag)
        return f"{REGISTRY}/{repository}:{tag}"


def run_script(script: str, *args: str, env: dict, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPTS / f"{script}.sh"), *args],
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(proc: subprocess.CompletedProcess) -> list[str]:
    """Assert success; return the result lines (stdout)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout.splitlines()


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Assert a usage error (exit 2) whose message holds every fragment."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def set_endpoint_results(aws: Aws, *bodies: str) -> None:
    results = [
        {"Body": b, "ContentType": "application/json", "InvokedProductionVariant": "primary"} for b in bodies
    ]
    request = urllib.request.Request(
        f"{aws.server.url}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps({"account_id": ACCOUNT, "region": REGION, "results": results}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10)
