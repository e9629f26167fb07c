"""scripts/deploy.sh --server triton: a SageMaker endpoint on AWS's Triton image (docs/triton.md).

    scripts/deploy.sh --server triton --endpoint ncf-triton --package pkgs/ncf.tar.gz \\
        --upload-to s3://BUCKET/ncf/triton/                                         single model (top-K)
    scripts/deploy.sh --server triton --endpoint ncf-triton --package REPO --model-name ncf_scores \\
        --upload-to s3://BUCKET/ncf/triton/                          a whole repository, one entry model
    scripts/deploy.sh --server triton --multi-model --endpoint ncf-tmme \\
        --package pkgs/ncf.tar.gz --package pkgs/ncf_scores.tar.gz --upload-to s3://BUCKET/ncf/tmme/
    scripts/deploy.sh --server triton --multi-model --endpoint ncf-tmme \\
        --package pkgs/shop.tar.gz --upload-to s3://BUCKET/ncf/tmme/     add a model: upload only

--package is `python -m ncf_core export --packages DIR`'s `<name>.tar.gz` (model directories at the
archive's root, one ensemble), or, single-model only, an exported repository directory (packed here). Each is
checked before any AWS call: every model directory has a config.pbtxt whose name is the directory's and a
numeric version directory; a package holds one entry (its ensemble, else its only model) named as the
file, and the models its ensemble steps name.
Single model: uploads S3_PREFIX/ENDPOINT-TIMESTAMP/model.tar.gz and sets SAGEMAKER_TRITON_DEFAULT_MODEL_NAME.
Multi-model: uploads S3_PREFIX/<name>.tar.gz and creates a Mode=MultiModel endpoint over S3_PREFIX; when
that endpoint already serves S3_PREFIX, the packages are only uploaded (invoke.sh --target-model NAME.tar.gz
loads one). A package already there with other content is refused: the endpoint keeps serving the copy it
loaded, so upload a changed model under a new name.
The image is sagemaker-tritonserver:VERSION-py3 (GPU instance types: ml.g*, ml.p*) or VERSION-py3-cpu, from
AWS's account for the region (the SageMaker SDK's image_uris table, pinned below). No image of ours is
needed (build_and_push.sh does not apply). Uploaded objects are recorded in the model's tags, and
cleanup.sh deletes them with the endpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import autoscale
from .autoscale import is_gpu
from .aws_client import (
    Aws,
    UsageError,
    check_bucket,
    check_name,
    check_role_arn,
    connect,
    describe_or_none,
    error_code,
    key_values,
    parse_s3_uri,
    result,
    role_arn_option,
    run_main,
    say,
    show_request,
    stamp,
)

TRITON_VERSION = "24.09"  # pinned; the SDK (sagemaker 2.257) knows 23.12 .. 25.09
TRITON_REPOSITORY = "sagemaker-tritonserver"
GPU_INSTANCE_TYPE = "ml.g4dn.xlarge"
# sagemaker-tritonserver registries per region (sagemaker SDK image_uri_config/sagemaker-tritonserver.json,
# identical for every version it lists; tests/aws/test_launch_triton.py compares when the SDK is present).
TRITON_ACCOUNTS = {
    "af-south-1": "626614931356",
    "il-central-1": "780543022126",
    "ap-east-1": "871362719292",
    "ap-northeast-1": "763104351884",
    "ap-northeast-2": "763104351884",
    "ap-northeast-3": "364406365360",
    "ap-south-1": "763104351884",
    "ap-southeast-1": "763104351884",
    "ap-southeast-2": "763104351884",
    "ap-southeast-3": "907027046896",
    "ca-central-1": "763104351884",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-1": "763104351884",
    "eu-north-1": "763104351884",
    "eu-west-1": "763104351884",
    "eu-west-2": "763104351884",
    "eu-west-3": "763104351884",
    "eu-south-1": "692866216735",
    "me-south-1": "217643126080",
    "sa-east-1": "763104351884",
    "us-east-1": "763104351884",
    "us-east-2": "763104351884",
    "us-west-1": "763104351884",
    "us-west-2": "763104351884",
    "ca-west-1": "204538143572",
}
UPLOAD_TAG = "ncf:uploaded:"  # model tag key prefix; the value is an S3 URI this script uploaded
_VERSION = re.compile(r"^\d{2}\.\d{2}$")


def triton_image(region: str, instance_type: str, version: str = TRITON_VERSION) -> str:
    """As ``sagemaker.image_uris.retrieve("sagemaker-tritonserver", region, version, instance_type)``."""
    account = TRITON_ACCOUNTS.get(region)
    if account is None:
        raise UsageError(f"no sagemaker-tritonserver image is listed for region {region}")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    tag = f"{version}-py3" + ("" if is_gpu(instance_type) else "-cpu")
    return f"{account}.dkr.ecr.{region}.{domain}/{TRITON_REPOSITORY}:{tag}"


# ------------------------------------------------------------------------------------- local checks


def _top_level(text: str) -> dict[str, str]:
    """``key: "value"`` / ``key: value`` fields at the config's top level (outside any braces)."""
    text = re.sub(r"#[^\n]*", "", text)
    depth, top = 0, []
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif depth == 0:
            top.append(ch)
    fields = {}
    for m in re.finditer(r"(\w+)\s*:\s*(\"[^\"]*\"|[\w.-]+)", "".join(top)):
        fields.setdefault(m.group(1), m.group(2).strip('"'))
    return fields


