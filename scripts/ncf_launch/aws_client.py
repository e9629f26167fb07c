"""What every launch command shares: messages, errors, the AWS session, S3 URIs, names, image URIs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = SCRIPTS_DIR.parent
METRIC_DEFINITIONS_FILE = SCRIPTS_DIR / "metric_definitions.json"
SEED_PAYLOAD_FILE = SCRIPTS_DIR / "payloads" / "seed.json"

# Local image names and ECR repository names of our two images (containers/train, containers/serve).
TRAIN_REPOSITORY = "ncf-train"
SERVE_REPOSITORY = "ncf-serve"
LOCAL_TAG = "local"
BOTO3_PIN = "boto3==1.43.11"
# Defaults the launchers and the pipeline (mlops/ncf_mlops) share.
TRAIN_INSTANCE_TYPE = "ml.m5.xlarge"
SERVE_INSTANCE_TYPE = "ml.m5.large"
ROLE_ENV = "SAGEMAKER_ROLE_ARN"  # the IAM role SageMaker assumes (--role-arn)

# SageMaker resource names (jobs, models, endpoint configs, endpoints): 1-63 characters.
_SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_ECR_IMAGE = re.compile(
    r"^(?P<registry>(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?)"
    r"/(?P<repository>[a-z0-9._/-]+)(:(?P<tag>[\w][\w.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))$"
)

_prog = "ncf_launch"


class UsageError(Exception):
    """Something the user must fix before anything is created or changed (exit code 2)."""


class Failure(Exception):
    """The work was started and did not succeed (exit code 1)."""


def say(message: str) -> None:
    """Narrate on stderr; stdout is kept for the command's result."""
    print(f"[{_prog}] {message}", file=sys.stderr, flush=True)


