"""train.sh against the moto server (tests/support/moto.py): the CreateTrainingJob request and the job read
back, refusals before anything is created, pre-trained channels, --wait; and train.sh --local with a
stand-in training image on the Docker engine.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator

import pytest

from tests.support.moto import BUCKET, FAILURES, REGISTRY, ROLE, SCRIPTS, ok, refused
from tests.support.synthetic import write_ncf_files

# ----------------------------------------------------------------------------------------------- train


def test_train_creates_the_job_sagemaker_would_run(aws, tmp_path):
    """Every setting of a distributed spot job with both channels, read back from the server."""
    train_uri = aws.put("ncf/ml/toy.train.rating")
    test_uri = aws.put("ncf/ml-test/toy.test.rating")
    image = aws.push_fake_image("ncf-train")
    hp = {
        "model": "neumf", "epochs": "20", "lr": "0.001", "batch_size": "256", "factor_num": "32",
        "num_layers": "3", "num_ng": "4", "dropout": "0.0", "top_k": "10", "test_num_ng": "99",
        "seed": "7", "weight_decay": "1e-6", "patience": "3", "device": "cuda",
    }  # fmt: skip
    proc = aws.run(
        "train",
        "--job-name", "ncf-ml-spot",
        "--train", train_uri.rsplit("/", 1)[0] + "/",
        "--test", test_uri.rsplit("/", 1)[0] + "/",
        "--output", f"s3://{BUCKET}/ncf/output/",
        *[a for k, v in hp.items() for a in ("--hp", f"{k}={v}")],
        "--instance-type", "ml.g4dn.xlarge",
        "--instance-count", "2",
        "--volume-gb", "50",
        "--max-run", "3600",
        "--input-mode", "FastFile",
        "--spot",
        "--max-wait", "7200",
        "--wait",
    )  # fmt: skip
    lines = ok(proc)
    assert lines == ["ncf-ml-spot", f"s3://{BUCKET}/ncf/output/ncf-ml-spot/output/model.tar.gz"]
    assert "Completed" in proc.stderr

    job = aws.sm.describe_training_job(TrainingJobName="ncf-ml-spot")
    assert job["AlgorithmSpecification"]["TrainingImage"] == image  # the default: ncf-train:latest in ECR
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert job["RoleArn"] == ROLE
    assert job["HyperParameters"] == hp  # strings, exactly as given
    assert all(isinstance(v, str) for v in job["HyperParameters"].values())
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in job["InputDataConfig"]}
    prefix = {"S3DataType": "S3Prefix", "S3DataDistributionType": "FullyReplicated"}
    assert channels == {
        "train": prefix | {"S3Uri": f"s3://{BUCKET}/ncf/ml/"},
        "test": prefix | {"S3Uri": f"s3://{BUCKET}/ncf/ml-test/"},
    }
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/ncf/output"
    assert job["ResourceConfig"] == {
        "InstanceType": "ml.g4dn.xlarge",
        "InstanceCount": 2,
        "VolumeSizeInGB": 50,
    }
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["EnableManagedSpotTraining"] is True
    assert job["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/ncf/output/ncf-ml-spot/checkpoints"
    # moto replaces MetricDefinitions with its own: check what the script sent.
    (request,) = aws.server.calls("CreateTrainingJob")
    expected = json.loads((SCRIPTS / "metric_definitions.json").read_text())["MetricDefinitions"]
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == expected


def test_train_defaults_single_on_demand_instance(aws):
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    image = aws.push_fake_image("ncf-train", "abc123")
    lines = ok(aws.run("train", "--train", train_uri, "--output", f"s3://{BUCKET}/out", "--image", image))
    (job_name,) = lines
    assert re.fullmatch(r"ncf-train-\d{8}-\d{6}-\d{3}", job_name)
    job = aws.sm.describe_training_job(TrainingJobName=job_name)
    assert job["AlgorithmSpecification"]["TrainingImage"] == image
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert [c["ChannelName"] for c in job["InputDataConfig"]] == ["train"]
    assert job["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert job["EnableManagedSpotTraining"] is False
    assert "CheckpointConfig" not in aws.server.calls("CreateTrainingJob")[0]
    assert job["HyperParameters"] == {}


PRETRAINED = f"s3://{BUCKET}/ncf/ml/ratings.csv"  # stands for a model.tar.gz: refused before it is read


@pytest.mark.parametrize(
    ("args", "env_change", "message"),
    [
        (["--hp", "log_interval=500"], {}, "unknown hyperparameter(s) log_interval"),
        (["--hp", "factor=0"], {}, "factor must be ≥ 1, got 0"),
        (["--hp", "lr=abc"], {}, "hyperparameter lr='abc' is not a number"),
        (
            ["--gmf", PRETRAINED, "--mlp", PRETRAINED, "--hp", "model=gmf"],
            {},
            "pre-trained gmf and mlp models initialise a NeuMF model, but model=gmf",
        ),
        (["--hp", "epochs"], {}, "is not KEY=VALUE"),
        ([], {"SAGEMAKER_ROLE_ARN": ""}, "no IAM role"),
        (["--role-arn", "SageMakerRole"], {}, "is not an IAM role ARN"),
        (["--train", f"s3://{BUCKET}/empty/"], {}, "holds no objects"),
        (["--output", "s3://no-such-bucket/out"], {}, "'no-such-bucket' does not exist"),
        (["--image", f"{REGISTRY}/ncf-train:nope"], {}, "is not in ECR"),
        (["--image", f"{REGISTRY}/ncf-other:latest"], {}, "no ECR repository 'ncf-other'"),
        (["--spot", "--max-wait", "60"], {}, "--max-wait (60) must be at least --max-run"),
        (["--max-wait", "7200"], {}, "--max-wait only applies with --spot"),
        (["--job-name", "ncf_bad_name"], {}, "not a valid SageMaker name"),
        (["--instance-type", "local"], {}, "needs --local"),
        (["--gmf", f"s3://{BUCKET}/ncf/ml/ratings.csv"], {}, "needs both --gmf and --mlp"),
    ],
)
def test_train_refuses_before_creating_anything(aws, args, env_change, message):
    aws.push_fake_image("ncf-train")
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    base = ["--train", train_uri, "--output", f"s3://{BUCKET}/out", "--job-name", "ncf-ok"]
    env = {k: v for k, v in (aws.env | env_change).items() if v != ""}
    refused(aws.run("train", *base, *args, env=env), message)
    assert aws.server.calls("CreateTrainingJob") == []


def test_train_passes_pretrained_models_as_gmf_and_mlp_channels(aws):
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    gmf = aws.put("ncf/output/gmf-job/output/model.tar.gz")
    mlp = aws.put("ncf/output/mlp-job/output/model.tar.gz")
    aws.push_fake_image("ncf-train")
    args = ["--train", train_uri, "--gmf", gmf, "--mlp", mlp, "--output", f"s3://{BUCKET}/out"]
    (job_name,) = ok(aws.run("train", *args, "--hp", "pretrain_alpha=auto"))
    job = aws.sm.describe_training_job(TrainingJobName=job_name)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {"train": train_uri, "gmf": gmf, "mlp": mlp}
    assert job["HyperParameters"] == {"pretrain_alpha": "auto"}


def test_train_refuses_an_existing_job_name(aws):
    aws.push_fake_image("ncf-train")
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    args = ["--job-name", "ncf-once", "--train", train_uri, "--output", f"s3://{BUCKET}/out"]
    ok(aws.run("train", *args))
    refused(aws.run("train", *args), "a training job named ncf-once already exists (Completed)")
    assert len(aws.server.calls("CreateTrainingJob")) == 1


def test_train_wait_reports_the_failure_reason(aws):
    aws.push_fake_image("ncf-train")
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    FAILURES["ncf-doomed"] = "AlgorithmError: hyperparameter lr='abc' is not a number"
    proc = aws.run(
        "train", "--job-name", "ncf-doomed", "--train", train_uri, "--output", f"s3://{BUCKET}/o", "--wait"
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == ["ncf-doomed"]
    assert (
        "training job ncf-doomed failed: AlgorithmError: hyperparameter lr='abc' is not a number"
        in proc.stderr
    )


# ------------------------------------------------------------------------------- train.sh --local (Docker)

# A stand-in training image: its `train` records what it finds under /opt/ml, the way our image reads it,
# and fails like our image does (output/failure, exit 1) when epochs is "13" (a value train.sh accepts).
FAKE_TRAIN = r"""#!/usr/bin/env python3
import json, os, pathlib, socket, sys
ml = pathlib.Path("/opt/ml")
config = {n: json.loads((ml / "input/config" / f"{n}.json").read_text())
          for n in ("hyperparameters", "resourceconfig", "inputdataconfig")}