@dataclass
class Model:
    name: str
    ensemble: bool
    steps: list[str]


def check_model(name: str, config: str | None, versions: set[str], where: str) -> Model:
    if config is None:
        raise UsageError(f"{where}: model directory {name}/ has no config.pbtxt")
    fields = _top_level(config)
    if fields.get("name", name) != name:
        raise UsageError(
            f"{where}: {name}/config.pbtxt names model {fields['name']!r}: a model is named as its directory"
        )
    if not versions:
        raise UsageError(f"{where}: model directory {name}/ has no version directory (e.g. {name}/1/)")
    ensemble = fields.get("platform") == "ensemble"
    steps = re.findall(r"model_name\s*:\s*\"([^\"]+)\"", config) if ensemble else []
    return Model(name, ensemble, steps)


def _entry(models: dict[str, Model], where: str) -> Model:
    ensembles = [m for m in models.values() if m.ensemble]
    if len(ensembles) > 1 or (not ensembles and len(models) > 1):
        raise UsageError(
            f"{where}: a package holds exactly one entry model (one ensemble, or one model), "
            f"found {', '.join(sorted(models))}"
        )
    entry = ensembles[0] if ensembles else next(iter(models.values()))
    missing = sorted(set(entry.steps) - set(models))
    if missing:
        raise UsageError(f"{where}: ensemble {entry.name} needs {', '.join(missing)}, not in the package")
    return entry


def read_package(path: Path) -> tuple[str, bytes]:
    """Check a ``<name>.tar.gz`` package; returns (name, its bytes)."""
    where = str(path)
    if not path.name.endswith(".tar.gz"):
        raise UsageError(f"{where}: a package is a <name>.tar.gz file")
    data = path.read_bytes()
    configs: dict[str, str | None] = {}
    versions: dict[str, set[str]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                parts = PurePosixPath(member.name.removeprefix("./")).parts
                if not parts or parts == (".",):
                    continue
                if member.name.startswith("/") or ".." in parts or not (member.isdir() or member.isfile()):
                    raise UsageError(f"{where}: unsafe archive member {member.name!r}")
                if len(parts) == 1 and member.isfile():
                    raise UsageError(
                        f"{where}: {parts[0]} lies at the archive's root: a package holds model directories "
                        "<name>/config.pbtxt + <name>/<version>/"
                    )
                configs.setdefault(parts[0], None)
                versions.setdefault(parts[0], set())
                if parts[1:] == ("config.pbtxt",) and member.isfile():
                    configs[parts[0]] = tar.extractfile(member).read().decode()
                elif len(parts) >= 2 and parts[1].isdigit():
                    versions[parts[0]].add(parts[1])
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"{where}: not a gzipped tar archive ({exc})") from None
    if not configs:
        raise UsageError(f"{where}: empty package")
    models = {n: check_model(n, configs[n], versions[n], where) for n in configs}
    entry = _entry(models, where)
    if path.name != f"{entry.name}.tar.gz":
        raise UsageError(f"{where}: its entry model is {entry.name}: name the file {entry.name}.tar.gz")
    return entry.name, data


def read_repository(path: Path, model_name: str | None) -> tuple[str, bytes]:
    """Check an exported repository directory and pack it; returns (the model to serve, the archive)."""
    where = str(path)
    models = {}
    for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = d / "config.pbtxt"
        versions = {v.name for v in d.iterdir() if v.is_dir() and v.name.isdigit()}
        text = config.read_text() if config.is_file() else None
        models[d.name] = check_model(d.name, text, versions, where)
    if not models:
        raise UsageError(f"{where}: no model directories (<name>/config.pbtxt) in this repository")
    if model_name is None:
        model_name = _entry(models, where + " (or pass --model-name)").name
    if model_name not in models:
        raise UsageError(f"{where}: --model-name {model_name} is not one of its models: {', '.join(models)}")
    missing = sorted(set(models[model_name].steps) - set(models))
    if missing:
        raise UsageError(f"{where}: ensemble {model_name} needs {', '.join(missing)}, not in the repository")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in models:
            tar.add(path / name, arcname=name)
    return model_name, buf.getvalue()


