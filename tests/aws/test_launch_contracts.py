"""What the launch scripts and the rest of the project agree on (metric regexes, data set names, the seed
payload), shellcheck and --help on every script, and the wait loops of train.sh and deploy.sh; no server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.moto import SCRIPTS, ok, run_script

# --------------------------------------------------------------------------------------------- contracts


LOG_LINE = "epoch=3; loss=0.2512; train_s=6.1; eval_s=0.9; val_hr=0.79; val_ndcg=0.54; hr=0.67; ndcg=0.39;"


def test_metric_definitions_pick_each_value_from_the_log_line():
    from ncf_launch.aws_client import load_metric_definitions

    values = {}
    for d in load_metric_definitions():
        matches = re.findall(d["Regex"], LOG_LINE)
        assert len(matches) == 1, (d, matches)
        values[d["Name"]] = matches[0]
    assert values == {
        "train:loss": "0.2512",
        "validation:hr": "0.79",
        "validation:ndcg": "0.54",
        "test:hr": "0.67",
        "test:ndcg": "0.39",
        "epoch": "3",
    }


def test_dataset_names_are_ncf_cores():
    from ncf_core import data
    from ncf_launch import upload_data

    assert upload_data.NCF_SUFFIXES == data.NCF_SUFFIXES
    assert upload_data.RAW_FILE_NAMES == data.RAW_FILE_NAMES


def test_seed_payload_is_the_workshops():
    """user 0 with its held-out item 25 and the 99 negatives of ml-1m.test.negative's first line."""
    payload = json.loads((SCRIPTS / "payloads" / "seed.json").read_text())
    assert payload["user"] == [0] * 100
    assert payload["item"][:4] == [25, 1064, 174, 2791] and len(payload["item"]) == 100
    negatives = ROOT.parent / "shared" / "data" / "ml-1m" / "ml-1m.test.negative"
    if negatives.is_file():
        first = negatives.read_text().splitlines()[0].split("\t")
        assert first[0] == "(0,25)"
        assert payload["item"][1:] == [int(x) for x in first[1:]]


def test_every_shell_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but shellcheck is not installed (apt-get install shellcheck)")
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    scripts = sorted(SCRIPTS.glob("*.sh")) + sorted(p for p in (ROOT / ".ci").glob("*") if _is_shell(p))
    assert len(scripts) >= 6
    proc = subprocess.run(
        ["shellcheck", "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _is_shell(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:40].startswith(
        (b"#!/usr/bin/env bash", b"#!/bin/bash", b"#!/bin/sh")
    )


def test_each_script_shows_help_without_aws():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"PYTHON": sys.executable}
    scripts = ["build_and_push", "upload_data", "train", "deploy", "invoke", "cleanup"]
    scripts += ["pipeline", "registry", "infra"]
    for script in scripts:
        lines = ok(run_script(script, "--help", env=env))
        assert lines[0].startswith(f"usage: {script}.sh"), lines[:2]


# ------------------------------------------------------------------------------------------ wait loops


class _Describer:
    """Stands in for a SageMaker client whose describe call walks through a list of answers."""

    def __init__(self, answers: list[dict]) -> None:
        self.answers = answers
        self.calls = 0

    def describe(self, **_: str) -> dict:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]

    describe_training_job = describe_endpoint = describe


def test_wait_for_job_follows_every_status_change(capsys):
    from ncf_launch.aws_client import Failure
    from ncf_launch.train import wait_for_job

    starting = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"}
    training = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}
    done = {"TrainingJobStatus": "Completed", "SecondaryStatus": "Completed", "ModelArtifacts": {}}
    sm = _Describer([starting, starting, training, training, done])
    assert wait_for_job(sm, "j", poll=0) is done
    assert sm.calls == 5
    err = capsys.readouterr().err
    assert [line.split("] ")[1] for line in err.splitlines()] == [
        "j: InProgress / Starting",
        "j: InProgress / Training",
        "j: Completed / Completed",
    ]
    stopped = {"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxRuntimeExceeded"}
    with pytest.raises(Failure, match="training job j stopped: no FailureReason given"):
        wait_for_job(_Describer([training, stopped]), "j", poll=0)


def test_wait_for_endpoint_until_in_service_failed_or_timeout():
    from ncf_launch.aws_client import Failure
    from ncf_launch.deploy import wait_for_endpoint

    creating, updating = {"EndpointStatus": "Creating"}, {"EndpointStatus": "Updating"}
    sm = _Describer([creating, updating, {"EndpointStatus": "InService"}])
    wait_for_endpoint(sm, "e", timeout=60, poll=0)
    assert sm.calls == 3
    failed = {"EndpointStatus": "Failed", "FailureReason": "ping health check failed"}
    with pytest.raises(Failure, match="endpoint e failed: ping health check failed"):
        wait_for_endpoint(_Describer([creating, failed]), "e", timeout=60, poll=0)
    with pytest.raises(Failure, match="still Creating after 0 s"):
        wait_for_endpoint(_Describer([creating]), "e", timeout=0, poll=0)