if config["hyperparameters"].get("epochs") == "13":
    (ml / "output/failure").write_text("CUDA error: out of memory")
    sys.exit(1)
channels = {c: sorted(p.name for p in (ml / "input/data" / c).iterdir()) for c in config["inputdataconfig"]}
try:
    (ml / "input/data/train/new").write_text("x")
    writable = True
except OSError:
    writable = False
print("epoch=1; loss=0.5; train_s=0.1; eval_s=0.1; val_hr=0.5; val_ndcg=0.3; hr=0.4; ndcg=0.2;", flush=True)
(ml / "checkpoints/checkpoint.pt").write_text("ckpt")
(ml / "output/data/metrics.json").write_text("{}")
(ml / "model/seen.json").write_text(json.dumps({
    "config": config, "channels": channels, "channel_writable": writable, "host": socket.gethostname(),
    "job": os.environ.get("TRAINING_JOB_NAME"), "argv": sys.argv[1:],
}))
"""


@pytest.fixture(scope="module")
def fake_train_image(tmp_path_factory) -> Iterator[str]:
    from tests.support.docker_harness import PYTHON_IMAGE, build_image, remove_image, require_image

    require_image(PYTHON_IMAGE)
    context = tmp_path_factory.mktemp("fake-train")
    (context / "train").write_text(FAKE_TRAIN)
    (context / "Dockerfile").write_text(
        f"FROM {PYTHON_IMAGE}\nCOPY train /usr/local/bin/train\n"
        'RUN chmod +x /usr/local/bin/train\nCMD ["train"]\n'
    )
    tag = build_image(context / "Dockerfile", f"ncf-fake-train:{os.getpid()}", context)
    yield tag
    remove_image(tag)


@pytest.mark.docker
def test_train_local_builds_sagemakers_tree_and_runs_the_image(aws, fake_train_image, tmp_path):
    """Channels from S3 (downloaded) and from a local NCF prefix, read-only; config files; model packed."""
    aws.put("ncf/ml/ratings.csv", b"user_id,item_id\n1,2\n")
    prefix = write_ncf_files(tmp_path / "data" / "toy")
    tree = tmp_path / "tree"
    proc = aws.run(
        "train", "--local", "--job-name", "ncf-local-1", "--image", fake_train_image,
        "--local-dir", str(tree), "--train", f"s3://{BUCKET}/ncf/ml/", "--test", str(prefix),
        "--hp", "epochs=2", "--hp", "model=gmf",
    )  # fmt: skip
    assert ok(proc) == ["ncf-local-1", str(tree / "model")]
    assert "epoch=1; loss=0.5;" in proc.stderr  # the container's log, shown to the user
    seen = json.loads((tree / "model" / "seen.json").read_text())
    assert seen["config"]["hyperparameters"] == {"epochs": "2", "model": "gmf"}
    assert seen["config"]["resourceconfig"]["current_host"] == "algo-1" == seen["host"]
    assert seen["config"]["resourceconfig"]["hosts"] == ["algo-1"]
    assert set(seen["config"]["inputdataconfig"]) == {"train", "test"}
    assert seen["config"]["inputdataconfig"]["train"]["TrainingInputMode"] == "File"
    assert seen["channels"] == {
        "train": ["ratings.csv"],
        "test": ["toy.test.negative", "toy.test.rating", "toy.train.rating"],
    }
    assert seen["channel_writable"] is False
    assert seen["job"] == "ncf-local-1" and seen["argv"] == []
    assert (tree / "checkpoints" / "checkpoint.pt").read_text() == "ckpt"
    assert (tree / "output" / "data" / "metrics.json").is_file()
    with tarfile.open(tree / "output" / "model.tar.gz") as tar:
        assert tar.getnames() == ["seen.json"]

    # the same tree again is refused; a bad hyperparameter is refused before the image runs; a failing job
    # shows the image's output/failure and exits 1
    refused(
        aws.run(
            "train", "--local", "--image", fake_train_image, "--local-dir", str(tree), "--train", str(prefix)
        ),
        "is not empty",
    )
    t2 = tmp_path / "t2"
    args = ["--local", "--image", fake_train_image, "--local-dir", str(t2), "--train", str(prefix)]
    refused(aws.run("train", *args, "--hp", "epochs=-1"), "epochs must be ≥ 1, got -1")
    assert not t2.exists()
    proc = aws.run("train", *args, "--hp", "epochs=13")
    assert proc.returncode == 1
    assert "exited 1: CUDA error: out of memory" in proc.stderr
    refused(
        aws.run("train", "--local", "--image", "ncf-no-such-image:x", "--train", str(prefix)),
        "no local image",
    )
