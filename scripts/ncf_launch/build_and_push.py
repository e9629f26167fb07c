"""scripts/build_and_push.sh: build our images, tag them with the git revision and `latest`, push them to ECR.

    scripts/build_and_push.sh                      CPU images (BASE_IMAGE=debian:bookworm-slim), pushed
    scripts/build_and_push.sh --gpu                GPU images: the build fails unless torch is a CUDA build
    scripts/build_and_push.sh --gpu --torch-index https://download.pytorch.org/whl/cu126   a CUDA 12 torch
    scripts/build_and_push.sh --no-push            local images only: ncf-train:local, ncf-serve:local
    scripts/build_and_push.sh --platform linux/amd64   on an ARM machine (SageMaker instances are x86-64)
    scripts/build_and_push.sh --only serve         one of the two images

CPU by default, as the launchers' default instance types (ml.m5.xlarge to train, ml.m5.large to serve) are
CPU ones; --gpu images go with a GPU instance type (train.sh --instance-type ml.g5.xlarge): a CUDA image
runs on CPU too, only larger. Both build on the same Debian base (the Dockerfiles' default): torch's CUDA
wheels bring their own CUDA runtime and cuDNN, and the driver is the host's (README, "GPU"). --gpu passes
REQUIRE_CUDA=1, so that the image build's check (ncf_sagemaker.cuda_arch) fails on a CPU build of torch (a
wheelhouse from scripts/wheelhouse.sh holds one) and on a CUDA build without kernels for a GPU family we
claim. torch comes from PyTorch's CPU index for CPU images (--torch-index, TORCH_INDEX_URL), from PyPI (its
CUDA 13.0 build, which needs an NVIDIA driver >= 580) for --gpu; --torch-index picks another build, e.g. a
CUDA 12 one for the 535/550 drivers AWS documents for SageMaker GPU instances (README, "GPU").

Build context: the repository root. Local tags: NAME:local and NAME:REVISION. Pushed: REGISTRY/NAME:REVISION
and REGISTRY/NAME:latest, where REGISTRY is this account's ECR registry in the region. The ECR repositories
are the stack's (mlops/infra/template.yaml, scripts/infra.sh): a missing one is an error, unless
--create-repositories (for an account without the stack). Docker logs in with an ECR authorization token (what
`aws ecr get-login-password` prints), passed on stdin. --registry HOST[:PORT] pushes to another registry
instead (the tests use a local one). Without --tag, the revision is the commit id, plus -dirty when tracked
files differ from it.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

from .aws_client import (
    LOCAL_TAG,
    REPO_ROOT,
    SERVE_REPOSITORY,
    TRAIN_REPOSITORY,
    UsageError,
    connect,
    error_code,
    result,
    run,
    run_main,
    say,
    show,
)

# CPU base: Debian bookworm, whose python3 is the 3.11 of the project and of its wheelhouse
# (scripts/wheelhouse.sh), and the distribution of CI's stand-in base (ncf-python:bookworm).
CPU_BASE_IMAGE = "debian:bookworm-slim"
# PyTorch's own index of CPU builds: `torch==2.13.0` resolves there to 2.13.0+cpu (a local version sorts
# above PyPI's 2.13.0, the CUDA 13.0 build), 0.75 GB installed against 4.7 GB with the nvidia-* wheels.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
IMAGES = {
    "train": (TRAIN_REPOSITORY, "containers/train/Dockerfile"),
    "serve": (SERVE_REPOSITORY, "containers/serve/Dockerfile"),
}
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_and_push.sh",
        description="Build the training and serving images and push them to Amazon ECR.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    base = p.add_mutually_exclusive_group()
    base.add_argument(
        "--gpu",
        action="store_true",
        help="GPU images: the Dockerfiles' default base, and a CUDA build of torch required (REQUIRE_CUDA=1)",
    )
    base.add_argument(
        "--cpu", action="store_true", help=f"CPU base image: --base-image {CPU_BASE_IMAGE} (default)"
    )
    base.add_argument(
        "--base-image", metavar="IMAGE", help="any base image (must exist locally or be pullable)"
    )
    p.add_argument(
        "--torch-index",
        metavar="URL",
        default=None,
        help=f"an extra package index for torch (default: {TORCH_CPU_INDEX} for CPU images, whose torch "
        "is then the CPU build, ~4 GB smaller; none for --gpu: PyPI's CUDA 13.0 build; e.g. "
        "https://download.pytorch.org/whl/cu126 for a CUDA 12 build; '' for PyPI only). A wheelhouse "
        "(scripts/wheelhouse.sh) in the build context overrides it: the build is then offline",
    )
    p.add_argument("--only", choices=sorted(IMAGES), help="build (and push) one image only")
    p.add_argument("--tag", help="version tag instead of the git revision (e.g. v1.2.0)")
    p.add_argument("--no-push", action="store_true", help="build and tag locally; no AWS calls")
    p.add_argument(
        "--platform",
        metavar="OS/ARCH",
        help="docker build --platform (linux/amd64 on an ARM machine: SageMaker runs x86-64 instances)",
    )
    p.add_argument(
        "--create-repositories",
        action="store_true",
        help="create missing ECR repositories (default: they are the stack's, scripts/infra.sh)",
    )
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    p.add_argument(
        "--registry",
        metavar="HOST[:PORT]",
        default=os.environ.get("NCF_REGISTRY"),
        help="push here instead of the ECR registry (env NCF_REGISTRY); ECR repositories are still checked",
    )
    p.add_argument(
        "--image",
        action="append",
        metavar="NAME=DOCKERFILE",
        help="build these instead of ncf-train and ncf-serve (repeatable; a test seam for throwaway images)",
    )
    p.add_argument(
        "--context", type=Path, default=REPO_ROOT, help="docker build context (default: repo root)"
    )
    return p


def git_revision() -> str:
    """Short commit id of HEAD, with -dirty when tracked files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--"]).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        raise UsageError(f"{REPO_ROOT} is not a git checkout with a commit: pass --tag") from None
    return f"{rev}-dirty" if dirty else rev


