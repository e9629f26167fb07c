"""scripts/train.sh: start a SageMaker training job with our training image, or run the same job here.

    scripts/train.sh --job-name ncf-ml1m --train s3://BUCKET/ncf/ml-1m/ --output s3://BUCKET/ncf/output \\
        --role-arn arn:aws:iam::123456789012:role/SageMakerRole --hp model=neumf --hp epochs=20 --wait
    scripts/train.sh ... --spot --max-wait 7200            managed spot; checkpoints in S3, resumed
    scripts/train.sh ... --instance-count 2                distributed data-parallel over two instances
    scripts/train.sh --local --train data/ml-1m --hp epochs=1   the same job in Docker on this machine
    scripts/train.sh ... --env MLFLOW_TRACKING_URI=https://mlflow.example.com   the job's environment

Hyperparameters are sent as strings, exactly as given (--hp epochs=20 -> "20"); what the image would refuse
(an unknown name, a bad value, --gmf and --mlp with a model other than neumf: ncf_core.config, which the
image parses with) is refused here, with the image's message, before a job is created. The metric
definitions come from scripts/metric_definitions.json. --image defaults to ncf-train:latest in this
account's ECR (checked to exist); the role defaults to $SAGEMAKER_ROLE_ARN. --wait polls the job until it
ends, printing each status change, and on failure prints the job's FailureReason (exit 1).

--local builds the /opt/ml tree SageMaker would create (input/config/*.json, input/data/CHANNEL, model,
output, checkpoints) under --local-dir, and runs `docker run IMAGE train` on it with the same mounts
(channels read-only, host name algo-1). Channels may be local paths or S3 URIs (downloaded first). The model
directory is also packed as output/model.tar.gz, as SageMaker does.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from ncf_core import config as schema
from ncf_core.errors import ConfigError
from ncf_core.jsonio import write_json
from ncf_sagemaker.contract import TRAINING_CHANNELS

from .aws_client import (
    LOCAL_TAG,
    TRAIN_INSTANCE_TYPE,
    TRAIN_REPOSITORY,
    Aws,
    Failure,
    UsageError,
    check_bucket,
    check_ecr_image,
    check_name,
    check_role_arn,
    connect,
    default_image,
    describe_or_none,
    key_values,
    load_metric_definitions,
    parse_s3_uri,
    require_objects,
    result,
    role_arn_option,
    run,
    run_main,
    say,
    show_request,
    stamp,
)

CHANNELS = TRAINING_CHANNELS  # each has its flag: --train, --test, --gmf, --mlp
LOCAL_INSTANCE_TYPES = ("local", "local_gpu")
POLL_SECONDS = 30


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.sh",
        description="Start a SageMaker training job with the ncf-train image (or run it locally in Docker).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--train", required=True, metavar="URI", help="train channel: s3://... (or a local path with --local)"
    )
    p.add_argument("--test", metavar="URI", help="optional test channel (default: split from train)")
    p.add_argument(
        "--gmf",
        metavar="URI",
        help="pre-training: a GMF job's model.tar.gz (with --mlp) to initialise a NeuMF, as in the paper",
    )
    p.add_argument("--mlp", metavar="URI", help="pre-training: an MLP job's model.tar.gz (with --gmf)")
    p.add_argument("--job-name", help="training job name (default: ncf-train-TIMESTAMP)")
    p.add_argument(
        "--hp", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter (repeatable)"
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable of the job (repeatable), e.g. MLFLOW_TRACKING_URI=...",
    )
    p.add_argument(
        "--image", help="training image URI (default: ncf-train:latest in ECR; ncf-train:local with --local)"
    )
    role_arn_option(p)
    p.add_argument("--output", metavar="S3_URI", help="where SageMaker writes model.tar.gz and output data")
    p.add_argument("--instance-type", help=f"default {TRAIN_INSTANCE_TYPE} (local or local_gpu with --local)")
    p.add_argument(
        "--instance-count", type=int, default=1, help="more than 1: distributed data-parallel training"
    )
    p.add_argument("--volume-gb", type=int, default=30, help="EBS volume per instance (default 30)")
    p.add_argument(
        "--max-run", type=int, default=24 * 3600, metavar="SECONDS", help="max runtime (default 1 day)"
    )
    p.add_argument("--input-mode", choices=("File", "FastFile"), default="File", help="channel input mode")
    p.add_argument("--spot", action="store_true", help="managed spot training (checkpoints go to S3)")
    p.add_argument(
        "--max-wait", type=int, metavar="SECONDS", help="spot: max run + waiting time (default 2 x max-run)"
    )
    p.add_argument(
        "--checkpoint-s3",
        metavar="URI",
        help="checkpoint sync for /opt/ml/checkpoints (default with --spot: OUTPUT/JOB/checkpoints)",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the job to end; exit 1 if it did not complete"
    )
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    p.add_argument("--local", action="store_true", help="run the job here in Docker instead of on SageMaker")
    p.add_argument(
        "--local-dir", type=Path, help="--local: the /opt/ml tree (default: $TMPDIR/ncf-local/JOB)"
    )
    return p


def job_environment(args: argparse.Namespace) -> dict[str, str]:
    """--env NAME=VALUE pairs, checked: SageMaker's Environment of the job (docker run --env with --local)."""
    env = key_values(args.env, "--env")
    for name, value in env.items():
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]{0,511}", name):
            raise UsageError(f"--env {name!r} is not an environment variable name")
        if len(value) > 512:
            raise UsageError(f"--env {name}: SageMaker takes values of at most 512 characters")
    if len(env) > 100:
        raise UsageError("--env: SageMaker takes at most 100 environment variables")
    return env


