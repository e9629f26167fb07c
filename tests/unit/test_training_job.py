"""The training-container contract, run as a plain process against a temporary /opt/ml tree."""

from __future__ import annotations

import errno
import json
import re
import signal
import subprocess
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ncf_core import artifact
from ncf_core import data as ncf_data
from ncf_core.config import Settings, parse_hyperparameters
from ncf_core.errors import ConfigError
from ncf_core.jobs import train_to_artifact
from ncf_core.training import TrainConfig, list_checkpoints
from ncf_sagemaker.training import job
from tests.support import ROOT, free_port
from tests.support.sagemaker_tree import SageMakerTree
from tests.support.synthetic import SMALL_DATA, write_ncf_files, write_ratings_csv

# The workshop's estimator hyperparameters, as SageMaker delivers them (strings, some JSON-encoded).
WORKSHOP_HPS = {
    "epochs": '"4"',
    "lr": "0.01",
    "batch_size": '"512"',
    "factor_num": "8",
    "num_layers": "2",
    "num_ng": "4",
    "dropout": "0.0",
    "top_k": "10",
    "test_num_ng": "99",
}
# The one copy of the metric_definitions the launch scripts send to SageMaker.
METRIC_REGEXES = {
    m["Name"]: m["Regex"]
    for m in json.loads((ROOT / "scripts" / "metric_definitions.json").read_text())["MetricDefinitions"]
}


@pytest.fixture
def tree(tmp_path: Path) -> SageMakerTree:
    t = SageMakerTree(tmp_path / "ml")
    write_ratings_csv(t.channel("train") / "interactions.csv")
    return t


# ------------------------------------------------------------------------------------ hyperparameters


def test_workshop_hyperparameters_are_accepted_plain_or_json_encoded():
    opts = parse_hyperparameters(WORKSHOP_HPS | {"model": '"gmf"'})
    c = opts.config
    got = (c.epochs, c.lr, c.batch_size, c.factor, c.num_layers, c.num_neg, c.top_k, c.model)
    assert got == (4, 0.01, 512, 8, 2, 4, 10, "gmf")
    assert opts.data.num_eval_negatives == 99


@pytest.mark.parametrize(
    ("hps", "message"),
    [
        ({"lr": "abc"}, "hyperparameter lr='abc' is not a number"),
        ({"epochs": "2.5"}, "hyperparameter epochs='2.5' is not an integer"),
        ({"batch_size": '"many"'}, "batch_size='\"many\"' is not an integer"),
        ({"lr": "-1"}, "lr must be a positive number"),
        ({"model": "svd"}, "model must be one of gmf, mlp, neumf"),
        ({"learning_rat": "0.1"}, "unknown hyperparameter(s) learning_rat"),
        ({"validation": "maybe"}, "is not a boolean"),
        ({"test_num_ng": "0"}, "test_num_ng=0 must be ≥ 1"),
    ],
)
def test_invalid_hyperparameters_say_what_to_fix(hps, message):
    with pytest.raises(ConfigError) as err:
        parse_hyperparameters(hps)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("raw", "expected"), [("auto", None), ('"auto"', None), ("0.7", 0.7), ('"0.7"', 0.7)]
)
def test_pretrain_alpha_is_a_number_or_auto(raw, expected):
    assert parse_hyperparameters({"pretrain_alpha": raw}).config.pretrain_alpha == expected


def test_platform_keys_are_not_rejected():
    opts = parse_hyperparameters({"sagemaker_region": '"us-east-1"', "sagemaker_mpi_enabled": "true"})
    assert opts == Settings()  # accepted, and no setting of ours


# ------------------------------------------------------------------------------------- whole program


def test_train_writes_artifact_reports_metrics_and_checkpoints(tree: SageMakerTree):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tree.channel("train").iterdir())
    tree.write_config(WORKSHOP_HPS)
    proc = tree.run_train()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    art = artifact.load(tree.model)
    assert art.config.model == "neumf" and art.config.factor == 8
    assert art.metrics["hr"] > 0.3
    out = tree.output / "data"
    history = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["hr"] == pytest.approx(art.metrics["hr"]) and report["world_size"] == 1
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, regex in METRIC_REGEXES.items():
        values = re.findall(regex, proc.stdout)
        assert len(values) >= 2, (name, proc.stdout[-2000:])
    assert list_checkpoints(tree.checkpoints)
    assert not (tree.output / "failure").exists()
    # The channel is input: nothing written into it.
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tree.channel("train").iterdir()) == before


