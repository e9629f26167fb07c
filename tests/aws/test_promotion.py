"""mlops/infra/promotion.yaml (staging -> smoke test -> approval -> production) and every template in
mlops/infra/ through cfn-lint; the promotion's buildspecs run as CodeBuild would, against the moto server.
moto has no CodePipeline/CodeConnections in CloudFormation, so the stack itself is not created here: its
shape is checked, and cfn-lint checks it against CloudFormation's resource specifications.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from ncf_mlops.parameters import DEFAULT_GROUP
from tests.aws.test_infra import INFRA, buildspec_commands, run_in_codebuild
from tests.support import ROOT
from tests.support.moto import ACCOUNT, REGION, set_endpoint_results

PROMOTION = INFRA / "promotion.yaml"
TEMPLATES = sorted(INFRA.glob("*.yaml"))


def cfn_lint(*paths) -> subprocess.CompletedProcess:
    code = "import sys; from cfnlint.runner import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=120
    )


def test_every_template_passes_cfn_lint():
    assert {p.name for p in TEMPLATES} >= {"template.yaml", "cicd.yaml", "promotion.yaml"}
    proc = cfn_lint(*TEMPLATES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cfn_lint_is_real_it_fails_a_broken_template(tmp_path):
    broken = yaml.safe_load(PROMOTION.read_text())
    broken["Resources"]["Pipeline"]["Properties"]["RoleArn"] = {"Fn::GetAtt": ["NoSuchRole", "Arn"]}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    proc = cfn_lint(path)
    assert proc.returncode != 0
    assert "E1010 'NoSuchRole'" in proc.stdout, proc.stdout


def test_the_pipeline_goes_source_build_staging_smoke_approval_production():
    t = yaml.safe_load(PROMOTION.read_text())
    resources = t["Resources"]
    stages = resources["Pipeline"]["Properties"]["Stages"]
    assert [s["Name"] for s in stages] == [
        "Source", "Build", "DeployStaging", "SmokeTest", "Approve", "DeployProduction",
    ]  # fmt: skip
    source = stages[0]["Actions"][0]["Fn::If"]
    assert source[0] == "UseConnections"
    assert [a["ActionTypeId"]["Provider"] for a in source[1:]] == ["CodeStarSourceConnection", "S3"]
    assert stages[4]["Actions"][0]["ActionTypeId"] == {
        "Category": "Approval", "Owner": "AWS", "Provider": "Manual", "Version": "1",
    }  # fmt: skip
    projects = {
        s["Name"]: resources[s["Actions"][0]["Configuration"]["ProjectName"]["Ref"]]["Properties"]
        for s in stages
        if s["Name"] not in ("Source", "Approve")
    }
    specs = {name: p["Source"]["BuildSpec"] for name, p in projects.items()}
    assert specs == {
        "Build": "mlops/infra/buildspec.yml",
        "DeployStaging": "mlops/infra/buildspec-deploy.yml",
        "SmokeTest": "mlops/infra/buildspec-smoke.yml",
        "DeployProduction": "mlops/infra/buildspec-promote.yml",
    }
    assert all((ROOT / spec).is_file() for spec in specs.values())
    env = {
        name: {v["Name"]: v["Value"] for v in p["Environment"]["EnvironmentVariables"]}
        for name, p in projects.items()
    }
    assert env["DeployStaging"]["ENDPOINT_NAME"] == {"Ref": "StagingEndpointName"}
    assert env["SmokeTest"] == {
        "ENDPOINT_NAME": {"Ref": "StagingEndpointName"},
        "MAX_P99_MS": {"Ref": "MaxP99Ms"},
    }
    assert env["DeployProduction"]["ENDPOINT_NAME"] == {"Ref": "ProductionEndpointName"}
    assert env["DeployProduction"]["DEPLOY_ROLE_ARN"] == {"Ref": "ProductionRoleArn"}
    assert t["Parameters"]["MaxP99Ms"]["MinValue"] == 1
    assert "CodeCommit" not in json.dumps(resources)  # a new account cannot use it


def staged_package(aws, new_group: bool = True) -> str:
    if new_group:
        aws.sm.create_model_package_group(ModelPackageGroupName=DEFAULT_GROUP)
    return aws.sm.create_model_package(
        ModelPackageGroupName=DEFAULT_GROUP,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/ncf-serve:latest"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]


def test_staging_deploy_then_smoke_test_then_production_as_codebuild_runs_them(aws, tmp_path):
    arn = staged_package(aws)
    (deploy,) = buildspec_commands("buildspec-deploy.yml")
    env = aws.env | {"ENDPOINT_NAME": "ncf-staging", "MODEL_PACKAGE_GROUP": DEFAULT_GROUP}
    assert run_in_codebuild(aws, deploy, env) == ["ncf-staging"]

    (smoke,) = buildspec_commands("buildspec-smoke.yml")
    set_endpoint_results(aws, *[json.dumps({"items": [1, 2]})] * 202)
    lines = run_in_codebuild(aws, smoke, aws.env | {"ENDPOINT_NAME": "ncf-staging", "MAX_P99_MS": "10000"})
    assert [line.split(":")[0] for line in lines] == ["seed.json", "users.json"]
    failed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", smoke],
        cwd=ROOT,
        env=aws.env | {"ENDPOINT_NAME": "ncf-staging", "MAX_P99_MS": "0.001"},
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and "is over --max-p99-ms" in failed.stderr, failed.stderr

    check, promote = buildspec_commands("buildspec-promote.yml")
    env = aws.env | {
        "ENDPOINT_NAME": "ncf",
        "STAGING_ENDPOINT_NAME": "ncf-staging",
        "MODEL_PACKAGE_GROUP": DEFAULT_GROUP,
        "DEPLOY_ROLE_ARN": "",
        "HOME": str(tmp_path),
    }
    assert run_in_codebuild(aws, check, env) == [arn]  # staging serves the latest Approved version
    assert run_in_codebuild(aws, promote, env) == ["ncf"]
    assert not (tmp_path / ".aws").exists()
    config = aws.sm.describe_endpoint(EndpointName="ncf")["EndpointConfigName"]
    variant = aws.sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
    assert (
        aws.sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]["ModelPackageName"] == arn
    )


def test_production_in_another_account_runs_deploy_as_the_role(aws, tmp_path):
    _, promote = buildspec_commands("buildspec-promote.yml")
    role = "arn:aws:iam::210987654321:role/ncf-deploy"
    config = tmp_path / "aws" / "config"
    env = aws.env | {"ENDPOINT_NAME": "ncf", "MODEL_PACKAGE_GROUP": "nope", "DEPLOY_ROLE_ARN": role}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", promote],
        cwd=ROOT,
        env=env | {"AWS_CONFIG_FILE": str(config)},
        capture_output=True,
        text=True,
    )
    # The profile CodeBuild's credentials assume (here the test's keys in the environment win, so the
    # deploy goes on to refuse the unknown group, in this account).
    assert config.read_text() == (
        f"[profile ncf-production]\nrole_arn = {role}\ncredential_source = EcsContainer\n"
    )
    assert proc.returncode != 0 and "nope" in proc.stderr


def test_a_version_approved_after_staging_is_not_promoted(aws):
    staged_package(aws)
    (deploy,) = buildspec_commands("buildspec-deploy.yml")
    env = aws.env | {"ENDPOINT_NAME": "ncf-staging", "MODEL_PACKAGE_GROUP": DEFAULT_GROUP}
    run_in_codebuild(aws, deploy, env)
    newer = staged_package(aws, new_group=False)  # approved while the pipeline waited for the approval
    check, _ = buildspec_commands("buildspec-promote.yml")
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", check],
        cwd=ROOT,
        env=env | {"STAGING_ENDPOINT_NAME": "ncf-staging"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"the latest Approved version of {DEFAULT_GROUP} is {newer}" in proc.stderr
    assert "it was not smoke-tested" in proc.stderr


@pytest.mark.parametrize("template", [p.name for p in TEMPLATES])
def test_templates_are_plain_yaml(template):
    assert isinstance(yaml.safe_load((INFRA / template).read_text()), dict)
