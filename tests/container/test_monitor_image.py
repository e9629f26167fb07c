"""``monitor`` in the real serving image, as a Model Monitor schedule (or our own) runs it: the capture and
the baseline of tests/serving/test_monitor_e2e.py mounted as processing inputs, Model Monitor's environment,
and the same statistics and violations as the plain process gave on the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ncf_sagemaker import contract
from tests.serving.test_monitor_e2e import (  # noqa: F401 - the capture fixture (a real serve, two hours)
    DRIFT_HOUR,
    NORMAL_HOUR,
    endpoint,
    model_monitor_env,
    outputs,
    run_monitor,
)
from tests.support import docker_harness as dh

pytestmark = pytest.mark.docker

MOUNT = "/opt/ml/processing/input"


@pytest.fixture(scope="module")
def serve_image() -> str:
    dh.require_docker()
    return dh.build_project_image("serve")


def in_image(image: str, root: Path, host_env: dict[str, str], out: str) -> dict[str, str]:
    """The host environment with the paths under ``root`` moved to where the container sees them."""
    env = {k: v.replace(str(root), MOUNT) for k, v in host_env.items()}
    env[contract.MONITOR_OUTPUT_PATH_ENV] = f"{MOUNT}/{out}"
    env[contract.BASE_DIR_ENV] = f"{MOUNT}/{out}/opt-ml"
    return env


@pytest.mark.parametrize(("hour", "name"), [(NORMAL_HOUR, "normal"), (DRIFT_HOUR, "drift")])
def test_monitor_in_the_serving_image_gives_the_host_results(serve_image, endpoint, hour, name):  # noqa: F811
    host_env = model_monitor_env(endpoint, endpoint / "baseline", hour, f"host-{name}")
    host = run_monitor(host_env)
    assert host.returncode == 0, host.stderr
    env = in_image(serve_image, endpoint, host_env, f"image-{name}")
    options = ["-v", f"{endpoint}:{MOUNT}"]
    for key, value in env.items():
        options += ["-e", f"{key}={value}"]
    proc = dh.docker_run(serve_image, ["monitor"], options=options, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    host_stats, host_violations, _, host_metrics = outputs(endpoint, f"host-{name}")
    stats, violations, report, metrics = outputs(endpoint, f"image-{name}")
    assert violations == host_violations
    assert (name == "normal") == (violations == {"violations": []}), report
    assert stats["recommender"]["unreadable"]["records"] == host_stats["recommender"]["unreadable"]["records"]
    for section in ("traffic", "cold_start", "scores", "catalogue"):
        assert json.dumps(stats["recommender"][section], sort_keys=True) == json.dumps(
            host_stats["recommender"][section], sort_keys=True
        ), section
    assert {m["MetricName"] for m in metrics} == {m["MetricName"] for m in host_metrics}
