"""The ``evaluate`` program: the pipeline's Evaluate step, a SageMaker processing job on the training image.

Reads the trained ``model.tar.gz`` (``/opt/ml/processing/model``) and NCF test files (``*.test.rating`` +
``*.test.negative`` in ``/opt/ml/processing/test``) or, without them, a raw ratings file there (``u.data``,
``ratings.dat``...: the test split is then the one training made of it), computes HR@K and NDCG@K with
``ncf_core`` and writes
``/opt/ml/processing/evaluation/evaluation.json`` in the shape SageMaker's model metrics take (the
pipeline's quality gate reads it with ``JsonGet``; the model package links it as its model statistics),
and prints the same JSON on stdout (and logs it to MLflow when ``MLFLOW_TRACKING_URI`` is set:
``ncf_sagemaker.tracking``). A failure (no test users, ids the model does not know, a broken
archive) exits 1 with the reason on stderr and in ``/opt/ml/output/message`` (the job's ExitMessage).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncf_core import runtime
from ncf_core.config import DEFAULT_TOP_K
from ncf_core.errors import DataError, NcfError
from ncf_core.jsonio import write_json

from . import contract, tracking
from .archives import extract_tar

if TYPE_CHECKING:
    from ncf_core.evaluation import Metrics

log = logging.getLogger("ncf_sagemaker.evaluate")

# The report's names; the pipeline (mlops/ncf_mlops) reads them back, so this module imports no torch at
# the top.
REPORT_SECTION = "metrics"
USERS_EVALUATED = "users_evaluated"
K = "k"


def metric_name(kind: str, k: int) -> str:
    """``hr_at_10``, ``ndcg_at_10``: the report's name of HR@K / NDCG@K."""
    return f"{kind}_at_{k}"


def json_path(name: str) -> str:
    """Where a figure lies in evaluation.json, as a pipeline's ``JsonGet`` spells it."""
    return f"{REPORT_SECTION}.{name}.value"


def report(metrics: Metrics) -> dict[str, Any]:
    """``{"metrics": {"hr_at_10": {"value": ...}, ...}}``: the model-metrics shape (names carry K)."""
    k = metrics.k
    values = {
        metric_name("hr", k): metrics.hr,
        metric_name("ndcg", k): metrics.ndcg,
        USERS_EVALUATED: metrics.users,
        K: k,
    }
    return {REPORT_SECTION: {name: {"value": value} for name, value in values.items()}}


def _one(directory: Path, suffix: str) -> Path:
    found = sorted(p for p in directory.rglob("*" + suffix) if p.is_file())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        message = f"{what} '*{suffix}' files in the test input (expected one): no test users"
        raise DataError(message, directory)
    return found[0]


def raw_ratings(test_input: Path) -> Path | None:
    """The raw ratings file of a test input without NCF test files (ratings.dat, u.data...), else None."""
    from ncf_core import data as ncf_data

    if not test_input.is_dir() or any(test_input.rglob("*" + ncf_data.NCF_SUFFIXES["test"])):
        return None
    try:
        kind, paths = ncf_data.resolve(test_input)
    except NcfError:
        return None
    return paths["ratings"] if kind == "raw" else None


def model_directory(source: Path, scratch: Path) -> Path:
    """An unpacked artifact: ``source`` itself, or its ``model.tar.gz`` extracted under ``scratch``."""
    from ncf_core import artifact

    if artifact.is_artifact(source):
        return source
    archive = source if source.is_file() else source / contract.MODEL_ARCHIVE
    if not archive.is_file():
        raise DataError(f"no {contract.MODEL_ARCHIVE} and no artifact in the model input", source)
    extract_tar(archive, scratch)
    return scratch


def evaluate(model_input: Path, test_input: Path, k: int = DEFAULT_TOP_K) -> dict[str, Any]:
    from ncf_core import data as ncf_data  # numpy and torch: only once the program runs
    from ncf_core.jobs import evaluate_raw_split, evaluate_test_files

    raw = raw_ratings(test_input)
    with tempfile.TemporaryDirectory(prefix="ncf-evaluate-") as scratch:
        model_dir = model_directory(model_input, Path(scratch))
        if raw is not None:  # raw ratings: the test split the model's training made of them
            log.info("no NCF test files in the test input: evaluating on the split of %s", raw)
            metrics = evaluate_raw_split(model_dir, raw, k)
        else:
            rating = _one(test_input, ncf_data.NCF_SUFFIXES["test"])
            negative = _one(test_input, ncf_data.NCF_SUFFIXES["negative"])
            metrics = evaluate_test_files(model_dir, rating, negative, k)
    if metrics.users == 0:
        raise DataError("no test users: nothing to evaluate", test_input)
    return report(metrics)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--k", type=int, default=DEFAULT_TOP_K, help=f"K of HR@K / NDCG@K (default {DEFAULT_TOP_K})"
    )
    p.add_argument("--model", type=Path, default=None, help="model.tar.gz or its directory")
    p.add_argument(
        "--test",
        type=Path,
        default=None,
        help="directory with *.test.rating + *.test.negative, or a raw ratings file",
    )
    p.add_argument("--output", type=Path, default=None, help="directory for evaluation.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime.flush_denormals()  # before any torch thread starts
    model = args.model or contract.processing_dir(contract.PROCESSING_MODEL)
    test = args.test or contract.processing_dir(contract.PROCESSING_TEST)
    output = args.output or contract.processing_dir(contract.PROCESSING_EVALUATION)
    try:
        if args.k < 1:
            raise DataError(f"--k must be at least 1, got {args.k}")
        result = evaluate(model, test, args.k)
    except (NcfError, OSError) as exc:
        report_failure(f"evaluation failed: {exc}")
        return 1
    write_json(output / contract.EVALUATION_REPORT, result)
    print(json.dumps(result), flush=True)
    track(result, output / contract.EVALUATION_REPORT)
    return 0


def report_failure(reason: str) -> None:
    """A processing job's failure: the reason on stderr and in /opt/ml/output/message (its ExitMessage)."""
    print(reason, file=sys.stderr, flush=True)
    try:
        message = contract.exit_message_file()
        message.parent.mkdir(parents=True, exist_ok=True)
        message.write_text(reason[: contract.EXIT_MESSAGE_LIMIT], encoding="utf-8")
    except OSError as write_error:  # never mask the reason
        log.error("could not write the exit message: %s", write_error)


def track(result: dict[str, Any], report_file: Path) -> None:
    """The figures and the report as an MLflow run, when tracking is configured (never fails the step)."""
    run = tracking.start_evaluation()
    run.log_metrics({name: entry["value"] for name, entry in result[REPORT_SECTION].items()})
    run.log_file(report_file, tracking.REPORTS_PATH)
    run.end(tracking.FINISHED)


if __name__ == "__main__":
    sys.exit(main())