# ------------------------------------------------------------------------------------------- deploy


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deploy.sh --server triton",
        description="Create a SageMaker endpoint serving exported Triton packages on AWS's Triton image.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--endpoint", required=True, help="endpoint name")
    p.add_argument(
        "--package", action="append", required=True, type=Path, help="<name>.tar.gz (or a repository dir)"
    )
    p.add_argument("--model-name", help="single model: the entry model (SAGEMAKER_TRITON_DEFAULT_MODEL_NAME)")
    p.add_argument("--upload-to", required=True, metavar="S3_PREFIX", help="where the packages go")
    p.add_argument("--multi-model", action="store_true", help="Mode=MultiModel over --upload-to")
    p.add_argument("--triton-version", default=TRITON_VERSION, help=f"default {TRITON_VERSION}")
    p.add_argument("--image", help="image URI (default: the region's sagemaker-tritonserver)")
    role_arn_option(p)
    p.add_argument("--instance-type", default=GPU_INSTANCE_TYPE, help=f"default {GPU_INSTANCE_TYPE}")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment")
    p.add_argument("--no-wait", action="store_true", help="return once the create call is accepted")
    p.add_argument("--timeout", type=int, default=3600, metavar="SECONDS", help="max wait (default 1 hour)")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    autoscale.add_arguments(p)  # GPU multi-model: target-tracking on GPU utilisation by default
    return p


def _upload(aws: Aws, uri: str, data: bytes) -> bool:
    """Put ``data`` at ``uri``; False when the same bytes are there already; refuses other content."""
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(uri)
    s3 = aws.client("s3")
    try:
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchKey"):
            raise
        etag = None
    if etag is not None:
        if etag == hashlib.md5(data).hexdigest():
            say(f"{uri} is there already, unchanged")
            return False
        raise UsageError(
            f"{uri} exists with other content: an endpoint keeps the copy it loaded; use a new model name"
        )
    say(f"PutObject {uri} ({len(data)} bytes)")
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return True


def _upload_tags(uris: list[str]) -> list[dict]:
    return [{"Key": UPLOAD_TAG + hashlib.sha1(u.encode()).hexdigest()[:12], "Value": u} for u in uris]


