"""scripts/registry.sh: the versions of a model package group, with their metrics; approve or reject one.

    scripts/registry.sh list --group ncf-models
    scripts/registry.sh approve --arn arn:aws:sagemaker:REGION:ACCOUNT:model-package/ncf-models/3 --reason ok
    scripts/registry.sh reject --arn ARN --reason "worse than version 2 on the A/B test"

list prints one line per version, newest first: version, approval status, the figures of its
evaluation.json (the model statistics the pipeline's Evaluate step wrote) and its ARN, tab-separated.
Approving a version is what the EventBridge rule of mlops/infra/ deploys on; deploy.sh
--model-package-group deploys the latest approved version by hand (--rollback: the one before).
"""

from __future__ import annotations

import argparse
import json
import re

from .aws_client import (
    UsageError,
    connect,
    error_code,
    parse_s3_uri,
    result,
    run_main,
    say,
    show_request,
)

APPROVED = "Approved"
DECISIONS = {"approve": APPROVED, "reject": "Rejected"}
_PACKAGE_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:model-package/[\w-]+/\d+$")
REPORT_FIGURES = ("hr_at_10", "ndcg_at_10", "users_evaluated")  # evaluation_job report names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="registry.sh",
        description="List, approve or reject the model packages of a SageMaker model package group.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("command", choices=("list", *DECISIONS))
    p.add_argument("--group", help="list: the model package group")
    p.add_argument("--arn", help="approve, reject: the model package (version) ARN")
    p.add_argument("--reason", help="approve, reject: why (kept as the version's ApprovalDescription)")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    return p


def _missing(exc: Exception) -> bool:
    message = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Message", "")).lower()
    return error_code(exc) == "ValidationException" and ("not exist" in message or "not found" in message)


def check_group(sm, group: str) -> None:
    from botocore.exceptions import ClientError

    try:
        sm.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as exc:
        if _missing(exc):
            raise UsageError(f"no model package group named {group}") from None
        raise


def versions(sm, group: str, status: str | None = None) -> list[dict]:
    """The group's versions (summaries), newest first; only those with ``status`` when given."""
    kwargs = {"ModelPackageGroupName": group, "SortBy": "CreationTime", "SortOrder": "Descending"}
    if status:
        kwargs["ModelApprovalStatus"] = status
    out: list[dict] = []
    while True:
        page = sm.list_model_packages(**kwargs)
        out += page.get("ModelPackageSummaryList", [])
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    return sorted(out, key=lambda v: v.get("ModelPackageVersion", 0), reverse=True)


def approved_versions(sm, group: str) -> list[dict]:
    """Approved versions, newest first (what deploy.sh --model-package-group picks from)."""
    check_group(sm, group)
    return versions(sm, group, APPROVED)


def describe_package(sm, arn: str) -> dict:
    from botocore.exceptions import ClientError

    if not _PACKAGE_ARN.match(arn or ""):
        raise UsageError(
            f"--arn {arn!r} is not a model package version ARN "
            "(arn:aws:sagemaker:REGION:ACCOUNT:model-package/GROUP/VERSION)"
        )
    try:
        return sm.describe_model_package(ModelPackageName=arn)
    except ClientError as exc:
        if _missing(exc):
            raise UsageError(f"no model package {arn}") from None
        raise


def metrics_of(aws, package: dict) -> str:
    """``hr_at_10=0.70 ndcg_at_10=0.42 users_evaluated=6040`` from the version's evaluation.json."""
    uri = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri")
    if not uri:
        return "no metrics"
    try:
        bucket, key = parse_s3_uri(uri)
        report = json.loads(aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
        figures = report["metrics"]
        return " ".join(f"{name}={figures[name]['value']}" for name in REPORT_FIGURES if name in figures)
    except Exception as exc:  # one unreadable report must not hide the other versions
        return f"metrics unreadable ({uri}: {exc})"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        if args.command == "list":
            if not args.group or args.arn or args.reason:
                raise UsageError("list takes --group NAME (and no --arn or --reason)")
            aws = connect(args.region)
            sm = aws.client("sagemaker")
            check_group(sm, args.group)
            found = versions(sm, args.group)
            say(f"{len(found)} version(s) in {args.group}")
            for v in found:
                package = sm.describe_model_package(ModelPackageName=v["ModelPackageArn"])
                line = (v.get("ModelPackageVersion"), v["ModelApprovalStatus"], metrics_of(aws, package))
                result("\t".join(map(str, (*line, v["ModelPackageArn"]))))
            return
        if args.group or not args.arn or not (args.reason or "").strip():
            raise UsageError(f"{args.command} takes --arn ARN and --reason TEXT")
        aws = connect(args.region)
        sm = aws.client("sagemaker")
        describe_package(sm, args.arn)
        request = {
            "ModelPackageArn": args.arn,
            "ModelApprovalStatus": DECISIONS[args.command],
            "ApprovalDescription": args.reason.strip(),
        }
        show_request("UpdateModelPackage", request)
        sm.update_model_package(**request)
        result(f"{args.arn}\t{DECISIONS[args.command]}")

    return run_main("registry", body)
