"""Helpers shared by every test tier (no tests in here).

- `paths`: `ROOT`, `shared_data_dir()`, `require_file()`; `net`: `free_port()` (exported here too);
- `synthetic`: the planted test data; `sagemaker_tree`: a temporary /opt/ml tree;
- `docker_harness`: building and running images on a real Docker engine;
- `moto`: the moto server the launch-script tests (tests/aws) run against;
- `serving`: a trained model shared by the serving tests and a real `serve` process to talk to.
"""

from __future__ import annotations

from tests.support.net import free_port
from tests.support.paths import ROOT, require_file, shared_data_dir

__all__ = ["ROOT", "free_port", "require_file", "shared_data_dir"]
