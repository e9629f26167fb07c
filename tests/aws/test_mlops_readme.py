"""The README's MLOps commands, verbatim, against the moto server (tests/support/moto.py), in order; and
README.md still shows them."""

from __future__ import annotations

import json
import re
import subprocess

from tests.support import ROOT
from tests.support.moto import BUCKET, REGISTRY, SCRIPTS, ok

README_SECTION = "## MLOps"
README_COMMANDS = [
    "scripts/pipeline.sh --definition > pipeline.json",
    "scripts/pipeline.sh upsert",
    "scripts/pipeline.sh start --param epochs=20 --param MinHrAt10=0.65 --wait",
    "scripts/pipeline.sh status",
    "scripts/registry.sh list --group ncf-models",
    'scripts/registry.sh approve --arn "$MODEL_PACKAGE_ARN" --reason "HR@10 0.70 on ML-1M"',
    "scripts/deploy.sh --endpoint ncf --model-package-group ncf-models",
    "scripts/deploy.sh --endpoint ncf --model-package-group ncf-models --rollback",
]


def test_readme_mlops_commands(aws, tmp_path):
    aws.push_fake_image("ncf-train")
    aws.push_fake_image("ncf-serve")
    for suffix in ("train.rating", "test.rating", "test.negative"):
        aws.put(f"ncf/ml-1m/ml-1m.{suffix}")
    (tmp_path / "scripts").symlink_to(SCRIPTS)
    env = aws.env | {"BUCKET": BUCKET}

    def sh(command: str, **extra: str) -> list[str]:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env | extra,
            capture_output=True,
            text=True,
        )
        return ok(proc)

    definition, upsert, start, status, listing, approve, deploy, rollback = README_COMMANDS
    sh(definition)
    assert [s["Name"] for s in json.loads((tmp_path / "pipeline.json").read_text())["Steps"]] == [
        "Train", "Evaluate", "CheckQuality",
    ]  # fmt: skip
    (pipeline_arn,) = sh(upsert)
    execution = sh(start)[0]
    assert sh(status) == [f"execution {execution}: Succeeded"]  # moto runs no step (tests/support/moto.py)

    # what two executions that passed the gate would have registered (moto does not run them)
    aws.sm.create_model_package_group(ModelPackageGroupName="ncf-models")
    arns = []
    for n in (1, 2):
        model = aws.put(f"ncf/pipeline/models/job{n}/output/model.tar.gz")
        arns.append(
            aws.sm.create_model_package(
                ModelPackageGroupName="ncf-models",
                InferenceSpecification={
                    "Containers": [{"Image": f"{REGISTRY}/ncf-serve:latest", "ModelDataUrl": model}],
                    "SupportedContentTypes": ["application/json"],
                    "SupportedResponseMIMETypes": ["application/json"],
                },
                ModelApprovalStatus="Approved" if n == 1 else "PendingManualApproval",
            )["ModelPackageArn"]
        )
    assert [line.split("\t")[:2] for line in sh(listing)] == [
        ["2", "PendingManualApproval"],
        ["1", "Approved"],
    ]
    assert sh(approve, MODEL_PACKAGE_ARN=arns[1]) == [f"{arns[1]}\tApproved"]
    assert sh(deploy) == ["ncf"]
    assert sh(rollback) == ["ncf"]
    served = [
        aws.sm.describe_model(ModelName=c["ModelName"])["PrimaryContainer"]["ModelPackageName"]
        for c in (
            aws.sm.describe_endpoint_config(EndpointConfigName=call["EndpointConfigName"])[
                "ProductionVariants"
            ][0]
            for call in aws.server.calls("CreateEndpointConfig")
        )
    ]
    assert served == [arns[1], arns[0]]  # the latest approved, then the one before
    assert pipeline_arn.endswith(":pipeline/ncf-pipeline")

    readme = ROOT / "README.md"
    if readme.is_file() and README_SECTION in readme.read_text():
        text = re.sub(r"\\\n\s*", "", readme.read_text())
        missing = [c for c in README_COMMANDS if c not in text]
        assert not missing, f"README.md no longer shows these tested commands: {missing}"