def test_separate_test_channel_with_ncf_files(tree: SageMakerTree, tmp_path: Path):
    prefix = write_ncf_files(tmp_path / "ncf" / "toy")
    train, test = tree.channel("train"), tree.channel("test")
    (train / "interactions.csv").unlink()
    (train / "toy.train.rating").write_bytes(Path(f"{prefix}.train.rating").read_bytes())
    for suffix in (".test.rating", ".test.negative"):
        (test / f"toy{suffix}").write_bytes(Path(f"{prefix}{suffix}").read_bytes())
    tree.write_config(WORKSHOP_HPS, channels=("train", "test"))
    proc = tree.run_train()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert artifact.load(tree.model).config.num_users == 240


def test_bad_hyperparameter_fails_before_work_with_readable_reason(tree: SageMakerTree):
    tree.write_config({"lr": "abc", "epochs": "1"})
    proc = tree.run_train()
    assert proc.returncode == 1
    assert (tree.output / "failure").read_text() == "hyperparameter lr='abc' is not a number"
    assert not tree.model.exists() or not any(tree.model.iterdir())


@pytest.fixture
def run_main(tree: SageMakerTree, monkeypatch):
    """The train program's ``main()`` in this process (so tests can patch it) against ``tree``."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tree.base))
    for name in ("NCF_CHECKPOINT_DIR", "SAGEMAKER_PROGRAM", "NCF_PROCS_PER_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(job, "_configure_logging", lambda: None)  # leave pytest's log capture alone
    sigterm = signal.getsignal(signal.SIGTERM)
    yield job.main
    signal.signal(signal.SIGTERM, sigterm)


@pytest.mark.parametrize(
    ("content", "kind"), [("[1, 2]", "an array"), ('"epochs=2"', "a string"), ("7", "a number")]
)
def test_hyperparameters_that_are_not_an_object_fail_with_a_reason(
    tree: SageMakerTree, run_main, content, kind
):
    tree.write_config({})
    path = tree.config / "hyperparameters.json"
    path.write_text(content)
    assert run_main() == 1
    assert (tree.output / "failure").read_text() == f"{path} must be a JSON object, not {kind}"


def test_resourceconfig_that_is_not_an_object_fails_with_a_reason(tree: SageMakerTree, run_main):
    tree.write_config({})
    path = tree.config / "resourceconfig.json"
    path.write_text('["algo-1"]')
    assert run_main() == 1
    assert (tree.output / "failure").read_text() == f"{path} must be a JSON object, not an array"


def test_full_disk_on_checkpoint_names_the_cause_in_the_failure_file(
    tree: SageMakerTree, run_main, monkeypatch
):
    def no_space(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    tree.write_config(WORKSHOP_HPS | {"epochs": "2"})
    assert run_main() == 1
    failure = (tree.output / "failure").read_text()
    path = tree.checkpoints / "ncf-ckpt-0001-0000000.pt"
    assert failure.startswith(f"cannot write checkpoint {path}: No space left on device (ENOSPC); "), failure
    assert failure.endswith("; no earlier checkpoint")
    assert list(tree.checkpoints.iterdir()) == []  # the partial .tmp is gone
    assert not artifact.is_artifact(tree.model)


def test_data_without_test_users_fails_instead_of_exiting_without_metrics(tree: SageMakerTree, run_main):
    ratings = tree.channel("train") / "interactions.csv"
    ratings.write_text("user,item\n" + "".join(f"u{u},i{u % 7}\n" for u in range(50)))
    tree.write_config(WORKSHOP_HPS | {"epochs": "1"})
    assert run_main() == 1
    failure = (tree.output / "failure").read_text()
    assert failure.startswith(f"{ratings}: no test users: each of the 50 users has a single interaction")
    assert not artifact.is_artifact(tree.model)


def test_missing_train_channel_fails(tree: SageMakerTree):
    tree.write_config({"epochs": "1"}, channels=("test",))
    proc = tree.run_train()
    assert proc.returncode == 1
    assert "'train' channel is required" in (tree.output / "failure").read_text()


def test_malformed_data_names_file_and_line(tree: SageMakerTree):
    (tree.channel("train") / "interactions.csv").write_text("user,item,timestamp\n1,2,3\n1,3,later\n")
    tree.write_config({"epochs": "1"})
    proc = tree.run_train()
    failure = (tree.output / "failure").read_text()
    assert proc.returncode == 1 and "interactions.csv, line 3" in failure and "timestamp" in failure


def test_sigterm_checkpoints_and_the_rerun_resumes(tree: SageMakerTree):
    hps = WORKSHOP_HPS | {"epochs": "40", "batch_size": "256"}
    tree.write_config(hps)
    proc = subprocess.Popen(
        tree.command(), env=tree.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not list_checkpoints(tree.checkpoints) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list_checkpoints(tree.checkpoints), "no checkpoint appeared"
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out[-2000:]
    assert time.monotonic() - t0 < 10
    assert "stopped on request" in out
    assert not (tree.output / "failure").exists()

    tree.write_config(hps | {"epochs": "3"})  # finish sooner; epochs may change across a resume
    rerun = tree.run_train()
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert "resuming from" in rerun.stdout
    history = json.loads((tree.output / "data" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]


# ----------------------------------------------------------------------------------------- distributed


def test_two_ranks_on_one_host_match_single_process_quality(tree: SageMakerTree, tmp_path: Path):
    # Same global batch: one process of 512, or two ranks of 256 whose gradients are averaged.
    single = SageMakerTree(tmp_path / "single")
    write_ratings_csv(single.channel("train") / "interactions.csv")
    single.write_config(WORKSHOP_HPS | {"epochs": "6"})
    assert single.run_train().returncode == 0
    one = json.loads((single.output / "data" / "evaluation.json").read_text())

    tree.write_config(WORKSHOP_HPS | {"epochs": "6", "batch_size": "256"})
    two = tree.run_train(NCF_PROCS_PER_HOST="2", NCF_MASTER_PORT=str(free_port()))
    assert two.returncode == 0, two.stdout[-3000:]
    report = json.loads((tree.output / "data" / "evaluation.json").read_text())
    assert report["world_size"] == 2 and one["world_size"] == 1
    assert "rank 1/2 joining" in two.stdout
    assert report["hr"] > 0.4 and report["hr"] > one["hr"] - 0.1, (report, one)


def _two_host_trees(tmp_path: Path, hps: dict, mpi: bool) -> list[SageMakerTree]:
    hosts = ("127.0.0.1", "localhost")  # resolvable names stand in for algo-1, algo-2
    trees = []
    for host in hosts:
        t = SageMakerTree(tmp_path / host)
        write_ratings_csv(t.channel("train") / "interactions.csv")
        t.write_config(
            hps | ({"sagemaker_mpi_enabled": "true"} if mpi else {}), hosts=hosts, current_host=host
        )
        trees.append(t)
    return trees


@pytest.mark.parametrize("mpi", [False, True])
def test_two_hosts_from_resourceconfig_or_mpi(tmp_path: Path, mpi: bool):
    trees = _two_host_trees(tmp_path, WORKSHOP_HPS | {"epochs": "3"}, mpi)
    port = str(free_port())
    procs = []
    for rank, t in enumerate(trees):
        env = t.env(NCF_MASTER_PORT=port)
        if mpi:  # what mpirun would set
            env |= {
                "OMPI_COMM_WORLD_RANK": str(rank),
                "OMPI_COMM_WORLD_SIZE": "2",
                "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            }
        procs.append(
            subprocess.Popen(
                t.command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    # Only rank 0 writes the artifact and the report.
    assert artifact.is_artifact(trees[0].model) and not artifact.is_artifact(trees[1].model)
    assert json.loads((trees[0].output / "data" / "evaluation.json").read_text())["world_size"] == 2


# ----------------------------------------------------------------------------------------- script mode


def test_script_mode_runs_the_users_script(tree: SageMakerTree, tmp_path: Path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_train.py").write_text(
        "import json, os, sys\n"
        "import ncf_core\n"
        "out = os.path.join(os.environ['SM_MODEL_DIR'], 'seen.json')\n"
        "os.makedirs(os.environ['SM_MODEL_DIR'], exist_ok=True)\n"
        "json.dump({'argv': sys.argv[1:], 'train': os.environ['SM_CHANNEL_TRAIN'],\n"
        "           'hps': json.loads(os.environ['SM_HPS'])}, open(out, 'w'))\n"
    )
    tree.write_config(
        {
            "sagemaker_program": '"my_train.py"',
            "sagemaker_submit_directory": json.dumps(str(code)),
            "my_own_option": '"x"',
        }
    )
    proc = tree.run_train()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    seen = json.loads((tree.model / "seen.json").read_text())
    assert seen["argv"] == ["--my_own_option", "x"] and seen["hps"] == {"my_own_option": "x"}
    assert seen["train"].endswith("input/data/train")


def test_script_mode_failure_is_reported(tree: SageMakerTree, tmp_path: Path):
    (tmp_path / "bad.py").write_text("raise SystemExit(3)\n")
    tree.write_config({"sagemaker_submit_directory": json.dumps(str(tmp_path))})
    proc = tree.run_train(SAGEMAKER_PROGRAM="bad.py")
    assert proc.returncode == 1
    assert (tree.output / "failure").read_text() == "user script bad.py exited with code 3"


# ------------------------------------------------------------------------------------------ pre-training


def _pretrained_halves(tree: SageMakerTree, tmp_path: Path) -> None:
    """A GMF as an earlier job's model.tar.gz in channel gmf, an MLP as an unpacked artifact in mlp."""
    data = ncf_data.load(tree.channel("train"), seed=TrainConfig().seed)
    cfg = TrainConfig(factor=8, num_layers=2, epochs=4, batch_size=512, **SMALL_DATA)
    train_to_artifact(data, replace(cfg, model="gmf"), tmp_path / "gmf")
    train_to_artifact(data, replace(cfg, model="mlp"), tree.channel("mlp"))
    with tarfile.open(tree.channel("gmf") / "model.tar.gz", "w:gz") as tar:
        for path in (tmp_path / "gmf").iterdir():  # SageMaker packs the model directory's contents
            tar.add(path, arcname=path.name)


