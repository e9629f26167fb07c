"""Script mode: run the user's own training script inside our image, as SageMaker's framework images do.

Triggered by ``SAGEMAKER_PROGRAM`` (env) or the ``sagemaker_program`` hyperparameter. The code comes from
``sagemaker_submit_directory`` (an ``s3://`` or local ``.tar.gz``, or a directory; default
``/opt/ml/code``). The script gets the SDK's usual ``SM_*`` environment and its hyperparameters as
``--name value`` arguments, and can ``import ncf_core``. We implement the small subset of the
sagemaker-training toolkit this needs instead of installing it: the toolkit builds a C extension, pulls in
SciPy and retries DNS for every host for minutes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ncf_core.config import decode, is_platform_key
from ncf_core.errors import ConfigError

from .. import contract
from ..archives import extract_tar

log = logging.getLogger("ncf_sagemaker.training.script_mode")


def requested(raw_hyperparameters: dict[str, Any]) -> str | None:
    program = os.environ.get(contract.PROGRAM_ENV) or decode(raw_hyperparameters.get(contract.PROGRAM_HP, ""))
    return str(program) if program else None


def prepare_code(submit: str) -> Path:
    """The directory holding the user's code, downloading/unpacking it when needed."""
    dest = contract.code_dir()
    if submit.startswith("s3://"):
        import boto3  # only needed for this path

        bucket, _, key = submit[len("s3://") :].partition("/")
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "sourcedir.tar.gz"
            log.info("downloading %s", submit)
            boto3.client("s3").download_file(bucket, key, str(archive))
            extract_tar(archive, dest)
        return dest
    path = Path(submit.removeprefix("file://"))
    if path.is_file():
        extract_tar(path, dest)
        return dest
    if path.is_dir():
        return path
    raise ConfigError(
        f"sagemaker_submit_directory {submit!r} is neither an s3:// URI, a .tar.gz nor a directory"
    )


def sm_environment(user_hps: dict[str, Any], resource_config: dict[str, Any], channels: list[str]) -> dict:
    hosts = resource_config.get("hosts") or ["algo-1"]
    env = {
        "SM_MODEL_DIR": str(contract.model_dir()),
        "SM_OUTPUT_DATA_DIR": str(contract.output_data_dir()),
        "SM_OUTPUT_DIR": str(contract.output_dir()),
        "SM_INPUT_DIR": str(contract.input_dir()),
        "SM_INPUT_CONFIG_DIR": str(contract.config_dir()),
        "SM_CHANNELS": json.dumps(channels),
        "SM_HPS": json.dumps(user_hps),
        "SM_HOSTS": json.dumps(hosts),
        "SM_CURRENT_HOST": str(resource_config.get("current_host") or hosts[0]),
        "SM_NUM_GPUS": str(_gpu_count()),
        "SM_CHECKPOINT_DIR": str(contract.checkpoint_dir()),
    }
    for name in channels:
        env[f"SM_CHANNEL_{name.upper()}"] = str(contract.channel_dir(name))
    for key, value in user_hps.items():
        env[f"SM_HP_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def run(program: str, raw_hps: dict[str, Any], resource_config: dict[str, Any], channels: list[str]) -> int:
    """Run the user's script to completion, forwarding SIGTERM; returns its exit code."""
    submit = os.environ.get(contract.SUBMIT_DIRECTORY_ENV) or decode(
        raw_hps.get(contract.SUBMIT_DIRECTORY_HP, str(contract.code_dir()))
    )
    code = prepare_code(str(submit))
    script = code / program
    if not script.is_file():
        raise ConfigError(f"script mode: {program!r} not found in {submit}")
    user_hps = {k: decode(v) for k, v in raw_hps.items() if not is_platform_key(k)}
    requirements = code / "requirements.txt"
    if requirements.is_file():
        log.info("installing %s", requirements)
        subprocess.run([sys.executable, "-m", "pip", "install", "-r", str(requirements)], check=True)
    args = [sys.executable, str(script)]
    for key, value in user_hps.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env = os.environ | sm_environment(user_hps, resource_config, channels)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH", "")]))
    log.info("script mode: %s", " ".join(args))
    proc = subprocess.Popen(args, cwd=code, env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
