"""A temporary /opt/ml tree (SAGEMAKER_BASE_DIR) with SageMaker's config files, for contract tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class SageMakerTree:
    def __init__(self, base: Path):
        self.base = base
        self.config = base / "input" / "config"
        self.config.mkdir(parents=True, exist_ok=True)
        self.checkpoints = base / "checkpoints"

    def channel(self, name: str) -> Path:
        path = self.base / "input" / "data" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_config(
        self,
        hyperparameters: dict | None = None,
        channels: tuple[str, ...] = ("train",),
        hosts: tuple[str, ...] = ("algo-1",),
        current_host: str = "algo-1",
    ) -> None:
        (self.config / "hyperparameters.json").write_text(json.dumps(hyperparameters or {}))
        (self.config / "resourceconfig.json").write_text(
            json.dumps({"current_host": current_host, "hosts": list(hosts), "network_interface_name": "eth0"})
        )
        (self.config / "inputdataconfig.json").write_text(
            json.dumps(
                {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for c in channels}
            )
        )

    @property
    def model(self) -> Path:
        return self.base / "model"

    @property
    def output(self) -> Path:
        return self.base / "output"

    def env(self, **extra: str) -> dict[str, str]:
        return os.environ | {"SAGEMAKER_BASE_DIR": str(self.base)} | extra

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ncf_sagemaker.training.job"]

    def run_train(self, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(), env=self.env(**extra_env), capture_output=True, text=True, timeout=timeout
        )
