"""scripts/cleanup.sh: delete an endpoint and the endpoint configs and models deploy.sh made for it.

    scripts/cleanup.sh --endpoint ncf          lists what it will delete, then asks
    scripts/cleanup.sh --endpoint ncf --yes    no question (scripts, CI)

Deletes the endpoint (which stops its billing), the endpoint config it uses and the models in it, and every
earlier config and model deploy.sh made for that endpoint (NAME-TIMESTAMP, NAME-primary|canary-TIMESTAMP).
Packages deploy.sh --server triton uploaded (recorded in its models' tags) are deleted too. Its variants'
auto scaling (deploy.sh --autoscale) is deregistered first, policies included.
Anything else is left alone: training jobs (SageMaker keeps their records; they cost nothing once ended),
S3 objects (data, model artifacts, captured data) and ECR images. Re-running when everything is gone is fine.
"""

from __future__ import annotations

import argparse
import re

from . import autoscale
from .aws_client import UsageError, check_name, confirm, connect, is_not_found, result, run_main, say
from .deploy import config_name_pattern, endpoint_status, model_name_pattern
from .triton_deploy import delete_objects, uploaded_objects


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cleanup.sh",
        description="Delete a SageMaker endpoint with its endpoint configs and models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--endpoint", required=True, help="endpoint name, as given to deploy.sh")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    return p


def names(sm, operation: str, key: str, name_key: str, endpoint: str) -> list[str]:
    """All names from a paginated list call (NameContains narrows it on SageMaker)."""
    out = []
    for page in sm.get_paginator(operation).paginate(NameContains=endpoint):
        out += [item[name_key] for item in page[key]]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        from botocore.exceptions import ClientError

        check_name(args.endpoint, "--endpoint")
        aws = connect(args.region)
        sm = aws.client("sagemaker")

        status = endpoint_status(sm, args.endpoint)
        configs: list[str] = []
        models: list[str] = []
        if status is not None:
            current = sm.describe_endpoint(EndpointName=args.endpoint)["EndpointConfigName"]
            configs.append(current)
            try:
                variants = sm.describe_endpoint_config(EndpointConfigName=current)["ProductionVariants"]
                models += [v["ModelName"] for v in variants]
            except ClientError as exc:
                if not is_not_found(exc):  # its config was deleted by hand already
                    raise
        config_re, model_re = (
            re.compile(config_name_pattern(args.endpoint)),
            re.compile(model_name_pattern(args.endpoint)),
        )
        configs += [
            c
            for c in names(
                sm, "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", args.endpoint
            )
            if config_re.match(c)
        ]
        models += [
            m for m in names(sm, "list_models", "Models", "ModelName", args.endpoint) if model_re.match(m)
        ]
        configs, models = sorted(set(configs)), sorted(set(models))
        uploads = uploaded_objects(sm, models)
        targets = autoscale.scalable_targets(aws, args.endpoint)

        if status is None and not configs and not models and not targets:
            say(f"nothing to delete for endpoint {args.endpoint} in {aws.region}")
            return 0
        say(f"in account {aws.account}, region {aws.region}, this deletes:")
        for t in targets:
            say(f"  scalable target {t} (and its scaling policies)")
        if status is not None:
            say(f"  endpoint        {args.endpoint} ({status})")
        for c in configs:
            say(f"  endpoint config {c}")
        for m in models:
            say(f"  model           {m}")
        for u in uploads:
            say(f"  S3 object       {u}")
        count = int(status is not None) + len(configs) + len(models) + len(uploads) + len(targets)
        if not args.yes and not confirm(f"Delete these {count}?"):
            raise UsageError("nothing deleted (answer y to delete, or pass --yes)")

        autoscale.deregister(aws, targets, show=True)
        if status is not None:
            say(f"DeleteEndpoint {args.endpoint}")
            sm.delete_endpoint(EndpointName=args.endpoint)
            result(args.endpoint)
        for c in configs:
            say(f"DeleteEndpointConfig {c}")
            _ignore_missing(lambda c=c: sm.delete_endpoint_config(EndpointConfigName=c))
            result(c)
        for m in models:
            say(f"DeleteModel {m}")
            _ignore_missing(lambda m=m: sm.delete_model(ModelName=m))
            result(m)
        delete_objects(aws, uploads)
        say("done; " + ("other " if uploads else "") + "S3 objects, training jobs and ECR images are kept")
        return 0

    return run_main("cleanup", body)


def _ignore_missing(call) -> None:
    """Deleting something already gone (a parallel cleanup, a re-run) is not an error."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        if not is_not_found(exc):
            raise
