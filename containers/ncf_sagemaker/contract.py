"""Every SageMaker platform name in one place: environment variables, /opt/ml paths, config keys.

``SAGEMAKER_BASE_DIR`` relocates ``/opt/ml`` (as the sagemaker-training toolkit does), so the contract
programs run unchanged against a temporary tree in tests and on a laptop.
"""

from __future__ import annotations

import os
from pathlib import Path

from ncf_core.config import PRETRAIN_PARTS

# ------------------------------------------------------------------ environment variables
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
DEFAULT_BASE_DIR = "/opt/ml"
CHECKPOINT_DIR_ENV = "NCF_CHECKPOINT_DIR"  # ours: relocates /opt/ml/checkpoints in tests
DEFAULT_CHECKPOINT_DIR = "/opt/ml/checkpoints"
PROGRAM_ENV = "SAGEMAKER_PROGRAM"
SUBMIT_DIRECTORY_ENV = "SAGEMAKER_SUBMIT_DIRECTORY"
BIND_TO_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
DEFAULT_PORT = 8080
MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"
MODEL_SERVER_WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
MODEL_SERVER_TIMEOUT_ENV = "SAGEMAKER_MODEL_SERVER_TIMEOUT"
MAX_PAYLOAD_IN_MB_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
DEFAULT_MAX_PAYLOAD_IN_MB = 6
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
TRAINING_JOB_NAME_ENV = "TRAINING_JOB_NAME"  # SageMaker sets both in a training container
TRAINING_JOB_ARN_ENV = "TRAINING_JOB_ARN"

# ------------------------------------------------------------------ experiment tracking (MLflow)
# MLflow's own variables: a server URL or a SageMaker managed MLflow tracking server ARN (the
# sagemaker-mlflow plugin), and the experiment (ours by default).
MLFLOW_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_EXPERIMENT_NAME_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_MLFLOW_EXPERIMENT = "ncf"
# Ours, set by the pipeline (mlops/ncf_mlops) on its Train and Evaluate steps: the execution the runs are
# tagged with, and (Evaluate) the training job whose model is evaluated.
PIPELINE_EXECUTION_ARN_ENV = "NCF_PIPELINE_EXECUTION_ARN"
EVALUATED_TRAINING_JOB_ENV = "NCF_TRAINING_JOB_NAME"

# ------------------------------------------------------------------ hyperparameter keys (script mode)
SUBMIT_DIRECTORY_HP = "sagemaker_submit_directory"
PROGRAM_HP = "sagemaker_program"
MPI_ENABLED_HP = "sagemaker_mpi_enabled"
# (every key starting with sagemaker_ is the platform's: ncf_core.config.is_platform_key)


def base_dir() -> Path:
    return Path(os.environ.get(BASE_DIR_ENV, DEFAULT_BASE_DIR))


def input_dir() -> Path:
    return base_dir() / "input"


def config_dir() -> Path:
    return input_dir() / "config"


def hyperparameters_file() -> Path:
    return config_dir() / "hyperparameters.json"


def resource_config_file() -> Path:
    return config_dir() / "resourceconfig.json"


def input_data_config_file() -> Path:
    return config_dir() / "inputdataconfig.json"


# ------------------------------------------------------------------ channels
# The training image's channels, listed once (the launcher and the pipeline import them from here): train,
# an optional test, and the optional pre-trained parts, a channel each named as the part (earlier jobs'
# models, to initialise a NeuMF).
TRAIN_CHANNEL = "train"
TEST_CHANNEL = "test"
PRETRAIN_CHANNELS: tuple[str, ...] = PRETRAIN_PARTS
TRAINING_CHANNELS: tuple[str, ...] = (TRAIN_CHANNEL, TEST_CHANNEL, *PRETRAIN_CHANNELS)


def channel_dir(name: str) -> Path:
    return input_dir() / "data" / name


def model_dir() -> Path:
    return base_dir() / "model"


def output_dir() -> Path:
    return base_dir() / "output"


def output_data_dir() -> Path:
    return output_dir() / "data"


def failure_file() -> Path:
    return output_dir() / "failure"


def code_dir() -> Path:
    return base_dir() / "code"


def checkpoint_dir() -> Path:
    """/opt/ml/checkpoints is fixed by SageMaker (not under the base dir); tests relocate it by env."""
    if CHECKPOINT_DIR_ENV in os.environ:
        return Path(os.environ[CHECKPOINT_DIR_ENV])
    if BASE_DIR_ENV in os.environ:
        return base_dir() / "checkpoints"
    return Path(DEFAULT_CHECKPOINT_DIR)


