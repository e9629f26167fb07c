"""Serving settings from the environment, and ``serve`` refusing values it cannot use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ncf_sagemaker.serving.settings import Settings, SettingsError, available_cpus, default_workers
from tests.support.serving import server_env


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SAGEMAKER_", "NCF_")):
            monkeypatch.delenv(key)
    return monkeypatch


def test_defaults_follow_sagemaker(clean_env):
    s = Settings.from_env()
    assert (s.port, s.workers, s.torch_threads, s.timeout_s) == (8080, default_workers(), 1, 60)
    assert (s.header_timeout_s, s.body_timeout_s, s.max_connections) == (10, 30, 4096)
    assert s.max_payload_bytes == 6 * 2**20 and not s.multi_model
    assert s.model_dir == Path("/opt/ml/model") and s.access_log == "all"
    assert s.max_concurrent_transforms == s.workers * s.threads
    assert (s.device, s.precision) == ("auto", "auto")


def test_the_scorer_settings_are_read(clean_env):
    clean_env.setenv("NCF_PRECISION", " BF16 ")
    clean_env.setenv("NCF_DEVICE", "cuda:1")
    s = Settings.from_env()
    assert (s.device, s.precision) == ("cuda:1", "bf16")


def test_default_workers_are_one_per_core_up_to_four_so_a_crash_leaves_others_serving():
    assert [default_workers(n) for n in (1, 2, 3, 8, 64)] == [1, 2, 3, 4, 4]
    assert default_workers() == min(available_cpus(), 4)


def test_sagemaker_variables_are_honoured(clean_env, tmp_path):
    for key, value in {
        "SAGEMAKER_BIND_TO_PORT": "9000",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "7",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2",
        "SAGEMAKER_MULTI_MODEL": "TRUE",
        "SAGEMAKER_BASE_DIR": str(tmp_path),
        "NCF_ACCESS_LOG": "errors",
    }.items():
        clean_env.setenv(key, value)
    s = Settings.from_env()
    assert (s.port, s.workers, s.timeout_s, s.max_payload_bytes) == (9000, 3, 7, 2 * 2**20)
    assert s.multi_model and s.model_dir == tmp_path / "model" and s.access_log == "errors"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SAGEMAKER_BIND_TO_PORT", "http", "SAGEMAKER_BIND_TO_PORT='http' is not an integer"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "0", "SAGEMAKER_MODEL_SERVER_WORKERS=0 must be ≥ 1"),
        ("SAGEMAKER_MULTI_MODEL", "maybe", "is not a boolean"),
        ("NCF_ACCESS_LOG", "verbose", "must be one of all, errors, off"),
        ("NCF_PRECISION", "fp16", "NCF_PRECISION='fp16': precision must be one of auto, fp32, bf16"),
        ("NCF_DEVICE", "gpu", "NCF_DEVICE='gpu': device must be auto, cpu or cuda"),
    ],
)
def test_bad_values_name_the_variable(clean_env, name, value, message):
    clean_env.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        Settings.from_env()


def test_serve_exits_2_with_the_reason_on_a_bad_setting(tmp_path):
    env = server_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "none"})
    proc = subprocess.run(
        [sys.executable, "-m", "ncf_sagemaker.serving.server", "--model-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "SAGEMAKER_MODEL_SERVER_WORKERS='none' is not an integer" in proc.stderr


def test_serve_refuses_a_bad_precision_at_start(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ncf_sagemaker.serving.server", "--model-dir", str(tmp_path)],
        env=server_env({"NCF_PRECISION": "fp8"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "NCF_PRECISION='fp8': precision must be one of auto, fp32, bf16" in proc.stderr