def check_hyperparameters(hp: dict[str, str], pretrained: bool = False) -> None:
    """Refuse what the image would refuse, with its message: it parses with the same function. With
    ``pretrained`` (--gmf and --mlp) the model must be a NeuMF, as the image's pre-training checks."""
    try:
        settings = schema.parse_hyperparameters(hp)
        if pretrained:
            schema.check_pretraining(settings.config.model)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--instance-count", args.instance_count, 1),
        ("--volume-gb", args.volume_gb, 1),
        ("--max-run", args.max_run, 1),
    ):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if bool(args.gmf) != bool(args.mlp):
        raise UsageError("pre-training needs both --gmf and --mlp (each an earlier job's model.tar.gz)")
    if args.max_wait is not None and not args.spot:
        raise UsageError("--max-wait only applies with --spot")
    if args.spot and args.max_wait is not None and args.max_wait < args.max_run:
        raise UsageError(f"--max-wait ({args.max_wait}) must be at least --max-run ({args.max_run})")


# ------------------------------------------------------------------------------------------------ SageMaker


def channel(name: str, uri: str) -> dict:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                # every host reads all the data; each rank samples its own negatives
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }


def training_request(args: argparse.Namespace, job: str, image: str, hp: dict[str, str]) -> dict:
    output = args.output.rstrip("/")
    stopping = {"MaxRuntimeInSeconds": args.max_run}
    if args.spot:
        stopping["MaxWaitTimeInSeconds"] = args.max_wait or 2 * args.max_run
    request = {
        "TrainingJobName": job,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": args.input_mode,
            "MetricDefinitions": load_metric_definitions(),
        },
        "RoleArn": args.role_arn,
        "InputDataConfig": [channel(name, getattr(args, name)) for name in CHANNELS if getattr(args, name)],
        "OutputDataConfig": {"S3OutputPath": output},
        "ResourceConfig": {
            "InstanceType": args.instance_type or TRAIN_INSTANCE_TYPE,
            "InstanceCount": args.instance_count,
            "VolumeSizeInGB": args.volume_gb,
        },
        "StoppingCondition": stopping,
        "HyperParameters": hp,
        "EnableManagedSpotTraining": args.spot,
    }
    if job_environment(args):
        request["Environment"] = job_environment(args)
    checkpoint = args.checkpoint_s3 or (f"{output}/{job}/checkpoints" if args.spot else None)
    if checkpoint:
        request["CheckpointConfig"] = {"S3Uri": checkpoint}
    return request


def job_exists(sm, job: str) -> str | None:
    """The job's status, or None when no job has that name."""
    desc = describe_or_none(sm.describe_training_job, TrainingJobName=job)
    return None if desc is None else desc["TrainingJobStatus"]


