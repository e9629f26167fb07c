"""The ``evaluate`` program (the pipeline's Evaluate step) under the processing-job layout: the report's
shape and figures, and the refusals (no test users, ids the model does not know)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ncf_core import data as ncf_data
from ncf_core.jobs import evaluate_artifact, train_to_artifact
from ncf_core.training import TrainConfig
from ncf_sagemaker import contract, evaluation_job
from tests.support.synthetic import SMALL_DATA, write_ncf_files, write_ratings_csv

CFG = TrainConfig(factor=8, num_layers=2, epochs=2, batch_size=512, **SMALL_DATA)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(model.tar.gz of a trained model, the NCF prefix it was trained on)"""
    root = tmp_path_factory.mktemp("evaluate")
    prefix = write_ncf_files(root / "data" / "toy")
    model_dir = root / "model"
    train_to_artifact(ncf_data.load(prefix, seed=CFG.seed), CFG, model_dir)
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return archive, prefix


def processing_tree(base: Path, archive: Path, test_files: list[Path]) -> dict[str, str]:
    """/opt/ml/processing/{model,test} as the job mounts them; the env that relocates /opt/ml."""
    model = base / contract.PROCESSING_SUBDIR / contract.PROCESSING_MODEL
    test = base / contract.PROCESSING_SUBDIR / contract.PROCESSING_TEST
    model.mkdir(parents=True)
    test.mkdir(parents=True)
    shutil.copy(archive, model / contract.MODEL_ARCHIVE)
    for f in test_files:
        shutil.copy(f, test / f.name)
    return {contract.BASE_DIR_ENV: str(base)}


def _pythonpath() -> dict[str, str]:
    """A checkout run without installing it (PYTHONPATH) keeps its PYTHONPATH."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def run_evaluate(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The console script, as the processing job runs it (ContainerEntrypoint ["evaluate"])."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("evaluate")), "--k", "10"],
        env={"PATH": "/usr/bin:/bin", **_pythonpath(), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_report_in_model_metrics_shape_with_the_figures_of_ncf_core(trained, tmp_path):
    archive, prefix = trained
    tests = [Path(f"{prefix}.test.rating"), Path(f"{prefix}.test.negative")]
    proc = run_evaluate(processing_tree(tmp_path, archive, tests))
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "processing" / "evaluation" / "evaluation.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == written  # printed, the same figures
    metrics = written["metrics"]
    assert set(metrics) == {"hr_at_10", "ndcg_at_10", "users_evaluated", "k"}
    assert all(set(v) == {"value"} for v in metrics.values())
    assert metrics["k"]["value"] == 10
    # the same figures as ncf_core's own evaluation of that model on that test set
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    expected = evaluate_artifact(tmp_path / "unpacked", prefix, 10)
    assert metrics["users_evaluated"]["value"] == expected["users"] > 0
    assert metrics["hr_at_10"]["value"] == pytest.approx(expected["hr"])
    assert metrics["ndcg_at_10"]["value"] == pytest.approx(expected["ndcg"])
    assert 0 < metrics["ndcg_at_10"]["value"] <= metrics["hr_at_10"]["value"] <= 1


def test_no_test_users_is_a_clear_failure(trained, tmp_path):
    archive, _ = trained
    proc = run_evaluate(processing_tree(tmp_path, archive, []))
    assert proc.returncode == 1
    assert "no '*.test.rating' files in the test input" in proc.stderr
    assert "no test users" in (tmp_path / "output" / "message").read_text()  # the job's ExitMessage
    assert not (tmp_path / "processing" / "evaluation").exists()


def test_test_ids_the_model_does_not_know_are_refused(trained, tmp_path):
    archive, _ = trained
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    rating = foreign / "x.test.rating"
    negative = foreign / "x.test.negative"
    rating.write_text("100000\t1\t5\t1\n")
    negative.write_text("(100000,1)\t2\t3\n")
    proc = run_evaluate(processing_tree(tmp_path / "ml", archive, [rating, negative]))
    assert proc.returncode == 1
    assert "1 user ids the model does not know (first: 100000)" in proc.stderr


def test_report_names_are_what_the_pipeline_reads():
    from ncf_core.evaluation import Metrics

    report = evaluation_job.report(Metrics(0.5, 0.25, 7, 10))
    assert report == {
        "metrics": {
            "hr_at_10": {"value": 0.5},
            "ndcg_at_10": {"value": 0.25},
            "users_evaluated": {"value": 7},
            "k": {"value": 10},
        }
    }
    assert evaluation_job.json_path(evaluation_job.metric_name("hr", 10)) == "metrics.hr_at_10.value"


def test_raw_ratings_are_evaluated_on_the_split_training_made(tmp_path):
    """A raw ratings file as the test input (the pipeline fed MovieLens' own files): the test split is the one
    training held out, so the report's figures are those training reported for the kept epoch."""
    ratings = write_ratings_csv(tmp_path / "data" / "ratings.csv")
    cfg = TrainConfig(factor=8, num_layers=2, epochs=2, batch_size=512, **SMALL_DATA)
    model_dir = tmp_path / "model"
    result = train_to_artifact(ncf_data.load(ratings, seed=cfg.seed, num_eval_negatives=20), cfg, model_dir)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    env = processing_tree(tmp_path / "ml", archive, [ratings])
    proc = run_evaluate(env)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.splitlines()[-1])["metrics"]
    summary = result.summary()
    assert metrics["hr_at_10"]["value"] == pytest.approx(summary["hr"])
    assert metrics["ndcg_at_10"]["value"] == pytest.approx(summary["ndcg"])
