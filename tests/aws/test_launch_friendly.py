"""What a new user meets first: a launcher without its extra says which `pip install` to run (no traceback),
pipeline.sh --definition says what it needs (no credentials), train.sh --env reaches the job, infra.sh
applies the one template and prints the variables every later step uses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.moto import ACCOUNT, BUCKET, REGION, ROLE, ok, refused, run_script

# A sitecustomize that makes the named top-level modules unimportable, as in a venv without the extra.
BLOCKER = """
import os, sys
BLOCK = set(os.environ["NCF_TEST_BLOCK"].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


@pytest.fixture
def without(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)

    def env(*modules: str) -> dict[str, str]:
        path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
        return clean | {"PYTHON": sys.executable, "PYTHONPATH": path, "NCF_TEST_BLOCK": ",".join(modules)}

    return env


@pytest.mark.parametrize(
    ("script", "args", "extra"),
    [
        ("cleanup", ["--endpoint", "ncf", "--yes"], "aws"),
        ("upload_data", ["data/ml-100k", "s3://b/p"], "aws"),
        ("train", ["--train", "s3://b/p/"], "aws"),
        ("deploy", ["--endpoint", "ncf", "--training-job", "j"], "aws"),
        ("invoke", ["--endpoint", "ncf"], "aws"),
        ("registry", ["list"], "aws"),
        ("infra", [], "aws"),
        ("build_and_push", [], "aws"),
        ("pipeline", ["--definition"], "mlops"),
        ("pipeline", ["upsert"], "mlops"),
    ],
)
def test_a_launcher_without_its_extra_says_what_to_install(without, script, args, extra):
    proc = run_script(script, *args, env=without("boto3", "botocore", "sagemaker"))
    assert proc.returncode == 2, proc.stderr
    assert f"pip install -e '.[{extra}]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_paths_without_aws_need_no_boto3(without):
    for script in ("train", "invoke", "build_and_push", "pipeline", "cleanup"):
        proc = run_script(script, "--help", env=without("boto3", "botocore", "sagemaker"))
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {script}.sh"), proc.stderr
    proc = run_script("train", "--local", "--train", "/nonexistent", env=without("boto3", "botocore"))
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_pipeline_definition_needs_no_credentials_and_says_what_it_needs():
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env = clean | {"PYTHON": sys.executable, "AWS_CONFIG_FILE": os.devnull}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("BUCKET", None)
    refused(run_script("pipeline", "--definition", env=env), "needs no AWS credentials", "SAGEMAKER_ROLE_ARN")
    env |= {"AWS_REGION": REGION, "BUCKET": BUCKET, "SAGEMAKER_ROLE_ARN": ROLE}
    assert ok(run_script("pipeline", "--definition", env=env))[0] == "{"


def test_train_env_reaches_the_job(aws):
    aws.push_fake_image("ncf-train")
    train = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    base = ["--train", train, "--output", f"s3://{BUCKET}/out", "--job-name", "ncf-env"]
    tracking = "MLFLOW_TRACKING_URI=arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/x"
    ok(aws.run("train", *base, "--env", tracking, "--env", "MLFLOW_EXPERIMENT_NAME=ncf-a=b"))
    (request,) = aws.server.calls("CreateTrainingJob")
    assert request["Environment"] == {
        "MLFLOW_TRACKING_URI": tracking.partition("=")[2],
        "MLFLOW_EXPERIMENT_NAME": "ncf-a=b",
    }
    refused(aws.run("train", *base, "--job-name", "ncf-env2", "--env", "1BAD=x"), "not an environment")
    refused(aws.run("train", *base, "--job-name", "ncf-env2", "--env", "NOVALUE"), "is not KEY=VALUE")
    assert len(aws.server.calls("CreateTrainingJob")) == 1


def test_infra_applies_the_template_and_prints_the_variables(aws):
    env = {k: v for k, v in aws.env.items() if k not in ("SAGEMAKER_ROLE_ARN",)}
    exports = ok(aws.run("infra", env=env))
    assert exports == [
        f"export AWS_REGION={REGION}",
        f"export BUCKET=ncf-mlops-{ACCOUNT}-{REGION}",
        f"export SAGEMAKER_ROLE_ARN=arn:aws:iam::{ACCOUNT}:role/ncf-sagemaker-{REGION}",
        "export MODEL_PACKAGE_GROUP=ncf-models",
    ]
    repositories = {r["repositoryName"] for r in aws.ecr.describe_repositories()["repositories"]}
    assert repositories == {"ncf-train", "ncf-serve"}
    # re-running is safe; what it prints is for eval
    proc = aws.run("infra", env=env)
    assert ok(proc) == exports
    shell = subprocess.run(
        ["bash", "-c", 'eval "$(cat)"; echo "$BUCKET $SAGEMAKER_ROLE_ARN"'],
        input="\n".join(exports),
        capture_output=True,
        text=True,
    )
    assert shell.stdout.split() == [exports[1].split("=", 1)[1], exports[2].split("=", 1)[1]]
