"""upload_data.sh and build_and_push.sh against the moto server (tests/support/moto.py): credentials and
region checked first, uploads that skip unchanged files, and pushes to Debian's docker-registry on
loopback through the ECR login (Docker engine).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.moto import ACCOUNT, BUCKET, ok, refused
from tests.support.synthetic import write_ncf_files, write_ratings_csv

# ----------------------------------------------------------------------------------------- credentials


def test_missing_credentials_and_region_are_reported_before_any_call(aws, tmp_path):
    data = write_ratings_csv(tmp_path / "ratings.csv")
    no_creds = {k: v for k, v in aws.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    refused(aws.run("upload_data", str(data), f"s3://{BUCKET}/d", env=no_creds), "no AWS credentials")
    no_region = {k: v for k, v in aws.env.items() if k != "AWS_REGION"}
    refused(aws.run("upload_data", str(data), f"s3://{BUCKET}/d", env=no_region), "no AWS region")
    bad_profile = aws.env | {"AWS_PROFILE": "nope"}
    refused(aws.run("upload_data", str(data), f"s3://{BUCKET}/d", env=bad_profile), "nope")
    assert (
        aws.server.calls("GetCallerIdentity") == [] and aws.s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    )


# ---------------------------------------------------------------------------------------------- upload


def test_upload_ncf_prefix_then_rerun_uploads_only_what_changed(aws, tmp_path):
    prefix = write_ncf_files(tmp_path / "ml" / "toy")
    lines = ok(aws.run("upload_data", str(prefix), f"s3://{BUCKET}/ncf/toy"))
    assert lines == [f"s3://{BUCKET}/ncf/toy/"]
    listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="ncf/toy/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "ncf/toy/toy.test.negative",
        "ncf/toy/toy.test.rating",
        "ncf/toy/toy.train.rating",
    ]
    body = aws.s3.get_object(Bucket=BUCKET, Key="ncf/toy/toy.train.rating")["Body"].read()
    assert body == Path(f"{prefix}.train.rating").read_bytes()

    # The directory form finds the same prefix; nothing changed, so nothing is uploaded.
    proc = aws.run("upload_data", str(prefix.parent), f"s3://{BUCKET}/ncf/toy/")
    ok(proc)
    assert proc.stderr.count("unchanged:") == 3 and "uploading" not in proc.stderr
    assert "warning" not in proc.stderr

    # Anything else under the prefix would reach the training job too: said, not deleted.
    aws.put("ncf/toy/old.train.rating")
    proc = aws.run("upload_data", str(prefix), f"s3://{BUCKET}/ncf/toy")
    ok(proc)
    assert f"warning: s3://{BUCKET}/ncf/toy/ also holds ncf/toy/old.train.rating" in proc.stderr
    aws.s3.delete_object(Bucket=BUCKET, Key="ncf/toy/old.train.rating")

    Path(f"{prefix}.test.rating").write_text("0\t1\t5\t200\n")
    proc = aws.run("upload_data", str(prefix), f"s3://{BUCKET}/ncf/toy")
    ok(proc)
    assert proc.stderr.count("unchanged:") == 2 and proc.stderr.count("uploading") == 1
    assert aws.s3.get_object(Bucket=BUCKET, Key="ncf/toy/toy.test.rating")["Body"].read() == b"0\t1\t5\t200\n"


def test_upload_raw_ratings_file_and_refusals(aws, tmp_path):
    ratings = write_ratings_csv(tmp_path / "ratings.csv")
    assert ok(aws.run("upload_data", str(ratings), f"s3://{BUCKET}/raw")) == [f"s3://{BUCKET}/raw/"]
    assert [o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["raw/ratings.csv"]

    other = shutil.copy(ratings, tmp_path / "mine.csv")
    refused(aws.run("upload_data", str(other), f"s3://{BUCKET}/raw2"), "rename it to one of")
    refused(aws.run("upload_data", str(tmp_path / "nothing"), f"s3://{BUCKET}/x"), "no such file")
    refused(aws.run("upload_data", str(ratings), f"s3://{BUCKET}"), "its own prefix")
    refused(aws.run("upload_data", str(ratings), "bucket/key"), "s3://bucket/prefix")
    refused(aws.run("upload_data", str(ratings), "s3://no-such-bucket/x"), "'no-such-bucket' does not exist")
    assert [o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["raw/ratings.csv"]


# ----------------------------------------------------------------------------- push to a local registry


@pytest.fixture
def local_registry(tmp_path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<ephemeral>; yields HOST:PORT."""
    from tests.support import free_port

    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but docker-registry is not installed (apt-get install docker-registry)")
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {proc.stderr.read().decode()}"
                    ) from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.docker
def test_build_and_push_to_a_registry(aws, local_registry, tmp_path):
    """The same code path as for ECR: repositories created, token login, revision + latest tags pushed."""
    from tests.support.docker_harness import PYTHON_IMAGE, remove_image, require_image

    require_image(PYTHON_IMAGE)
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("ARG BASE_IMAGE=missing\nFROM ${BASE_IMAGE}\nCOPY hello /hello\n")
    (context / "hello").write_text("hello from a throwaway image\n")
    env = aws.env | {"DOCKER_CONFIG": str(tmp_path / "docker-config"), "NCF_REGISTRY": local_registry}
    name = f"ncf-push-test-{os.getpid()}"
    args = [
        "--image",
        f"{name}={context / 'Dockerfile'}",
        "--context",
        str(context),
        "--base-image",
        PYTHON_IMAGE,
    ]
    try:
        # the repositories are the stack's (mlops/infra/template.yaml): missing, refused before any build
        refused(aws.run("build_and_push", *args, "--tag", "t1", env=env), "scripts/infra.sh")
        proc = aws.run("build_and_push", *args, "--tag", "t1", "--create-repositories", env=env)
        assert ok(proc) == [f"{local_registry}/{name}:t1"]
        # ECR side: the repository was created in the account and region
        repos = aws.ecr.describe_repositories()["repositories"]
        assert [r["repositoryName"] for r in repos] == [name]
        # docker logged in to the registry with the ECR token (user AWS, moto's password)
        auth = json.loads((tmp_path / "docker-config" / "config.json").read_text())["auths"][local_registry][
            "auth"
        ]
        assert base64.b64decode(auth).decode() == f"AWS:{ACCOUNT}-auth-token"
        assert "--password-stdin" in proc.stderr and f"{ACCOUNT}-auth-token" not in proc.stderr
        # the registry holds both tags, and they are the same image
        tags = json.load(urllib.request.urlopen(f"http://{local_registry}/v2/{name}/tags/list", timeout=10))
        assert sorted(tags["tags"]) == ["latest", "t1"]
        digests = set()
        for tag in ("t1", "latest"):
            request = urllib.request.Request(
                f"http://{local_registry}/v2/{name}/manifests/{tag}",
                headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                method="HEAD",
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                digests.add(resp.headers["Docker-Content-Digest"])
        assert len(digests) == 1
        # re-running is safe: the repository exists, the tags are pushed again
        proc = aws.run("build_and_push", *args, "--tag", "t1", env=env)
        ok(proc)
        assert f"ECR repository {name} exists" in proc.stderr
    finally:
        for tag in ("local", "t1"):
            remove_image(f"{name}:{tag}")
        for tag in ("t1", "latest"):
            remove_image(f"{local_registry}/{name}:{tag}")
