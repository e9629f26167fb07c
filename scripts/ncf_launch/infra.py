"""scripts/infra.sh: apply mlops/infra/template.yaml (the one-time AWS set-up) and print its variables.

    eval "$(scripts/infra.sh)"                      create or update the stack, export what it made
    scripts/infra.sh --stack-name ncf-dev           another stack (same template)

The stack holds the SageMaker execution role, the S3 bucket, the ncf-train / ncf-serve ECR repositories
(scripts/build_and_push.sh pushes to them; it does not create them unless --create-repositories) and the
ncf-models model package group. What CloudFormation's own `aws cloudformation deploy --template-file
mlops/infra/template.yaml --stack-name ncf-mlops --capabilities CAPABILITY_NAMED_IAM` does, in boto3 (no
AWS CLI needed). Re-running is safe: an unchanged stack is left as it is. Prints on stdout, for `eval`:

    export AWS_REGION=eu-west-1
    export BUCKET=ncf-mlops-123456789012-eu-west-1
    export SAGEMAKER_ROLE_ARN=arn:aws:iam::123456789012:role/ncf-sagemaker-eu-west-1
    export MODEL_PACKAGE_GROUP=ncf-models
"""

from __future__ import annotations

import argparse
import shlex

from .aws_client import REPO_ROOT, Failure, UsageError, connect, error_code, result, run_main, say

TEMPLATE = REPO_ROOT / "mlops" / "infra" / "template.yaml"
DEFAULT_STACK = "ncf-mlops"
OUTPUTS = {"BucketName": "BUCKET", "ExecutionRoleArn": "SAGEMAKER_ROLE_ARN"}
GROUP_OUTPUT = "ModelPackageGroupName"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infra.sh",
        description="Create or update the NCF stack (role, bucket, ECR repositories, model package group).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--stack-name", default=DEFAULT_STACK, help=f"default {DEFAULT_STACK}")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    return p


def apply(cf, stack: str, body: str) -> None:
    from botocore.exceptions import ClientError

    request = {"StackName": stack, "TemplateBody": body, "Capabilities": ["CAPABILITY_NAMED_IAM"]}
    try:
        status = cf.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    except ClientError as exc:
        if error_code(exc) != "ValidationError":
            raise
        status = None
    if status == "ROLLBACK_COMPLETE":  # a first creation that failed: CloudFormation only allows deleting it
        raise UsageError(f"stack {stack} failed to create earlier (ROLLBACK_COMPLETE): delete it, re-run")
    if status is None:
        say(f"creating stack {stack} from {TEMPLATE.relative_to(REPO_ROOT)}")
        cf.create_stack(**request)
        waiter = "stack_create_complete"
    else:
        say(f"updating stack {stack} ({status})")
        try:
            cf.update_stack(**request)
        except ClientError as exc:
            if "No updates are to be performed" in str(exc):
                say("stack is up to date")
                return
            raise
        waiter = "stack_update_complete"
    from botocore.exceptions import WaiterError

    try:
        cf.get_waiter(waiter).wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    except WaiterError:
        events = cf.describe_stack_events(StackName=stack)["StackEvents"]
        reasons = [
            f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
            for e in events
            if e.get("ResourceStatus", "").endswith("FAILED")
        ]
        why = "; ".join(reasons[:3]) or "see its events"
        raise Failure(f"stack {stack} did not complete: {why}") from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        aws = connect(args.region)
        cf = aws.client("cloudformation")
        apply(cf, args.stack_name, TEMPLATE.read_text())
        outputs = {
            o["OutputKey"]: o["OutputValue"]
            for o in cf.describe_stacks(StackName=args.stack_name)["Stacks"][0].get("Outputs", [])
        }
        missing = [key for key in (*OUTPUTS, GROUP_OUTPUT) if key not in outputs]
        if missing:
            raise Failure(f"stack {args.stack_name} has no output {', '.join(missing)}")
        result(f"export AWS_REGION={shlex.quote(aws.region)}")
        for key, variable in OUTPUTS.items():
            result(f"export {variable}={shlex.quote(outputs[key])}")
        result(f"export MODEL_PACKAGE_GROUP={shlex.quote(outputs[GROUP_OUTPUT])}")

    return run_main("infra", body)