def test_gmf_and_mlp_channels_initialise_neumf(tree: SageMakerTree, tmp_path: Path):
    _pretrained_halves(tree, tmp_path)
    before = sorted(p.name for p in tree.channel("gmf").iterdir())
    tree.write_config(WORKSHOP_HPS | {"epochs": "1", "lr": "0.0001"}, channels=("train", "gmf", "mlp"))
    proc = tree.run_train()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"pre-training alpha 0\.\d picked on validation", proc.stdout)
    history = json.loads((tree.output / "data" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1] and "loss" not in history[0]
    # Epoch 0 is the pre-trained start, already far better than an untrained NeuMF.
    assert history[0]["val_hr"] > 0.5
    assert artifact.load(tree.model).config.model == "neumf"
    assert sorted(p.name for p in tree.channel("gmf").iterdir()) == before  # nothing unpacked into it


@pytest.mark.parametrize(
    ("hps", "channels", "message"),
    [
        ({}, ("train", "gmf"), "needs both the gmf and mlp channels; mlp is missing"),
        ({"model": "gmf"}, ("train", "gmf", "mlp"), "initialise a NeuMF model, but model=gmf"),
    ],
)
def test_pretrain_channels_misuse_fails_before_work(tree: SageMakerTree, hps, channels, message):
    for name in channels[1:]:
        (tree.channel(name) / "model.tar.gz").write_bytes(b"not read before the checks")
    tree.write_config(WORKSHOP_HPS | hps, channels=channels)
    proc = tree.run_train()
    assert proc.returncode == 1
    assert message in (tree.output / "failure").read_text()