# ------------------------------------------------------------------ processing jobs (the `evaluate` program)
# A processing job mounts each ProcessingInput and ProcessingOutput at the path its request names; ours are
# fixed here, so the pipeline definition (mlops/ncf_mlops) and the program in the image agree.
PROCESSING_SUBDIR = "processing"
PROCESSING_MODEL = "model"  # input: a training job's model.tar.gz
PROCESSING_TEST = "test"  # input: *.test.rating + *.test.negative
PROCESSING_EVALUATION = "evaluation"  # output: evaluation.json
MODEL_ARCHIVE = "model.tar.gz"  # what a training job leaves in S3 (SageMaker tars /opt/ml/model)
EVALUATION_REPORT = "evaluation.json"
EXIT_MESSAGE_LIMIT = 1024  # DescribeProcessingJob's ExitMessage keeps the first 1 KB


def processing_container_path(name: str) -> str:
    """Where the job mounts input/output ``name`` inside the container (what its request says)."""
    return f"{DEFAULT_BASE_DIR}/{PROCESSING_SUBDIR}/{name}"


def processing_dir(name: str) -> Path:
    """The same directory as the program sees it (relocated by SAGEMAKER_BASE_DIR in tests)."""
    return base_dir() / PROCESSING_SUBDIR / name


def processing_job_config_file() -> Path:
    """/opt/ml/config/processingjobconfig.json: a processing job's request (its ProcessingJobName)."""
    return base_dir() / "config" / "processingjobconfig.json"


def exit_message_file() -> Path:
    """/opt/ml/output/message: a processing job's ExitMessage (its FailureReason, in effect)."""
    return output_dir() / "message"


# ------------------------------------------------------------------ Model Monitor (the `monitor` program)
# A monitoring schedule runs a processing job with these environment variables (Model Monitor's "bring your
# own container" contract); `monitor` reads the same names, so a schedule runs it unchanged, and takes
# command-line options for our own runs.
MONITOR_DATASET_FORMAT_ENV = "dataset_format"  # {"sagemakerCaptureJson": {"captureIndexNames": [...]}}
MONITOR_DATASET_SOURCE_ENV = "dataset_source"  # capture files: {endpoint}/{variant}/yyyy/mm/dd/hh/*.jsonl
MONITOR_OUTPUT_PATH_ENV = "output_path"
MONITOR_START_TIME_ENV = "start_time"
MONITOR_END_TIME_ENV = "end_time"
MONITOR_BASELINE_STATISTICS_ENV = "baseline_statistics"  # local paths, when the schedule has a BaselineConfig
MONITOR_BASELINE_CONSTRAINTS_ENV = "baseline_constraints"
MONITOR_PUBLISH_METRICS_ENV = "publish_cloudwatch_metrics"  # "Enabled" / "Disabled"
MONITOR_ENDPOINT_ENV = "sagemaker_endpoint_name"
MONITOR_SCHEDULE_ENV = "sagemaker_monitoring_schedule_name"
MONITOR_ENABLED = "Enabled"
CAPTURE_DATASET_FORMAT = "sagemakerCaptureJson"
CAPTURE_INDEX_NAMES = ("endpointInput", "endpointOutput")
PROCESSING_ENDPOINT_DATA = "endpointdata"  # Model Monitor's example dataset_source
PROCESSING_MONITOR_RESULTS = "resultdata"  # Model Monitor's example output_path
PROCESSING_BASELINE = "baseline"  # `monitor baseline`'s output in a processing job (a pipeline step)
MONITOR_STATISTICS = "statistics.json"
MONITOR_CONSTRAINTS = "constraints.json"
MONITOR_VIOLATIONS = "constraint_violations.json"
# Model Monitor publishes what a job leaves here when publish_cloudwatch_metrics is Enabled, in this
# namespace (real-time endpoints), one PutMetricData datum per line.
CLOUDWATCH_METRICS_FILE = "cloudwatch_metrics.jsonl"
MONITOR_NAMESPACE = "/aws/sagemaker/Endpoint/data-metrics"


def cloudwatch_metrics_dir() -> Path:
    """/opt/ml/output/metrics/cloudwatch (relocated by SAGEMAKER_BASE_DIR)."""
    return output_dir() / "metrics" / "cloudwatch"