def wait_for_job(sm, job: str, poll: float = POLL_SECONDS) -> dict:
    """Poll until the job ends; print each status change; raise Failure unless it completed."""
    seen = None
    while True:
        desc = sm.describe_training_job(TrainingJobName=job)
        status, secondary = desc["TrainingJobStatus"], desc.get("SecondaryStatus", "")
        if (status, secondary) != seen:
            transitions = desc.get("SecondaryStatusTransitions") or [{}]
            message = transitions[-1].get("StatusMessage", "")
            say(f"{job}: {status} / {secondary}" + (f" - {message}" if message else ""))
            seen = (status, secondary)
        if status == "Completed":
            return desc
        if status in ("Failed", "Stopped"):
            reason = desc.get("FailureReason") or "no FailureReason given"
            raise Failure(f"training job {job} {status.lower()}: {reason}")
        time.sleep(poll)


def run_remote(args: argparse.Namespace, job: str, hp: dict[str, str]) -> None:
    check_role_arn(args.role_arn)
    if not args.output:
        raise UsageError("no --output: the S3 prefix where SageMaker writes the model (s3://BUCKET/PREFIX)")
    if args.instance_type in LOCAL_INSTANCE_TYPES:
        raise UsageError(f"--instance-type {args.instance_type} needs --local")
    out_bucket, _ = parse_s3_uri(args.output, "--output")
    for name in CHANNELS:
        if getattr(args, name):
            parse_s3_uri(getattr(args, name), f"--{name}")
    if args.checkpoint_s3:
        parse_s3_uri(args.checkpoint_s3, "--checkpoint-s3")

    aws = connect(args.region)
    image = args.image or default_image(aws, TRAIN_REPOSITORY)
    if args.image:
        check_ecr_image(aws, image)
    for name in CHANNELS:
        if getattr(args, name):
            require_objects(aws, getattr(args, name), f"channel {name}")
    check_bucket(aws, out_bucket)
    sm = aws.client("sagemaker")
    status = job_exists(sm, job)
    if status is not None:
        raise UsageError(f"a training job named {job} already exists ({status}): pick another --job-name")

    request = training_request(args, job, image, hp)
    show_request("CreateTrainingJob", request)
    sm.create_training_job(**request)
    say(f"started training job {job}: {console_url(aws, job)}")
    result(job)
    if args.wait:
        desc = wait_for_job(sm, job)
        billable = desc.get("BillableTimeInSeconds")
        if billable is not None:
            say(f"billable time {billable} s (training {desc.get('TrainingTimeInSeconds', '?')} s)")
        result(desc["ModelArtifacts"]["S3ModelArtifacts"])
    else:
        say(f"not waiting; follow it with: aws sagemaker describe-training-job --training-job-name {job}")


def console_url(aws: Aws, job: str) -> str:
    return f"https://{aws.region}.console.aws.amazon.com/sagemaker/home?region={aws.region}#/jobs/{job}"


# ---------------------------------------------------------------------------------------------------- local


def stage_channel(source: str, target: Path, aws_for_s3) -> Path:
    """Make `source` (local path or S3 URI) a channel directory; return the host directory to mount."""
    if source.startswith("s3://"):
        bucket, prefix = parse_s3_uri(source, "channel")
        aws = aws_for_s3()
        s3 = aws.client("s3")
        target.mkdir(parents=True)
        count = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue
                relative = obj["Key"][len(prefix) :].lstrip("/") or Path(obj["Key"]).name
                local = (target / relative).resolve()
                if not local.is_relative_to(target.resolve()):
                    raise UsageError(f"S3 key {obj['Key']!r} would land outside the channel directory")
                local.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(local))
                count += 1
        if not count:
            raise UsageError(f"channel {source} holds no objects")
        say(f"downloaded {count} object(s) from {source} to {target}")
        return target
    path = Path(source)
    if path.is_dir():
        return path.resolve()  # mounted as it is, read-only
    if path.is_file() and path.name.endswith(".tar.gz"):  # an earlier job's model.tar.gz
        target.mkdir(parents=True)
        shutil.copy2(path, target / path.name)
        return target
    from .upload_data import dataset_files  # same rules as for an upload

    target.mkdir(parents=True)
    for f in dataset_files(source):
        try:
            os.link(f, target / f.name)
        except OSError:
            shutil.copy2(f, target / f.name)
    return target


