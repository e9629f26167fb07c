"""The files of mlops/infra/ a user applies, against the moto server as far as it answers: the core
CloudFormation stack, the EventBridge rule (its pattern matched by moto's own matcher) and its CodeBuild
target, the buildspecs' commands run as CodeBuild would run them. What moto cannot answer is in the README.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from ncf_launch.aws_client import SERVE_REPOSITORY, TRAIN_REPOSITORY
from ncf_mlops.parameters import DEFAULT_GROUP
from ncf_mlops.pipeline import DEFAULT_NAME
from tests.support import ROOT
from tests.support.moto import ACCOUNT, BUCKET, REGION, ROLE, ok

INFRA = ROOT / "mlops" / "infra"
CORE, CICD = INFRA / "template.yaml", INFRA / "cicd.yaml"
APPROVED_EVENT = "SageMaker Model Package State Change"


def template(path: Path) -> dict:
    return yaml.safe_load(path.read_text())  # long-form intrinsics: plain YAML


def resolve(value, parameters: dict[str, str]):
    """{"Ref": P} -> the parameter's value, through lists and dicts."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return parameters[value["Ref"]]
        return {k: resolve(v, parameters) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, parameters) for v in value]
    return value


def test_templates_default_to_the_names_the_scripts_use():
    for path in (CORE, CICD):
        params = {k: v.get("Default") for k, v in template(path)["Parameters"].items()}
        assert params["ModelPackageGroupName"] == DEFAULT_GROUP
        assert (params["TrainRepositoryName"], params["ServeRepositoryName"]) == (
            TRAIN_REPOSITORY,
            SERVE_REPOSITORY,
        )
    cicd = template(CICD)
    assert cicd["Parameters"]["PipelineName"]["Default"] == DEFAULT_NAME
    for project in ("PipelineProject", "DeployProject"):
        assert (ROOT / cicd["Resources"][project]["Properties"]["Source"]["BuildSpec"]).is_file()


def test_core_stack_creates_bucket_role_and_repositories(aws):
    cf = aws.session.client("cloudformation", endpoint_url=aws.server.url)
    cf.create_stack(
        StackName="ncf-mlops", TemplateBody=CORE.read_text(), Capabilities=["CAPABILITY_NAMED_IAM"]
    )
    stack = cf.describe_stacks(StackName="ncf-mlops")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["BucketName"] == f"ncf-mlops-{ACCOUNT}-{REGION}"
    assert outputs["ExecutionRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/ncf-sagemaker-{REGION}"
    assert outputs["ModelPackageGroupName"] == DEFAULT_GROUP
    aws.s3.head_bucket(Bucket=outputs["BucketName"])
    repositories = {r["repositoryName"] for r in aws.ecr.describe_repositories()["repositories"]}
    assert repositories == {TRAIN_REPOSITORY, SERVE_REPOSITORY}
    iam = aws.session.client("iam", endpoint_url=aws.server.url)
    role = iam.get_role(RoleName=f"ncf-sagemaker-{REGION}")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    # scheduler: monitor.sh's schedule starts processing jobs as this role
    assert trust["Statement"][0]["Principal"] == {
        "Service": ["sagemaker.amazonaws.com", "scheduler.amazonaws.com"]
    }
    # moto 5.2.1 has no AWS::SageMaker::ModelPackageGroup in CloudFormation: it skips the resource
    assert aws.sm.list_model_package_groups()["ModelPackageGroupSummaryList"] == []


def test_rule_matches_only_approved_versions_of_our_group_and_targets_the_deploy_project(aws):
    cicd = template(CICD)
    rule = cicd["Resources"]["ApprovedModelRule"]["Properties"]
    pattern = resolve(rule["EventPattern"], {"ModelPackageGroupName": DEFAULT_GROUP})
    assert pattern == {
        "source": ["aws.sagemaker"],
        "detail-type": [APPROVED_EVENT],
        "detail": {"ModelPackageGroupName": [DEFAULT_GROUP], "ModelApprovalStatus": ["Approved"]},
    }
    events = aws.session.client("events", endpoint_url=aws.server.url)
    codebuild = aws.session.client("codebuild", endpoint_url=aws.server.url)
    deploy = cicd["Resources"]["DeployProject"]["Properties"]
    project = codebuild.create_project(
        name=deploy["Name"],
        source={
            "type": "GITHUB",
            "location": "https://github.com/o/r",
            "buildspec": deploy["Source"]["BuildSpec"],
        },
        artifacts={"type": "NO_ARTIFACTS"},
        environment={
            "type": deploy["Environment"]["Type"],
            "image": deploy["Environment"]["Image"],
            "computeType": deploy["Environment"]["ComputeType"],
        },
        serviceRole=f"arn:aws:iam::{ACCOUNT}:role/ncf-codebuild",
    )["project"]
    events.put_rule(Name=rule["Name"], EventPattern=json.dumps(pattern), State=rule["State"])
    (target,) = rule["Targets"]
    events.put_targets(
        Rule=rule["Name"],
        Targets=[
            {"Id": target["Id"], "Arn": project["arn"], "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/ncf-events"}
        ],
    )
    assert [t["Arn"] for t in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]] == [project["arn"]]
    assert codebuild.batch_get_projects(names=[deploy["Name"]])["projects"][0]["source"]["buildspec"] == (
        "mlops/infra/buildspec-deploy.yml"
    )

    # moto cannot start a CodeBuild target nor answer TestEventPattern: the same pattern on a bus of its
    # own, delivering to a queue, shows which events moto's matcher lets through
    sqs = aws.session.client("sqs", endpoint_url=aws.server.url)
    queue = sqs.create_queue(QueueName="probe")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.create_event_bus(Name="probe")
    events.put_rule(Name="probe", EventBusName="probe", EventPattern=json.dumps(pattern))
    events.put_targets(Rule="probe", EventBusName="probe", Targets=[{"Id": "q", "Arn": queue_arn}])
    for group, status in ((DEFAULT_GROUP, "Approved"), (DEFAULT_GROUP, "Rejected"), ("other", "Approved")):
        detail = {"ModelPackageGroupName": group, "ModelApprovalStatus": status, "ModelPackageVersion": 3}
        events.put_events(
            Entries=[
                {
                    "Source": "aws.sagemaker",
                    "DetailType": APPROVED_EVENT,
                    "Detail": json.dumps(detail),
                    "EventBusName": "probe",
                }
            ]
        )
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    assert [json.loads(m["Body"])["detail"]["ModelApprovalStatus"] for m in received] == ["Approved"]
    assert json.loads(received[0]["Body"])["detail"]["ModelPackageGroupName"] == DEFAULT_GROUP


