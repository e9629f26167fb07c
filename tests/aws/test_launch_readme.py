"""The README's SageMaker commands, verbatim, against the moto server (tests/support/moto.py): the whole
walk-through from upload to cleanup, and the pre-training jobs; and README.md still shows them.
"""

from __future__ import annotations

import json
import re
import subprocess

from tests.support import ROOT
from tests.support.moto import BUCKET, SCRIPTS, ok, set_endpoint_results
from tests.support.synthetic import write_ncf_files

# ----------------------------------------------------------------------------------- README walkthrough

# The commands of the README's "Run it on SageMaker" section, verbatim (run from the repository root, with
# BUCKET, AWS_REGION, SAGEMAKER_ROLE_ARN exported and the images pushed by build_and_push.sh). Once README.md
# has that section, the test below also checks that it still shows every one of them.
README_SECTION = "## Run it on SageMaker"
README_COMMANDS = [
    'scripts/upload_data.sh data/ml-1m "s3://$BUCKET/ncf/ml-1m"',
    'scripts/train.sh --job-name ncf-ml1m --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --hp model=neumf --hp epochs=20 --wait',
    "scripts/deploy.sh --endpoint ncf --training-job ncf-ml1m",
    "scripts/invoke.sh --endpoint ncf",
    "scripts/cleanup.sh --endpoint ncf --yes",
]


def test_readme_walkthrough_from_data_to_cleanup(aws, tmp_path):
    """README_COMMANDS in order, with AWS_ENDPOINT_URL pointing at moto; and the README shows them."""
    aws.push_fake_image("ncf-train")
    aws.push_fake_image("ncf-serve")
    # the NCF paper's ML-1M files, as the seed workshop used them (here: synthetic data in that format)
    write_ncf_files(tmp_path / "data" / "ml-1m" / "ml-1m")
    (tmp_path / "scripts").symlink_to(SCRIPTS)  # a checkout with data/ beside scripts/
    env = aws.env | {"BUCKET": BUCKET}
    set_endpoint_results(aws, "[25, 1064, 174, 2791, 3373, 269, 2678, 1902, 3641, 1216]")

    def sh(command: str) -> list[str]:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        return ok(proc)

    upload, train, deploy, invoke, cleanup = README_COMMANDS
    assert sh(upload) == [f"s3://{BUCKET}/ncf/ml-1m/"]
    assert sorted(o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == [
        f"ncf/ml-1m/ml-1m.{suffix}" for suffix in ("test.negative", "test.rating", "train.rating")
    ]
    assert sh(train) == ["ncf-ml1m", f"s3://{BUCKET}/ncf/output/ncf-ml1m/output/model.tar.gz"]
    aws.put("ncf/output/ncf-ml1m/output/model.tar.gz")  # what the real job writes when it ends
    assert sh(deploy) == ["ncf"]
    assert len(json.loads(sh(invoke)[0])) == 10
    assert len(sh(cleanup)) == 3  # the endpoint, its config, its model
    assert aws.sm.list_endpoints()["Endpoints"] == []
    assert aws.sm.list_models()["Models"] == []

    readme = ROOT / "README.md"
    if readme.is_file() and README_SECTION in readme.read_text():
        text = re.sub(r"\\\n\s*", "", readme.read_text())  # join continued lines
        missing = [c for c in README_COMMANDS if c not in text]
        assert not missing, f"README.md no longer shows these tested commands: {missing}"


# The README's pre-training jobs, verbatim.
README_PRETRAIN_COMMANDS = [
    'scripts/train.sh --job-name ncf-gmf --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --hp model=gmf --hp epochs=20 --hp num_neg=8 --wait',
    'scripts/train.sh --job-name ncf-mlp --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --hp model=mlp --hp epochs=12 --hp num_neg=8 --hp lr=0.006 --wait',
    'scripts/train.sh --job-name ncf-neumf-pretrained --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --gmf "s3://$BUCKET/ncf/output/ncf-gmf/output/model.tar.gz" '
    '--mlp "s3://$BUCKET/ncf/output/ncf-mlp/output/model.tar.gz" --hp epochs=2 --hp lr=0.00001 '
    "--hp lr_decay=1.0 --wait",
]


def test_readme_pretraining_jobs(aws, tmp_path):
    aws.push_fake_image("ncf-train")
    aws.put("ncf/ml-1m/ml-1m.train.rating")
    env = aws.env | {"BUCKET": BUCKET}
    (tmp_path / "scripts").symlink_to(SCRIPTS)
    for command in README_PRETRAIN_COMMANDS:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        _job, model = ok(proc)
        aws.put(model.removeprefix(f"s3://{BUCKET}/"))  # what the real job writes when it ends
    desc = aws.sm.describe_training_job(TrainingJobName="ncf-neumf-pretrained")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in desc["InputDataConfig"]}
    assert channels["gmf"] == f"s3://{BUCKET}/ncf/output/ncf-gmf/output/model.tar.gz"
    assert channels["mlp"] == f"s3://{BUCKET}/ncf/output/ncf-mlp/output/model.tar.gz"
    text = re.sub(r"\\\n\s*", "", (ROOT / "README.md").read_text())
    missing = [c for c in README_PRETRAIN_COMMANDS if c not in text]
    assert not missing, f"README.md no longer shows these tested commands: {missing}"