def run_local(args: argparse.Namespace, job: str, hp: dict[str, str]) -> None:
    from .build_and_push import check_docker

    instance_type = args.instance_type or "local"
    if instance_type not in LOCAL_INSTANCE_TYPES:
        raise UsageError(f"--local runs on instance type local or local_gpu, not {instance_type}")
    if args.instance_count != 1:
        raise UsageError("--local runs one instance; distributed runs need SageMaker (or docker-compose)")
    if args.spot:
        raise UsageError("--spot needs SageMaker, not --local")
    for name in CHANNELS:
        source = getattr(args, name)
        local_path = source and not source.startswith("s3://")
        if local_path and not Path(source).exists() and not Path(source + ".train.rating").is_file():
            raise UsageError(f"--{name} {source}: no such file, directory or NCF prefix")
    check_docker()
    image = args.image or f"{TRAIN_REPOSITORY}:{LOCAL_TAG}"
    if run(["docker", "image", "inspect", image], stdout=subprocess.DEVNULL, check=False).returncode != 0:
        raise UsageError(f"no local image {image}: build it with scripts/build_and_push.sh --cpu --no-push")

    tree = (args.local_dir or Path(tempfile.gettempdir()) / "ncf-local" / job).resolve()
    if tree.exists() and any(tree.iterdir()):
        raise UsageError(f"{tree} is not empty: pass another --local-dir (or remove it)")
    config = tree / "input" / "config"
    for d in (config, tree / "model", tree / "output" / "data", tree / "checkpoints"):
        d.mkdir(parents=True, exist_ok=True)

    aws_cache: list[Aws] = []

    def aws_for_s3() -> Aws:
        if not aws_cache:
            aws_cache.append(connect(args.region))
        return aws_cache[0]

    mounts = [f"{config}:/opt/ml/input/config:ro"]
    data_config = {}
    for name in CHANNELS:
        if getattr(args, name):
            host_dir = stage_channel(getattr(args, name), tree / "input" / "data" / name, aws_for_s3)
            mounts.append(f"{host_dir}:/opt/ml/input/data/{name}:ro")
            data_config[name] = {
                "TrainingInputMode": args.input_mode,
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None",
            }
    for sub in ("model", "output", "checkpoints"):
        mounts.append(f"{tree / sub}:/opt/ml/{sub}")
    host = "algo-1"
    write_json(config / "hyperparameters.json", hp)
    write_json(config / "inputdataconfig.json", data_config)
    write_json(
        config / "resourceconfig.json",
        {
            "current_host": host,
            "current_instance_type": instance_type,
            "current_group_name": "homogeneousCluster",
            "hosts": [host],
            "instance_groups": [
                {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": [host]}
            ],
            "network_interface_name": "eth0",
        },
    )
    say(f"local SageMaker tree: {tree}")

    cmd = ["docker", "run", "--rm", "--name", f"{job}-{host}", "--hostname", host, "--shm-size", "1g"]
    cmd += ["--env", f"TRAINING_JOB_NAME={job}"]
    for name, value in job_environment(args).items():
        cmd += ["--env", f"{name}={value}"]
    if instance_type == "local_gpu":
        cmd += ["--gpus", "all"]
    for mount in mounts:
        cmd += ["--volume", mount]
    proc = run([*cmd, image, "train"], check=False)
    if proc.returncode != 0:
        failure = tree / "output" / "failure"
        reason = (
            failure.read_text(errors="replace")[:1024].strip() if failure.is_file() else "no output/failure"
        )
        raise Failure(f"local training job {job} exited {proc.returncode}: {reason}")
    with tarfile.open(tree / "output" / "model.tar.gz", "w:gz") as tar:
        for item in sorted((tree / "model").iterdir()):
            tar.add(item, arcname=item.name)
    say(f"local training job {job} completed; model packed as {tree / 'output' / 'model.tar.gz'}")
    result(job)
    result(str(tree / "model"))


# ----------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        hp = key_values(args.hp, "--hp")
        job_environment(args)
        check_hyperparameters(hp, pretrained=bool(args.gmf and args.mlp))
        check_numbers(args)
        job = check_name(args.job_name or f"ncf-train-{stamp()}", "--job-name")
        if args.local:
            run_local(args, job, hp)
        else:
            run_remote(args, job, hp)

    return run_main("train", body)
