"""scripts/pipeline.sh: the definition (offline, what it holds), upsert, start and status against the moto
server (tests/support/moto.py), and the refusals that come before any call."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from ncf_core import config as schema
from ncf_launch.aws_client import load_metric_definitions
from tests.support.moto import ACCOUNT, BUCKET, FAILURES, PIPELINE_STEPS, REGISTRY, ROLE, ok, refused

NAME = "ncf-pipeline"
DATA = f"s3://{BUCKET}/ncf/ml-1m/"


def offline_env(**extra: str) -> dict[str, str]:
    """No credentials, no profile, an endpoint where nothing listens: any AWS call would fail."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_", "BUCKET", "MLFLOW_"))
    }
    env |= {
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_REGION": "eu-west-1",
        "SAGEMAKER_ROLE_ARN": ROLE,
        "BUCKET": BUCKET,
        "PYTHON": sys.executable,
    }
    return env | extra


def steps_by_name(definition: dict) -> dict[str, dict]:
    out = {}
    for step in definition["Steps"]:
        out[step["Name"]] = step
        for branch in ("IfSteps", "ElseSteps"):
            out |= {s["Name"]: s for s in step.get("Arguments", {}).get(branch, [])}
    return out


def test_definition_is_printed_without_credentials_or_network(aws):
    from tests.support.moto import run_script

    proc = run_script("pipeline", "--definition", env=offline_env())
    definition = json.loads("\n".join(ok(proc)))
    assert [s["Name"] for s in definition["Steps"]] == ["Train", "Evaluate", "CheckQuality"]
    steps = steps_by_name(definition)
    image = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/ncf-train:latest"  # the role's account, the region

    train = steps["Train"]["Arguments"]
    assert train["AlgorithmSpecification"]["TrainingImage"] == image
    assert train["AlgorithmSpecification"]["MetricDefinitions"] == load_metric_definitions()
    assert train["RoleArn"] == ROLE
    assert train["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/ncf/pipeline/models"
    # one string parameter per schema hyperparameter, sent under its own name, defaulting as the image reads
    names = [e.hyperparameter for e in schema.entries() if e.hyperparameter is not None]
    assert train["HyperParameters"] == {n: {"Get": f"Parameters.{n}"} for n in names}
    params = {p["Name"]: p for p in definition["Parameters"]}
    for e in (e for e in schema.entries() if e.hyperparameter is not None):
        assert params[e.hyperparameter] == {
            "Name": e.hyperparameter,
            "Type": "String",
            "DefaultValue": schema.default_as_sent(e),
        }
    assert params["InputDataUri"]["DefaultValue"] == params["TestDataUri"]["DefaultValue"] == DATA
    assert params["ModelApprovalStatus"]["DefaultValue"] == "PendingManualApproval"
    assert (params["MinHrAt10"]["Type"], params["MinNdcgAt10"]["Type"]) == ("Float", "Float")

    evaluate = steps["Evaluate"]["Arguments"]
    assert evaluate["AppSpecification"]["ImageUri"] == image
    assert evaluate["AppSpecification"]["ContainerEntrypoint"] == ["evaluate"]
    inputs = {i["InputName"]: i["S3Input"] for i in evaluate["ProcessingInputs"]}
    assert inputs["model"]["S3Uri"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert inputs["model"]["LocalPath"] == "/opt/ml/processing/model"
    assert inputs["test"] == inputs["test"] | {
        "S3Uri": {"Get": "Parameters.TestDataUri"},
        "LocalPath": "/opt/ml/processing/test",
    }
    (output,) = evaluate["ProcessingOutputConfig"]["Outputs"]
    assert output["S3Output"]["LocalPath"] == "/opt/ml/processing/evaluation"
    # MLflow: both steps get the tracking server and this execution, Evaluate the job whose model it scores
    tracking = {
        "MLFLOW_TRACKING_URI": {"Get": "Parameters.MlflowTrackingUri"},
        "NCF_PIPELINE_EXECUTION_ARN": {"Get": "Execution.PipelineExecutionArn"},
    }
    assert train["Environment"] == tracking
    assert evaluate["Environment"] == tracking | {
        "NCF_TRAINING_JOB_NAME": {"Get": "Steps.Train.TrainingJobName"}
    }
    assert params["MlflowTrackingUri"] == {"Name": "MlflowTrackingUri", "Type": "String", "DefaultValue": ""}
    assert steps["Evaluate"]["PropertyFiles"] == [
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}
    ]

    gate = steps["CheckQuality"]["Arguments"]
    assert [
        (c["Type"], c["LeftValue"]["Std:JsonGet"]["Path"], c["RightValue"]) for c in gate["Conditions"]
    ] == [
        ("GreaterThanOrEqualTo", "metrics.hr_at_10.value", {"Get": "Parameters.MinHrAt10"}),
        ("GreaterThanOrEqualTo", "metrics.ndcg_at_10.value", {"Get": "Parameters.MinNdcgAt10"}),
    ]
    assert [s["Name"] for s in gate["IfSteps"]] == ["Baseline", "Register-RegisterModel"]
    assert [s["Name"] for s in gate["ElseSteps"]] == ["QualityGateFailed"]

    register = steps["Register-RegisterModel"]["Arguments"]
    (container,) = register["InferenceSpecification"]["Containers"]
    assert container["Image"] == f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/ncf-serve:latest"
    assert container["ModelDataUrl"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    assert register["ModelPackageGroupName"] == {"Get": "Parameters.ModelPackageGroupName"}
    assert "application/json" in register["InferenceSpecification"]["SupportedContentTypes"]
    assert "ml.m5.large" in register["InferenceSpecification"]["SupportedRealtimeInferenceInstanceTypes"]
    statistics = register["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["ContentType"] == "application/json"
    assert statistics["S3Uri"]["Std:Join"]["Values"][-1] == "evaluation.json"
    # the monitoring baseline: the serving image's `monitor baseline` on the model that passed the gate,
    # recorded as the package's model data quality (where monitor.sh create finds it)
    baseline = steps["Baseline"]["Arguments"]
    assert baseline["AppSpecification"]["ImageUri"] == container["Image"]
    assert baseline["AppSpecification"]["ContainerEntrypoint"] == ["monitor", "baseline"]
    (model_input,) = baseline["ProcessingInputs"]
    assert model_input["S3Input"]["S3Uri"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert model_input["S3Input"]["LocalPath"] == "/opt/ml/processing/model"
    (written,) = baseline["ProcessingOutputConfig"]["Outputs"]
    assert written["S3Output"]["LocalPath"] == "/opt/ml/processing/baseline"
    prefix = written["S3Output"]["S3Uri"]["Std:Join"]["Values"]
    assert prefix == [f"s3://{BUCKET}/ncf/pipeline/baseline", {"Get": "Execution.PipelineExecutionId"}]
    quality = register["ModelMetrics"]["ModelDataQuality"]
    for kind, name in (("Statistics", "statistics.json"), ("Constraints", "constraints.json")):
        assert quality[kind]["S3Uri"]["Std:Join"]["Values"] == [
            {"Std:Join": {"On": "/", "Values": prefix}},
            name,
        ]
    assert steps["Register-RegisterModel"]["DependsOn"] == ["Baseline"]

    message = json.dumps(steps["QualityGateFailed"]["Arguments"]["ErrorMessage"])
    for fragment in ("hr_at_10=", "metrics.hr_at_10.value", "Parameters.MinHrAt10", "ndcg_at_10="):
        assert fragment in message
    assert "Parameters.MinNdcgAt10" in message
    assert aws.server.calls("CreatePipeline") == []


def test_the_tracking_server_defaults_to_mlflow_tracking_uri():
    from tests.support.moto import run_script

    server = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/ncf"
    proc = run_script("pipeline", "--definition", env=offline_env(MLFLOW_TRACKING_URI=server))
    params = {p["Name"]: p for p in json.loads("\n".join(ok(proc)))["Parameters"]}
    assert params["MlflowTrackingUri"]["DefaultValue"] == server


def test_compiling_the_pipeline_opens_no_connection(monkeypatch):
    """In process, with every socket connect refused and recorded (the SDK swallows telemetry errors)."""
    from ncf_mlops.pipeline import Settings, definition

    attempts: list = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    settings = Settings(NAME, "eu-west-1", ROLE, BUCKET, "ncf/pipeline", "train:1", "serve:1", DATA)
    assert json.loads(definition(settings))["Steps"]
    assert attempts == []


@pytest.mark.parametrize(
    ("unset", "message"),
    [
        ("SAGEMAKER_ROLE_ARN", "--role-arn or $SAGEMAKER_ROLE_ARN (the role SageMaker runs the steps as)"),
        ("BUCKET", "--bucket or $BUCKET (where models and reports go)"),
    ],
)
def test_definition_refuses_a_missing_role_or_bucket(unset, message):
    from tests.support.moto import run_script

    env = offline_env()
    del env[unset]
    refused(run_script("pipeline", "--definition", env=env), "--definition needs no AWS credentials", message)


def test_upsert_creates_then_updates_the_pipeline(aws):
    aws.push_fake_image("ncf-train")
    aws.push_fake_image("ncf-serve")
    env = aws.env | {"BUCKET": BUCKET}
    (arn,) = ok(aws.run("pipeline", "upsert", env=env))
    assert arn == f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:pipeline/{NAME}"
    stored = aws.sm.describe_pipeline(PipelineName=NAME)
    assert stored["RoleArn"] == ROLE
    printed = json.loads("\n".join(ok(aws.run("pipeline", "--definition", env=env))))
    assert json.loads(stored["PipelineDefinition"]) == printed  # what --definition shows is what is sent
    assert ok(aws.run("pipeline", "upsert", env=env)) == [arn]
    assert len(aws.server.calls("CreatePipeline")) == 1
    assert len(aws.server.calls("UpdatePipeline")) == 1


def test_upsert_refuses_before_creating_anything(aws):
    env = aws.env | {"BUCKET": BUCKET}
    refused(aws.run("pipeline", "upsert", env=env), "build and push the images first")
    aws.push_fake_image("ncf-train")
    aws.push_fake_image("ncf-serve")
    refused(aws.run("pipeline", "upsert", env=env | {"BUCKET": "no-such-bucket"}), "does not exist")
    refused(
        aws.run("pipeline", "upsert", "--serve-image", f"{REGISTRY}/ncf-serve:nope", env=env), "not in ECR"
    )
    assert aws.server.calls("CreatePipeline") == []


def upserted(aws) -> dict[str, str]:
    aws.push_fake_image("ncf-train")
    aws.push_fake_image("ncf-serve")
    env = aws.env | {"BUCKET": BUCKET}
    ok(aws.run("pipeline", "upsert", env=env))
    for suffix in ("train.rating", "test.rating", "test.negative"):
        aws.put(f"ncf/ml-1m/ml-1m.{suffix}")
    return env


def test_start_sends_the_overrides_and_status_follows_the_execution(aws):
    env = upserted(aws)
    (arn,) = ok(aws.run("pipeline", "start", "--param", "epochs=3", "--param", "MinHrAt10=0.65", env=env))
    (start,) = aws.server.calls("StartPipelineExecution")
    assert start["PipelineParameters"] == [
        {"Name": "epochs", "Value": "3"},
        {"Name": "MinHrAt10", "Value": "0.65"},
    ]
    listed = aws.sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert {p["Name"]: p["Value"] for p in listed} == {"epochs": "3", "MinHrAt10": "0.65"}
    # moto: the execution is Succeeded at once; the steps are the ones the test gives (PIPELINE_STEPS)
    PIPELINE_STEPS[NAME] = [
        {"StepName": "Train", "StepStatus": "Succeeded"},
        {"StepName": "Evaluate", "StepStatus": "Succeeded"},
        {
            "StepName": "CheckQuality",
            "StepStatus": "Succeeded",
            "Metadata": {"Condition": {"Outcome": "True"}},
        },
        {"StepName": "Register-RegisterModel", "StepStatus": "Succeeded"},
    ]
    assert ok(aws.run("pipeline", "status", "--wait", env=env)) == [
        f"execution {arn}: Succeeded",
        "  Train: Succeeded",
        "  Evaluate: Succeeded",
        "  CheckQuality: Succeeded (outcome True)",
        "  Register-RegisterModel: Succeeded",
    ]


def test_status_of_a_failed_gate_names_the_metric_value_and_threshold(aws):
    env = upserted(aws)
    message = (
        "quality gate failed: hr_at_10=0.41 (minimum MinHrAt10=0.6), "
        "ndcg_at_10=0.22 (minimum MinNdcgAt10=0.35)"
    )
    FAILURES[NAME] = "Step failure: One or multiple steps failed."
    PIPELINE_STEPS[NAME] = [
        {"StepName": "Train", "StepStatus": "Succeeded"},
        {"StepName": "Evaluate", "StepStatus": "Succeeded"},
        {
            "StepName": "CheckQuality",
            "StepStatus": "Succeeded",
            "Metadata": {"Condition": {"Outcome": "False"}},
        },
        {
            "StepName": "QualityGateFailed",
            "StepStatus": "Failed",
            "FailureReason": message,
            "Metadata": {"Fail": {"ErrorMessage": message}},
        },
    ]
    (arn,) = ok(aws.run("pipeline", "start", env=env))
    proc = aws.run("pipeline", "status", "--execution", arn, env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[-2:] == [
        "  CheckQuality: Succeeded (outcome False)",
        f"  QualityGateFailed: Failed - {message}",
    ]
    assert "pipeline execution failed: Step failure: One or multiple steps failed." in proc.stderr


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("learning_rat=0.1", "unknown pipeline parameter(s) learning_rat; the pipeline has: InputDataUri"),
        ("MinHrAt10=1.5", "a threshold must lie in 0–1"),
        ("MinNdcgAt10=-0.1", "a threshold must lie in 0–1"),
        ("epochs=abc", "hyperparameter epochs='abc' is not an integer"),
        ("ModelApprovalStatus=Maybe", "must be one of PendingManualApproval, Approved, Rejected"),
        ("TrainInstanceCount=0", "must be at least 1"),
        ("InputDataUri=/local/path", "is not of the form s3://bucket/prefix"),
    ],
)
def test_start_refuses_bad_parameters_before_any_call(aws, param, message):
    refused(aws.run("pipeline", "start", "--param", param, env=aws.env), message)
    assert [r for r in aws.server.requests if r["method"] == "POST" and r["target"]] == []


def test_start_refuses_a_missing_pipeline_or_missing_data(aws):
    refused(aws.run("pipeline", "start", env=aws.env), "no pipeline named ncf-pipeline")
    aws.push_fake_image("ncf-train")
    aws.push_fake_image("ncf-serve")
    ok(aws.run("pipeline", "upsert", env=aws.env | {"BUCKET": BUCKET}))
    refused(
        aws.run("pipeline", "start", env=aws.env),
        "InputDataUri s3://ncf-test-bucket/ncf/ml-1m/ holds no objects",
    )
    refused(aws.run("pipeline", "status", env=aws.env), "has no execution yet")
    assert aws.server.calls("StartPipelineExecution") == []


def evaluated(value, values: dict[str, str]):
    """A definition's value with its Get / Std:Join expressions worked out as SageMaker would."""
    if isinstance(value, dict):
        if set(value) == {"Get"}:
            return values[value["Get"]]
        if set(value) == {"Std:Join"}:
            join = value["Std:Join"]
            return join["On"].join(str(evaluated(v, values)) for v in join["Values"])
        return {k: evaluated(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [evaluated(v, values) for v in value]
    return value


def test_the_register_step_is_a_request_sagemaker_takes_and_the_registry_shows(aws):
    """The Register step's arguments, as an execution would send them, to moto's CreateModelPackage;
    then registry.sh lists the version with the figures of the evaluation.json it points at."""
    from tests.support.moto import run_script

    definition = json.loads("\n".join(ok(run_script("pipeline", "--definition", env=offline_env()))))
    values = {f"Parameters.{p['Name']}": p["DefaultValue"] for p in definition["Parameters"]}
    model_data = aws.put("ncf/pipeline/models/pipelines-abc-Train/output/model.tar.gz")
    values |= {
        "Steps.Train.ModelArtifacts.S3ModelArtifacts": model_data,
        "Execution.PipelineExecutionId": "abc",
    }
    request = evaluated(steps_by_name(definition)["Register-RegisterModel"]["Arguments"], values)
    report = {
        "metrics": {
            "hr_at_10": {"value": 0.7},
            "ndcg_at_10": {"value": 0.42},
            "users_evaluated": {"value": 6040},
        }
    }
    statistics = request["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert statistics == f"s3://{BUCKET}/ncf/pipeline/evaluation/abc/evaluation.json"
    aws.put(statistics.removeprefix(f"s3://{BUCKET}/"), json.dumps(report).encode())
    aws.sm.create_model_package_group(ModelPackageGroupName=request["ModelPackageGroupName"])
    arn = aws.sm.create_model_package(**request)["ModelPackageArn"]
    package = aws.sm.describe_model_package(ModelPackageName=arn)
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == model_data
    assert ok(aws.run("registry", "list", "--group", "ncf-models")) == [
        f"1\tPendingManualApproval\thr_at_10=0.7 ndcg_at_10=0.42 users_evaluated=6040\t{arn}"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--local", "upsert"], "give --definition, --local or one of: upsert, start, status"),
        (["--local", "--definition"], "give --definition, --local or one of"),
        (["--local", "--wait"], "--wait only applies to start and status"),
        (["--local", "--param", "MinHrAt10=1.5"], "a threshold must lie in 0–1"),
        (["--local", "--param", "epochs=abc"], "hyperparameter epochs='abc' is not an integer"),
        (["--local", "--param", "learning_rat=0.1"], "unknown pipeline parameter(s) learning_rat"),
    ],
)
def test_local_refuses_bad_arguments_before_any_call(aws, args, message):
    refused(aws.run("pipeline", *args, env=aws.env | {"BUCKET": BUCKET}), message)
    assert [r for r in aws.server.requests if r["method"] == "POST"] == []


def test_local_refuses_missing_data_or_a_missing_local_image(aws):
    """Checked before the SDK runs anything (it would try to pull a missing image)."""
    env = aws.env | {"BUCKET": BUCKET}
    data = "s3://ncf-test-bucket/ncf/ml-100k/"
    refused(aws.run("pipeline", "--local", "--data", data, env=env), f"InputDataUri {data} holds no objects")
    for suffix in ("train.rating", "test.rating", "test.negative"):
        aws.put(f"ncf/ml-100k/ml-100k.{suffix}")
    proc = aws.run("pipeline", "--local", "--data", data, "--train-image", "ncf-missing:none", env=env)
    refused(proc, "no local image ncf-missing:none", "scripts/build_and_push.sh --cpu --no-push")
    assert aws.server.calls("CreateModelPackage") == []
