"""scripts/pipeline.sh --local: the pipeline, end to end, through the SDK's LocalPipelineSession on the images
built from this repository, with a moto server on loopback (tests/support/moto.py) as its S3 and SageMaker
API; ML-100K as the data. The commands of docs/mlops.md, verbatim: a threshold that passes (the model is
created locally and the Register step's CreateModelPackage reaches moto), one that fails (the Fail step's
message).

Needs the engine and ncf-python:bookworm from .ci/docker_setup.sh (skipped without, failed in CI), a filled
./wheelhouse and the MovieLens data (NCF_DATA_DIR, default ../shared/data).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import ROOT, require_file, shared_data_dir
from tests.support.docker_harness import build_project_image, require_docker
from tests.support.moto import ACCOUNT, BUCKET, REGION, SCRIPTS, Aws, MotoServer, aws_env

pytestmark = pytest.mark.docker

README_SECTION = "# MLOps"  # docs/mlops.md
README_COMMANDS = [
    "python -m ncf_core ncf-files --data data/ml-100k/u.data --to data/ml-100k-ncf/ml-100k",
    'scripts/upload_data.sh data/ml-100k-ncf/ml-100k "s3://$BUCKET/ncf/ml-100k"',
    'scripts/pipeline.sh --local --data "s3://$BUCKET/ncf/ml-100k/" --param epochs=2 --param MinHrAt10=0.3 '
    "--param MinNdcgAt10=0.15",
    'scripts/pipeline.sh --local --data "s3://$BUCKET/ncf/ml-100k/" --param epochs=2 --param MinHrAt10=0.99',
]
GROUP = "ncf-models"


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    server = MotoServer()
    try:
        server.reset()  # moto's backends are per process: tests/aws may have left model packages in them
        view = Aws(server)
        view.s3.create_bucket(Bucket=BUCKET)
        view.sm.create_model_package_group(ModelPackageGroupName=GROUP)  # mlops/infra creates it
        yield view
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sh(aws: Aws, tmp_path_factory) -> Iterator:
    """Run a README command in a directory holding scripts/ and data/ml-100k, as a user would."""
    udata = require_file(shared_data_dir() / "ml-100k" / "u.data")
    require_docker()
    for kind in ("train", "serve"):  # ncf-train:local and ncf-serve:local, the tags --local uses
        build_project_image(kind)
    work = tmp_path_factory.mktemp("readme")
    (work / "scripts").symlink_to(SCRIPTS)
    (work / "data").mkdir()
    (work / "data" / "ml-100k").symlink_to(udata.parent)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)  # the README's `python`
    env = aws_env(aws.server.url, BUCKET=BUCKET)
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}  # the packages are installed: no PYTHONPATH

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    yield run


def ok(proc: subprocess.CompletedProcess) -> list[str]:
    tail = proc.stderr[-8000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{tail}"
    return proc.stdout.splitlines()


def step_lines(stdout: str) -> dict[str, str]:
    """``Train: Succeeded in 12.3 s`` → {"Train": "Succeeded in 12.3 s"} (and the execution's own line)."""
    return dict(line.strip().split(": ", 1) for line in stdout.splitlines() if ": " in line)


@pytest.fixture(scope="module")
def uploaded(sh) -> None:
    convert, upload = README_COMMANDS[:2]
    ok(sh(convert))
    assert ok(sh(upload)) == [f"s3://{BUCKET}/ncf/ml-100k/"]


def test_local_pipeline_passes_the_gate_and_registers(aws: Aws, sh, uploaded):
    proc = sh(README_COMMANDS[2])
    lines = ok(proc)
    print(proc.stdout)  # each step's wall time (pytest -s)
    steps = step_lines(proc.stdout)
    (execution,) = [k for k in steps if k.startswith("execution ")]
    assert re.fullmatch(r"Succeeded in [0-9.]+ s", steps[execution])
    for name in ("Train", "Evaluate", "Baseline", "Register-CreateModel"):
        assert re.fullmatch(r"Succeeded in [0-9.]+ s", steps[name]), steps
    assert re.fullmatch(r"Succeeded in [0-9.]+ s \(outcome True\)", steps["CheckQuality"])
    assert "QualityGateFailed" not in steps
    arn = lines[-1].removeprefix("registered ")
    assert arn == f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/1"

    # The request moto got is the deployed Register step's, with this execution's model and report.
    (request,) = aws.server.calls("CreateModelPackage")
    package = aws.sm.describe_model_package(ModelPackageName=arn)
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    (container,) = package["InferenceSpecification"]["Containers"]
    assert container["Image"] == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/ncf-serve:latest"
    assert "text/csv" in request["InferenceSpecification"]["SupportedContentTypes"]
    model = container["ModelDataUrl"]
    assert model.startswith(f"s3://{BUCKET}/ncf/pipeline/models/") and model.endswith("/output/model.tar.gz")
    aws.s3.head_object(Bucket=BUCKET, Key=model.removeprefix(f"s3://{BUCKET}/"))  # uploaded by local mode
    report_uri = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert report_uri == f"s3://{BUCKET}/ncf/pipeline/evaluation/{execution.split()[1]}/evaluation.json"
    report = json.loads(
        aws.s3.get_object(Bucket=BUCKET, Key=report_uri.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
    )["metrics"]
    assert report["users_evaluated"]["value"] == 943
    assert report["hr_at_10"]["value"] >= 0.3 and report["ndcg_at_10"]["value"] >= 0.15
    # The Baseline step ran the serving image's `monitor baseline`; the package points at its two files.
    quality = package["ModelMetrics"]["ModelDataQuality"]
    baseline = f"s3://{BUCKET}/ncf/pipeline/baseline/{execution.split()[1]}"
    assert quality["Statistics"]["S3Uri"] == f"{baseline}/statistics.json"
    assert quality["Constraints"]["S3Uri"] == f"{baseline}/constraints.json"
    statistics = json.loads(
        aws.s3.get_object(Bucket=BUCKET, Key=f"{baseline.removeprefix(f's3://{BUCKET}/')}/statistics.json")[
            "Body"
        ].read()
    )
    assert len(statistics["recommender"]["known_ids"]["users"]) == 943

    listing = ok(sh(f"scripts/registry.sh list --group {GROUP}"))
    assert listing[0].split("\t")[:2] == ["1", "PendingManualApproval"]
    assert f"hr_at_10={report['hr_at_10']['value']}" in listing[0]


def test_local_pipeline_fails_the_gate_with_the_figures(aws: Aws, sh, uploaded):
    before = len(aws.server.calls("CreateModelPackage"))
    proc = sh(README_COMMANDS[3])
    print(proc.stdout)
    assert proc.returncode == 1, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-8000:]}"
    steps = step_lines(proc.stdout)
    (execution,) = [k for k in steps if k.startswith("execution ")]
    assert re.fullmatch(r"Failed in [0-9.]+ s", steps[execution])
    assert re.fullmatch(r"Succeeded in [0-9.]+ s \(outcome False\)", steps["CheckQuality"])
    assert "Register-CreateModel" not in steps
    message = re.fullmatch(
        r"Failed in [0-9.]+ s - quality gate failed: hr_at_10=(0\.\d+) \(minimum MinHrAt10=0\.99\), "
        r"ndcg_at_10=(0\.\d+) \(minimum MinNdcgAt10=0\.35\)",
        steps["QualityGateFailed"],
    )
    assert message, steps["QualityGateFailed"]
    key = f"ncf/pipeline/evaluation/{execution.split()[1]}/evaluation.json"
    stored = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())["metrics"]
    assert float(message.group(1)) == stored["hr_at_10"]["value"]  # the figure the gate read
    assert "local pipeline execution failed: Step 'QualityGateFailed' failed" in proc.stderr
    assert len(aws.server.calls("CreateModelPackage")) == before  # nothing registered


def test_readme_shows_the_local_commands():
    text = (ROOT / "docs" / "mlops.md").read_text()
    assert README_SECTION in text
    text = re.sub(r"\\\n\s*", "", text)
    missing = [c for c in README_COMMANDS if c not in text]
    assert not missing, f"docs/mlops.md no longer shows these tested commands: {missing}"


def test_a_failed_job_shows_its_own_reason(aws: Aws, sh):
    """Local mode only says that docker compose exited 1; the step shows what the job wrote (as SageMaker
    shows a job's failure file), here the training image refusing a channel without ratings."""
    aws.s3.put_object(Bucket=BUCKET, Key="ncf/broken/notes.txt", Body=b"no ratings here\n")
    proc = sh('scripts/pipeline.sh --local --data "s3://$BUCKET/ncf/broken/"')
    assert proc.returncode == 1, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-8000:]}"
    steps = step_lines(proc.stdout)
    assert steps["Train"].startswith("Failed in "), steps
    assert "no '*.train.rating' and none of" in steps["Train"], steps["Train"]
    assert "(local mode: RuntimeError: Failed to run:" in steps["Train"]
    assert "Evaluate" not in steps