def result(value: str) -> None:
    """One line of the command's result on stdout."""
    print(value, flush=True)


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's body, turning our errors and AWS errors into a message and an exit code."""
    global _prog
    _prog = prog
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # the --local paths and build_and_push --no-push need no boto3
        BotoCoreError = ClientError = _Never
    try:
        return body() or 0
    except UsageError as exc:
        say(f"error: {exc}")
        return 2
    except Failure as exc:
        say(f"failed: {exc}")
        return 1
    except ClientError as exc:
        error = exc.response.get("Error", {})
        say(f"AWS error in {exc.operation_name}: {error.get('Code')}: {error.get('Message')}")
        return 1
    except BotoCoreError as exc:
        say(f"AWS error: {exc}")
        return 1
    except subprocess.CalledProcessError as exc:
        say(f"failed: `{shlex.join(str(a) for a in exc.cmd)}` exited {exc.returncode}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


class _Never(Exception):
    pass


# ----------------------------------------------------------------------------------------------- AWS


@dataclass
class Aws:
    """A checked boto3 session: region and credentials known, account id read from STS."""

    session: Any
    region: str
    account: str

    def client(self, service: str):
        from botocore.config import Config

        return self.session.client(service, config=Config(retries={"mode": "standard", "max_attempts": 5}))


def connect(region: str | None) -> Aws:
    """Open a boto3 session and prove the credentials work (sts:GetCallerIdentity) before any change."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        raise UsageError(
            f"boto3 is not installed for {sys.executable}: pip install '{BOTO3_PIN}' "
            "(or, in this repository, pip install -e '.[aws]')"
        ) from None
    try:
        # The AWS CLI v2 order: --region, AWS_REGION, AWS_DEFAULT_REGION, profile (boto3 skips AWS_REGION).
        session = boto3.Session(region_name=region or os.environ.get("AWS_REGION") or None)
        region_name, credentials = session.region_name, session.get_credentials()
    except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
        raise UsageError(str(exc)) from None
    if not region_name:
        raise UsageError("no AWS region: pass --region or set AWS_REGION (or a region in your AWS profile)")
    if credentials is None:
        raise UsageError(
            "no AWS credentials: set AWS_PROFILE (after `aws configure` or `aws sso login`), "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    aws = Aws(session, region_name, "")
    try:
        identity = aws.client("sts").get_caller_identity()
    except (ClientError, NoCredentialsError) as exc:
        raise UsageError(f"the AWS credentials were refused ({exc}); refresh them and re-run") from None
    except BotoCoreError as exc:
        raise UsageError(f"cannot reach AWS: {exc}") from None
    aws.account = identity["Account"]
    where = (
        f", endpoint {os.environ['AWS_ENDPOINT_URL']} (AWS_ENDPOINT_URL)"
        if "AWS_ENDPOINT_URL" in os.environ
        else ""
    )
    say(f"AWS account {aws.account} as {identity['Arn']}, region {aws.region}{where}")
    return aws


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: Exception) -> bool:
    """SageMaker answers a missing job/model/config/endpoint with ValidationException 'Could not find ...'."""
    message = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Message", ""))
    return error_code(exc) == "ValidationException" and (
        "could not find" in message.lower() or "not found" in message.lower()
    )


def describe_or_none(describe, **kwargs) -> dict | None:
    """``describe(**kwargs)``, or None when SageMaker says the resource does not exist."""
    from botocore.exceptions import ClientError

    try:
        return describe(**kwargs)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


# ------------------------------------------------------------------------------------------------ S3


def parse_s3_uri(uri: str, what: str = "S3 URI") -> tuple[str, str]:
    """'s3://bucket/some/key' -> ('bucket', 'some/key'); the key may be empty."""
    match = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", uri or "")
    if match is None:
        raise UsageError(f"{what} {uri!r} is not of the form s3://bucket/prefix")
    return match.group(1), match.group(2) or ""


def check_bucket(aws: Aws, bucket: str) -> None:
    """Fail early, with a sentence, when a bucket is missing or not ours to use."""
    from botocore.exceptions import ClientError

    try:
        aws.client("s3").head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchBucket"):
            raise UsageError(
                f"S3 bucket {bucket!r} does not exist: create it first (e.g. aws s3 mb s3://{bucket} "
                f"--region {aws.region})"
            ) from None
        if code in ("403", "AccessDenied"):
            raise UsageError(f"no access to S3 bucket {bucket!r} with these credentials") from None
        raise


def require_objects(aws: Aws, uri: str, what: str) -> None:
    """Fail early when nothing lies under an S3 prefix that a job is going to read."""
    bucket, prefix = parse_s3_uri(uri, what)
    check_bucket(aws, bucket)
    listed = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    if not listed.get("KeyCount"):
        raise UsageError(f"{what} {uri} holds no objects: upload the data first (scripts/upload_data.sh)")


# ------------------------------------------------------------------------------------- names and values


def check_name(name: str, what: str, max_len: int = 63) -> str:
    if not _SAGEMAKER_NAME.match(name or "") or len(name) > max_len:
        raise UsageError(
            f"{what} {name!r} is not a valid SageMaker name: letters, digits and hyphens, starting with a "
            f"letter or digit, at most {max_len} characters"
        )
    return name


def check_role_arn(arn: str | None) -> str:
    if not arn:
        raise UsageError(
            f"no IAM role for SageMaker: pass --role-arn or set {ROLE_ENV} "
            "(a role SageMaker can assume, with access to your bucket and ECR)"
        )
    if not _ROLE_ARN.match(arn):
        raise UsageError(f"--role-arn {arn!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)")
    return arn


def stamp() -> str:
    """UTC time to the millisecond, for unique resource names: 20261123-164905-123."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"


STAMP_PATTERN = r"\d{8}-\d{6}-\d{3}"


def key_values(pairs: Sequence[str], what: str) -> dict[str, str]:
    """['a=1', 'b=x=y'] -> {'a': '1', 'b': 'x=y'}; values stay strings."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{what} {pair!r} is not KEY=VALUE")
        if key in out:
            raise UsageError(f"{what} {key!r} is given twice")
        out[key] = value
    return out


def load_metric_definitions() -> list[dict[str, str]]:
    """The regexes SageMaker applies to the training log (the one copy: scripts/metric_definitions.json)."""
    with METRIC_DEFINITIONS_FILE.open() as fh:
        return [{"Name": d["Name"], "Regex": d["Regex"]} for d in json.load(fh)["MetricDefinitions"]]


# ------------------------------------------------------------------------------------------------ images


def parse_ecr_image(uri: str) -> re.Match | None:
    return _ECR_IMAGE.match(uri)


def ecr_image_uri(account: str, region: str, repository: str, tag: str = "latest") -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repository}:{tag}"


def default_image(aws: Aws, repository: str, tag: str = "latest") -> str:
    """The URI of `repository:tag` in this account's ECR, checked to exist."""
    uri = ecr_image_uri(aws.account, aws.region, repository, tag)
    check_ecr_image(aws, uri)
    return uri


def role_arn_option(p) -> None:
    """``--role-arn`` defaulting to $SAGEMAKER_ROLE_ARN, as every launcher takes it."""
    p.add_argument("--role-arn", default=os.environ.get(ROLE_ENV), help=f"IAM role (env {ROLE_ENV})")


def check_ecr_image(aws: Aws, uri: str) -> None:
    """Fail early when an ECR image URI names a repository or tag that is not there."""
    from botocore.exceptions import ClientError

    match = parse_ecr_image(uri)
    if match is None:
        say(f"image {uri} is not an ECR image URI: not checked")
        return
    image_id = {"imageTag": match["tag"]} if match["tag"] else {"imageDigest": match["digest"]}
    ecr = aws.session.client("ecr", region_name=match["region"])
    try:
        ecr.describe_images(
            registryId=match["account"], repositoryName=match["repository"], imageIds=[image_id]
        )
    except ClientError as exc:
        code = error_code(exc)
        if code == "RepositoryNotFoundException":
            raise UsageError(
                f"no ECR repository {match['repository']!r} in {match['account']}/{match['region']}: "
                "build and push the images first (scripts/build_and_push.sh)"
            ) from None
        if code == "ImageNotFoundException":
            raise UsageError(
                f"image {uri} is not in ECR: push it with scripts/build_and_push.sh, or pass --image"
            ) from None
        raise


def show_request(operation: str, request: dict) -> None:
    """Print an API request before sending it, one top-level field a line."""
    say(operation)
    for key, value in request.items():
        say(f"  {key}: {json.dumps(value)}")


# ------------------------------------------------------------------------------------------- processes


def show(cmd: Sequence[str]) -> None:
    say("+ " + shlex.join(str(c) for c in cmd))


def run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Print a command, then run it; unless check=False, a non-zero exit raises CalledProcessError."""
    show(cmd)
    kwargs.setdefault("stdout", sys.stderr)  # a tool's output is narration too: stdout stays the result
    kwargs.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kwargs)


def confirm(question: str) -> bool:
    """Ask on stdin; only 'y' or 'yes' is a yes (end of input, as from /dev/null, is a no)."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        print(file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")
