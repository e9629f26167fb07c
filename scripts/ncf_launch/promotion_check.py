"""python -m ncf_launch.promotion_check --staging ENDPOINT --group GROUP (mlops/infra/buildspec-promote.yml).

Before the production deploy of the promotion pipeline: the group's latest Approved version, which
deploy.sh --model-package-group is about to deploy, must be the version the staging endpoint serves (the
one the smoke test passed). A version approved after the staging deploy would otherwise reach production
untested: exit 1 with both ARNs (re-run the pipeline to stage it). Prints the ARN when they match.
"""

from __future__ import annotations

import argparse
import sys

from .aws_client import Failure, UsageError, check_name, connect, describe_or_none, result, run_main, say
from .registry import approved_versions


def staged_package(sm, endpoint: str) -> str:
    """The model package ARN of the staging endpoint's primary variant."""
    desc = describe_or_none(sm.describe_endpoint, EndpointName=endpoint)
    if desc is None:
        raise UsageError(f"no staging endpoint named {endpoint}")
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    variants = {v["VariantName"]: v for v in config["ProductionVariants"]}
    variant = variants.get("primary") or next(iter(variants.values()))
    container = sm.describe_model(ModelName=variant["ModelName"]).get("PrimaryContainer", {})
    if not container.get("ModelPackageName"):
        raise Failure(f"staging endpoint {endpoint} does not serve a model package: nothing to promote")
    return container["ModelPackageName"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="promotion_check", description=__doc__.split("\n\n")[1])
    p.add_argument("--staging", required=True, help="the staging endpoint")
    p.add_argument("--group", required=True, help="the model package group (name or ARN)")
    p.add_argument("--region")
    args = p.parse_args(argv)

    def body() -> None:
        check_name(args.staging, "--staging")
        sm = connect(args.region).client("sagemaker")
        staged = staged_package(sm, args.staging)
        approved = approved_versions(sm, args.group)
        latest = approved[0]["ModelPackageArn"] if approved else None
        if latest != staged:
            raise Failure(
                f"the latest Approved version of {args.group} is {latest}, but staging endpoint "
                f"{args.staging} serves {staged}: it was not smoke-tested; re-run the pipeline to stage it"
            )
        say(f"staging {args.staging} serves the latest Approved version: promoting it")
        result(staged)

    return run_main("promotion_check", body)


if __name__ == "__main__":
    sys.exit(main())
