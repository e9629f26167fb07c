from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncf_core import data as ncf_data
from ncf_core.evaluation import evaluate_scores
from ncf_core.jobs import train_to_artifact
from ncf_core.training import TrainConfig
from tests.support import ROOT, require_file, shared_data_dir
from tests.support.synthetic import SMALL_DATA


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ncf_core", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_train_evaluate_recommend(ratings_csv: Path, tmp_path: Path):
    model = tmp_path / "model"
    train = cli(
        "train",
        "--data",
        str(ratings_csv),
        "--model-dir",
        str(model),
        "--epochs",
        "3",
        "--batch-size",
        "512",
        "--lr",
        "0.01",
        "--factor",
        "8",
        "--layers",
        "2",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
    )
    assert train.returncode == 0, train.stderr[-2000:]
    summary = json.loads(train.stdout)
    assert summary["epochs_run"] == 3 and "epoch=3;" in train.stderr

    ev = cli("evaluate", "--model-dir", str(model), "--data", str(ratings_csv))
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["hr"] == pytest.approx(summary["hr"])

    rec = cli("recommend", "--model-dir", str(model), "--user", "1", "--user", "nobody", "--top-k", "3")
    lines = [json.loads(x) for x in rec.stdout.splitlines()]
    assert [len(x["items"]) for x in lines] == [3, 3] and [x["fallback"] for x in lines] == [False, True]


def test_bad_data_exits_2_with_the_file_and_line(tmp_path: Path):
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\t4\n1\tx\t3\t4\n")
    proc = cli("train", "--data", str(bad), "--model-dir", str(tmp_path / "m"))
    assert proc.returncode == 2
    assert f"error: {bad}, line 2" in proc.stderr and "Traceback" not in proc.stderr


def test_invalid_option_exits_2(ratings_csv: Path, tmp_path: Path):
    proc = cli("train", "--data", str(ratings_csv), "--model-dir", str(tmp_path / "m"), "--lr", "-1")
    assert proc.returncode == 2 and "lr must be a positive number" in proc.stderr


@pytest.mark.parametrize(("value", "message"), [("lots", "'lots' is neither a number"), ("1.5", "[0, 1]")])
def test_invalid_pretrain_alpha_exits_2(ratings_csv: Path, tmp_path: Path, value: str, message: str):
    data, model = str(ratings_csv), str(tmp_path / "m")
    proc = cli("train", "--data", data, "--model-dir", model, "--pretrain-alpha", value)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.movielens
def test_movielens_100k_beats_popularity(tmp_path: Path):
    udata = require_file(shared_data_dir() / "ml-100k" / "u.data")
    data = ncf_data.load(udata, seed=0)
    result = train_to_artifact(
        data, TrainConfig(epochs=4, batch_size=4096, lr=0.005, **SMALL_DATA), tmp_path / "m"
    )
    pop = np.bincount(data.train_items, minlength=data.num_items).astype(float)
    popularity = evaluate_scores(pop[data.test.items], pop[data.test.negatives], 10)
    assert result.test.hr > popularity.hr + 0.05, (result.test, popularity)
    assert result.test.hr > 0.5


def test_ncf_files_writes_the_split_a_prefix_loads(ratings_csv: Path, tmp_path: Path):
    proc = cli("ncf-files", "--data", str(ratings_csv), "--to", str(tmp_path / "out" / "toy"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "out" / "toy")
    data = ncf_data.load(tmp_path / "out" / "toy", validation=False)
    assert len(data.test) == ncf_data.load(ratings_csv, validation=False).num_users
    assert data.test.negatives.shape[1] == 99