def main(argv: list[str] | None = None) -> int:
    from .deploy import BUSY, MAX_ENDPOINT_NAME, endpoint_status, wait_for_endpoint

    args = parser().parse_args(argv)

    def body() -> None:
        # Checks: nothing is called, created or uploaded until all of them pass.
        check_name(args.endpoint, "--endpoint", MAX_ENDPOINT_NAME)
        check_role_arn(args.role_arn)
        env = key_values(args.env, "--env")
        if not _VERSION.match(args.triton_version):
            raise UsageError(f"--triton-version is like {TRITON_VERSION}, got {args.triton_version!r}")
        if args.instance_count < 1:
            raise UsageError(f"--instance-count must be at least 1, got {args.instance_count}")
        autoscale.check_args(args)
        prefix_bucket, _ = parse_s3_uri(args.upload_to, "--upload-to")
        prefix = args.upload_to if args.upload_to.endswith("/") else args.upload_to + "/"
        for path in args.package:
            if not path.exists():
                raise UsageError(f"--package {path} not found")
        uploads: dict[str, bytes] = {}
        if args.multi_model:
            if args.model_name:
                raise UsageError("--model-name is for a single model (multi-model: invoke --target-model)")
            for path in args.package:
                if path.is_dir():
                    raise UsageError(f"--multi-model takes <name>.tar.gz packages, {path} is a directory")
                name, data = read_package(path)
                uri = f"{prefix}{name}.tar.gz"
                if uri in uploads:
                    raise UsageError(f"two packages named {name}.tar.gz")
                uploads[uri] = data
            entry = None
        else:
            if len(args.package) != 1:
                raise UsageError("a single-model endpoint takes one --package")
            (path,) = args.package
            if path.is_dir():
                entry, data = read_repository(path, args.model_name)
            else:
                entry, data = read_package(path)
                if args.model_name and args.model_name != entry:
                    raise UsageError(f"{path} serves {entry}, not --model-name {args.model_name}")
            uploads[f"{prefix}{args.endpoint}-{stamp()}/model.tar.gz"] = data

        aws = connect(args.region)
        sm = aws.client("sagemaker")
        check_bucket(aws, prefix_bucket)
        image = args.image or triton_image(aws.region, args.instance_type, args.triton_version)
        status = endpoint_status(sm, args.endpoint)
        if status in BUSY:
            raise UsageError(f"endpoint {args.endpoint} is {status}: wait until it is InService, then re-run")
        if status == "Failed":
            raise UsageError(f"endpoint {args.endpoint} is Failed: scripts/cleanup.sh it, then re-run")

        if args.multi_model and status is not None:
            current = _serving_prefix(sm, args.endpoint)
            if current is not None and current[1] == prefix:
                uploaded = [u for u, data in uploads.items() if _upload(aws, u, data)]
                if uploaded:
                    sm.add_tags(ResourceArn=current[0], Tags=_upload_tags(uploaded))
                for uri in uploads:
                    say(f"invoke.sh --endpoint {args.endpoint} --target-model {uri.rsplit('/', 1)[1]}")
                result(args.endpoint)
                return

        uploaded = [u for u, data in uploads.items() if _upload(aws, u, data)]
        suffix = stamp()
        container = {"Image": image, "Environment": env}
        if args.multi_model:
            container |= {"Mode": "MultiModel", "ModelDataUrl": prefix}
        else:
            container |= {"ModelDataUrl": next(iter(uploads))}
            container["Environment"] = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": entry} | env
        model_name = f"{args.endpoint}-primary-{suffix}"
        model = {"ModelName": model_name, "ExecutionRoleArn": args.role_arn, "PrimaryContainer": container}
        show_request("CreateModel", model)
        sm.create_model(**model, Tags=_upload_tags(uploaded) or [{"Key": "ncf:server", "Value": "triton"}])
        config = {
            "EndpointConfigName": f"{args.endpoint}-{suffix}",
            "ProductionVariants": [
                {
                    "VariantName": "primary",
                    "ModelName": model_name,
                    "InstanceType": args.instance_type,
                    "InitialInstanceCount": args.instance_count,
                    "InitialVariantWeight": 1.0,
                }
            ],
        }
        show_request("CreateEndpointConfig", config)
        sm.create_endpoint_config(**config)
        if status is None:
            say(f"CreateEndpoint {args.endpoint} with config {config['EndpointConfigName']}")
            sm.create_endpoint(EndpointName=args.endpoint, EndpointConfigName=config["EndpointConfigName"])
        else:
            # SageMaker refuses to update a variant that is a scalable target: deregister first.
            autoscale.deregister(aws, autoscale.scalable_targets(aws, args.endpoint))
            say(f"UpdateEndpoint {args.endpoint} ({status}) to config {config['EndpointConfigName']}")
            sm.update_endpoint(EndpointName=args.endpoint, EndpointConfigName=config["EndpointConfigName"])
        if not args.no_wait:
            wait_for_endpoint(sm, args.endpoint, args.timeout)
        if args.autoscale:
            autoscale.register(aws, args, args.endpoint, ["primary"])
        result(args.endpoint)

    return run_main("deploy", body)


def _serving_prefix(sm, endpoint: str) -> tuple[str, str] | None:
    """(model ARN, S3 prefix) of a multi-model endpoint's primary model, else None."""
    name = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    config = describe_or_none(sm.describe_endpoint_config, EndpointConfigName=name)
    if config is None or len(config["ProductionVariants"]) != 1:
        return None
    model = describe_or_none(sm.describe_model, ModelName=config["ProductionVariants"][0]["ModelName"])
    container = (model or {}).get("PrimaryContainer", {})
    if container.get("Mode") != "MultiModel" or TRITON_REPOSITORY not in container.get("Image", ""):
        return None
    return model["ModelArn"], container["ModelDataUrl"]


def uploaded_objects(sm, models: list[str]) -> list[str]:
    """S3 URIs this script uploaded for these models (their tags); for cleanup.sh."""
    uris = []
    for name in models:
        desc = describe_or_none(sm.describe_model, ModelName=name)
        if desc is None:
            continue
        tags = sm.list_tags(ResourceArn=desc["ModelArn"]).get("Tags", [])
        uris += [t["Value"] for t in tags if t["Key"].startswith(UPLOAD_TAG)]
    return sorted(set(uris))


def delete_objects(aws: Aws, uris: list[str]) -> None:
    s3 = aws.client("s3")
    for uri in uris:
        bucket, key = parse_s3_uri(uri)
        say(f"DeleteObject {uri}")
        s3.delete_object(Bucket=bucket, Key=key)
        result(uri)
