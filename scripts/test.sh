#!/usr/bin/env bash
# The project's one test command: install the pinned dependencies into the current Python, then run pytest.
# Container tests need a Docker engine (.ci/docker_setup.sh starts one); without it they skip, except in
# CI (CI=true) where a skipped container test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[train,serve,tracking,dev,mlops]'
exec "$PYTHON" -m pytest -q "$@"