def images_to_build(args: argparse.Namespace) -> list[tuple[str, Path]]:
    if args.image:
        if args.only:
            raise UsageError("--only and --image exclude each other")
        images = []
        for spec in args.image:
            name, sep, dockerfile = spec.partition("=")
            if not sep or not _REPOSITORY.match(name):
                raise UsageError(f"--image {spec!r} is not NAME=DOCKERFILE with a lower-case repository name")
            images.append((name, Path(dockerfile).resolve()))
    else:
        chosen = [args.only] if args.only else sorted(IMAGES, reverse=True)  # train, then serve
        images = [(IMAGES[k][0], REPO_ROOT / IMAGES[k][1]) for k in chosen]
    for _, dockerfile in images:
        if not dockerfile.is_file():
            raise UsageError(f"{dockerfile} not found")
    return images


def docker_env() -> dict[str, str]:
    """Without the buildx plugin (Debian's docker.io), `docker build` needs the legacy builder."""
    env = dict(os.environ)
    if "DOCKER_BUILDKIT" not in env:
        has_buildx = subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0
        if not has_buildx:
            say("no docker buildx plugin: using the legacy builder (DOCKER_BUILDKIT=0)")
            env["DOCKER_BUILDKIT"] = "0"
    return env


def check_docker() -> None:
    if shutil.which("docker") is None:
        raise UsageError("no `docker` command on PATH: install Docker")
    proc = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        raise UsageError(f"no Docker engine answers ({reason}): start Docker and re-run")


def ensure_repository(ecr, name: str, create: bool = False) -> str:
    """The repository's URI; a missing one is created with ``create``, else refused."""
    from botocore.exceptions import ClientError

    try:
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        say(f"ECR repository {name} exists")
    except ClientError as exc:
        if error_code(exc) != "RepositoryNotFoundException":
            raise
        if not create:
            raise UsageError(
                f"no ECR repository {name!r}: the stack of mlops/infra/template.yaml creates it (run "
                '`eval "$(scripts/infra.sh)"`), or pass --create-repositories'
            ) from None
        say(f"creating ECR repository {name}")
        repo = ecr.create_repository(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}, imageTagMutability="MUTABLE"
        )["repository"]
    return repo["repositoryUri"]


def docker_login(ecr, registry: str, env: dict[str, str]) -> None:
    """`aws ecr get-login-password | docker login --username AWS --password-stdin REGISTRY`, in boto3."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    cmd = ["docker", "login", "--username", user, "--password-stdin", registry]
    show(cmd)
    subprocess.run(cmd, input=password, text=True, check=True, env=env, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        images = images_to_build(args)
        torch_index = args.torch_index
        if torch_index is None:
            torch_index = "" if args.gpu else TORCH_CPU_INDEX
        if torch_index and not torch_index.startswith(("https://", "http://")):
            raise UsageError(f"--torch-index {torch_index!r} is not a URL (e.g. {TORCH_CPU_INDEX})")
        tag = args.tag or git_revision()
        if not _TAG.match(tag) or tag in ("latest", LOCAL_TAG):
            raise UsageError(f"tag {tag!r} is not a usable version tag")
        if not args.context.is_dir():
            raise UsageError(f"build context {args.context} is not a directory")
        check_docker()
        aws = None if args.no_push else connect(args.region)  # credentials checked before a long build
        if aws is not None:  # and the repositories
            for name, _ in images:
                ensure_repository(aws.client("ecr"), name, args.create_repositories)
        env = docker_env()
        base_image = None if args.gpu else args.base_image or CPU_BASE_IMAGE
        say(f"base image: {base_image or 'the default of the Dockerfile'}; tag {tag}")
        if args.gpu:
            say("GPU images: the build fails unless torch is a CUDA build with kernels for our GPU families")
        say(f"torch from: {torch_index or 'PyPI'} (a wheelhouse in the context overrides it)")

        for name, dockerfile in images:
            cmd = [
                "docker",
                "build",
                "--file",
                dockerfile,
                "--tag",
                f"{name}:{LOCAL_TAG}",
                "--tag",
                f"{name}:{tag}",
            ]
            if base_image:
                cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
            if args.gpu:
                cmd += ["--build-arg", "REQUIRE_CUDA=1"]
            if torch_index:
                cmd += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
            if args.platform:
                cmd += ["--platform", args.platform]
            run([*cmd, args.context.resolve()], env=env)
            say(f"built {name}:{LOCAL_TAG} and {name}:{tag}")
        if aws is None:
            for name, _ in images:
                result(f"{name}:{tag}")
            return

        ecr = aws.client("ecr")
        logged_in: set[str] = set()
        for name, _ in images:
            uri = ensure_repository(ecr, name)
            registry = args.registry or uri.split("/", 1)[0]
            if registry not in logged_in:
                docker_login(ecr, registry, env)
                logged_in.add(registry)
            for remote_tag in (tag, "latest"):
                remote = f"{registry}/{name}:{remote_tag}"
                run(["docker", "tag", f"{name}:{tag}", remote], env=env)
                run(["docker", "push", remote], env=env)
            result(f"{registry}/{name}:{tag}")
        say("pushed; pass the revision-tagged URIs above to train.sh / deploy.sh --image (or use :latest)")

    return run_main("build_and_push", body)
