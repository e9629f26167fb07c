"""scripts/invoke.sh: send one request to an endpoint and print the answer on stdout.

    scripts/invoke.sh --endpoint ncf                                  the seed payload (payloads/seed.json)
    scripts/invoke.sh --endpoint ncf --payload request.json
    scripts/invoke.sh --endpoint ncf-mme --target-model ml-1m.tar.gz  one model of a multi-model endpoint
    scripts/invoke.sh --local http://127.0.0.1:PORT                   a local container (docker, compose)
    scripts/invoke.sh --endpoint ncf-triton --users 1,2,999            Triton: KServe v2 top-K request
    scripts/invoke.sh --endpoint ncf-tmme --target-model ncf_scores.tar.gz --pairs 1:10,999:11
    scripts/invoke.sh --local http://127.0.0.1:8000 --v2-model ncf --users 1,2   a local tritonserver

SageMaker: the sagemaker-runtime InvokeEndpoint API (what `aws sagemaker-runtime invoke-endpoint` calls), with
--variant to pin a production variant and --target-model for multi-model endpoints. --local URL: POST to
URL/invocations (or URL/models/NAME/invoke with --target-model), as curl would (the equivalent curl command
is printed). A non-2xx answer prints the body and exits 1.
--users / --pairs send a KServe v2 body (docs/triton.md) instead of --payload: USER (and ITEM) as INT64
[n, 1] tensors, or BYTES when an id is not an integer; --v2-model NAME posts it to a local Triton's
/v2/models/NAME/infer.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .aws_client import SEED_PAYLOAD_FILE, Failure, UsageError, check_name, connect, run_main, say


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="invoke.sh",
        description="Send a request to a SageMaker endpoint (or, with --local URL, to a local container).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="SageMaker endpoint name")
    where.add_argument("--local", metavar="URL", help="base URL of a local serving container")
    p.add_argument("--payload", type=Path, default=SEED_PAYLOAD_FILE, help="request body file, - for stdin")
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--accept", default="application/json")
    p.add_argument("--target-model", help="multi-model endpoints: which model (e.g. ml-1m.tar.gz)")
    p.add_argument("--variant", help="SageMaker: send to this production variant (primary, canary)")
    p.add_argument("--custom-attributes", help="X-Amzn-SageMaker-Custom-Attributes header")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    v2 = p.add_mutually_exclusive_group()
    v2.add_argument("--users", metavar="ID,ID", help="Triton top-K: a KServe v2 body of these users")
    v2.add_argument("--pairs", metavar="U:I,U:I", help="Triton pair scores: a KServe v2 body of these pairs")
    p.add_argument("--v2-model", metavar="NAME", help="--local: POST to URL/v2/models/NAME/infer")
    return p


def _v2_tensor(name: str, ids: list[str]) -> dict:
    if all(re.fullmatch(r"-?\d+", i) for i in ids):
        return {"name": name, "shape": [len(ids), 1], "datatype": "INT64", "data": [int(i) for i in ids]}
    return {"name": name, "shape": [len(ids), 1], "datatype": "BYTES", "data": ids}


def kserve_body(users: str | None, pairs: str | None) -> bytes:
    """The KServe v2 request for the exported ensembles' USER (and ITEM) inputs."""
    if users is not None:
        ids = [u.strip() for u in users.split(",")]
        if not all(ids):
            raise UsageError(f"--users is a comma-separated list of ids, got {users!r}")
        inputs = [_v2_tensor("USER", ids)]
    else:
        split = [p.strip().split(":") for p in pairs.split(",")]
        if not all(len(p) == 2 and all(p) for p in split):
            raise UsageError(f"--pairs is a comma-separated list of USER:ITEM, got {pairs!r}")
        inputs = [_v2_tensor("USER", [u for u, _ in split]), _v2_tensor("ITEM", [i for _, i in split])]
    return json.dumps({"inputs": inputs}).encode()


def read_payload(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    if not path.is_file():
        raise UsageError(f"payload file {path} not found")
    return path.read_bytes()


def invoke_local(args: argparse.Namespace, body: bytes) -> bytes:
    parts = urllib.parse.urlsplit(args.local)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--local {args.local!r} is not a URL like http://127.0.0.1:8080")
    if args.variant:
        raise UsageError("--variant applies to SageMaker endpoints, not --local")
    base = args.local.rstrip("/")
    if args.v2_model:
        url = f"{base}/v2/models/{urllib.parse.quote(args.v2_model, safe='')}/infer"
    else:
        url = (
            f"{base}/models/{urllib.parse.quote(args.target_model, safe='')}/invoke"
            if args.target_model
            else f"{base}/invocations"
        )
    headers = {"Content-Type": args.content_type, "Accept": args.accept}
    if args.custom_attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = args.custom_attributes
    curl = ["curl", "-sS", "-X", "POST", *[a for k, v in headers.items() for a in ("-H", f"{k}: {v}")]]
    say("equivalent: " + shlex.join([*curl, "--data-binary", f"@{args.payload}", url]))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = resp.read()
            say(f"{url} answered {resp.status} in {(time.perf_counter() - start) * 1000:.0f} ms")
            return answer
    except urllib.error.HTTPError as exc:
        sys.stdout.buffer.write(exc.read())
        raise Failure(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise Failure(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def invoke_sagemaker(args: argparse.Namespace, body: bytes) -> bytes:
    check_name(args.endpoint, "--endpoint")
    aws = connect(args.region)
    runtime = aws.client("sagemaker-runtime")
    request = {
        "EndpointName": args.endpoint,
        "Body": body,
        "ContentType": args.content_type,
        "Accept": args.accept,
    }
    if args.target_model:
        request["TargetModel"] = args.target_model
    if args.variant:
        request["TargetVariant"] = args.variant
    if args.custom_attributes:
        request["CustomAttributes"] = args.custom_attributes
    say(f"InvokeEndpoint {args.endpoint} with {len(body)} bytes of {args.content_type} from {args.payload}")
    start = time.perf_counter()
    response = runtime.invoke_endpoint(**request)
    answer = response["Body"].read()
    variant = response.get("InvokedProductionVariant")
    say(
        f"endpoint {args.endpoint} answered in {(time.perf_counter() - start) * 1000:.0f} ms"
        + (f" (variant {variant})" if variant else "")
    )
    return answer


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        if args.v2_model and not args.local:
            raise UsageError("--v2-model applies to --local (SageMaker's Triton takes the body as it is)")
        if args.users is not None or args.pairs is not None:
            payload = kserve_body(args.users, args.pairs)
            args.payload = "--users" if args.users is not None else "--pairs"
        else:
            payload = read_payload(args.payload)
        answer = invoke_local(args, payload) if args.local else invoke_sagemaker(args, payload)
        sys.stdout.buffer.write(answer if answer.endswith(b"\n") else answer + b"\n")
        sys.stdout.flush()

    return run_main("invoke", body)