def buildspec_commands(name: str) -> list[str]:
    spec = yaml.safe_load((INFRA / name).read_text())
    assert spec["version"] == 0.2
    return spec["phases"]["build"]["commands"]


def run_in_codebuild(aws, command: str, env: dict[str, str]) -> list[str]:
    """A buildspec command as CodeBuild runs it: bash, from the checkout's root, the project's variables."""
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True
    )
    return ok(proc)


def test_ci_buildspec_builds_pushes_upserts_and_starts_the_pipeline(aws):
    commands = buildspec_commands("buildspec.yml")
    assert re.fullmatch(r"scripts/build_and_push\.sh.*", commands[0])  # needs Docker: tests/container
    aws.push_fake_image(TRAIN_REPOSITORY)  # what build_and_push.sh pushes
    aws.push_fake_image(SERVE_REPOSITORY)
    aws.put("ncf/ml-1m/ml-1m.train.rating")
    env = aws.env | {"BUCKET": BUCKET, "SAGEMAKER_ROLE_ARN": ROLE, "PIPELINE_NAME": DEFAULT_NAME}
    upsert, start = commands[1:]
    assert run_in_codebuild(aws, upsert, env) == [
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/{DEFAULT_NAME}"
    ]
    (execution,) = run_in_codebuild(aws, start, env)
    assert execution.startswith(f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/{DEFAULT_NAME}/execution/")


def test_deploy_buildspec_deploys_the_latest_approved_version(aws):
    (command,) = buildspec_commands("buildspec-deploy.yml")
    aws.sm.create_model_package_group(ModelPackageGroupName=DEFAULT_GROUP)
    arn = aws.sm.create_model_package(
        ModelPackageGroupName=DEFAULT_GROUP,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/ncf-serve:latest"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]
    env = aws.env | {"ENDPOINT_NAME": "ncf", "MODEL_PACKAGE_GROUP": DEFAULT_GROUP}
    assert run_in_codebuild(aws, command, env) == ["ncf"]
    config = aws.sm.describe_endpoint_config(
        EndpointConfigName=aws.sm.describe_endpoint(EndpointName="ncf")["EndpointConfigName"]
    )
    model = aws.sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelPackageName"] == arn
