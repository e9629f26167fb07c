"""pipeline.sh --triton (issue 30, part 4): a passed gate also exports the Triton package and registers it
as a second model package, which deploy.sh --model-package-group deploys once approved. The Register
request goes to moto's CreateModelPackage as an execution would send it; the ExportTriton step's command
runs here (in-process, this interpreter) on a small artifact; nothing runs the step in the training image.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tarfile

from ncf_launch.triton_deploy import read_package
from ncf_mlops.pipeline import EXPORT_TRITON_STEP
from tests.aws.test_pipeline import evaluated, offline_env, steps_by_name
from tests.support.moto import BUCKET, ok, run_script
from tests.support.triton import random_artifact

IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"


@functools.cache
def _definition(extra: tuple[str, ...]) -> str:
    return "\n".join(ok(run_script("pipeline", "--definition", *extra, env=offline_env())))


def definition(*extra: str) -> dict:
    """The compiled definition (each variant compiled once a session: the SDK takes seconds)."""
    return json.loads(_definition(extra))


def test_without_triton_the_pipeline_is_unchanged_and_with_it_registers_two_packages(aws, tmp_path):
    plain = definition()
    assert not {EXPORT_TRITON_STEP, "RegisterTriton-RegisterModel"} & steps_by_name(plain).keys()
    full = definition("--triton")
    assert "TritonModelPackageGroupName" in [p["Name"] for p in full["Parameters"]]
    assert "TritonModelPackageGroupName" not in [p["Name"] for p in plain["Parameters"]]
    steps = steps_by_name(full)
    assert steps["RegisterTriton-RegisterModel"]["DependsOn"] == [EXPORT_TRITON_STEP]

    # The Register step's request as an execution sends it, to moto; approve it; deploy.sh deploys it.
    values = {f"Parameters.{p['Name']}": p["DefaultValue"] for p in full["Parameters"]}
    values |= {"Execution.PipelineExecutionId": "abc"}
    request = evaluated(steps["RegisterTriton-RegisterModel"]["Arguments"], values)
    (container,) = request["InferenceSpecification"]["Containers"]
    assert container == {
        "Image": IMAGE,
        "Environment": {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "ncf"},
        "ModelDataUrl": f"s3://{BUCKET}/ncf/pipeline/triton/abc/ncf.tar.gz",
    }
    export_out = steps[EXPORT_TRITON_STEP]["Arguments"]["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]
    assert evaluated(export_out["S3Uri"], values) == f"s3://{BUCKET}/ncf/pipeline/triton/abc"
    assert request["ModelPackageGroupName"] == "ncf-models-triton"
    aws.sm.create_model_package_group(ModelPackageGroupName="ncf-models-triton")
    arn = aws.sm.create_model_package(**request)["ModelPackageArn"]
    ok(aws.run("registry", "approve", "--arn", arn, "--reason", "HR@10 0.70"))
    ok(aws.run("deploy", "--endpoint", "ncf-tri", "--model-package-group", "ncf-models-triton",
               "--instance-type", "ml.g4dn.xlarge"))  # fmt: skip
    config = aws.sm.describe_endpoint_config(
        EndpointConfigName=aws.sm.describe_endpoint(EndpointName="ncf-tri")["EndpointConfigName"]
    )
    model = aws.sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelPackageName"] == arn


def test_the_export_command_writes_the_package_deploy_accepts(tmp_path):
    """ExportTriton's entrypoint, its container paths mapped to temporary ones, run with this Python."""
    steps = steps_by_name(definition("--triton"))
    (shell, flag, command) = steps[EXPORT_TRITON_STEP]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert (shell, flag) == ("sh", "-c")
    art = random_artifact(tmp_path / "artifact")
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "model.tar.gz", "w:gz") as tar:
        for f in art.iterdir():
            tar.add(f, arcname=f.name)
    for container, here in [
        ("/opt/ml/processing/model", tmp_path / "in"),
        ("/opt/ml/processing/triton", tmp_path / "out"),
        ("/tmp/ncf-model", tmp_path / "m"),
        ("/tmp/ncf-triton", tmp_path / "repo"),
    ]:
        command = command.replace(container, str(here))
    command = command.replace("python -m", f"{sys.executable} -m")
    subprocess.run(["sh", "-c", command], check=True, timeout=120)
    assert read_package(tmp_path / "out" / "ncf.tar.gz")[0] == "ncf"
    assert read_package(tmp_path / "out" / "ncf_scores.tar.gz")[0] == "ncf_scores"
