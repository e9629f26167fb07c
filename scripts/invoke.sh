#!/usr/bin/env bash
# Send a request (the seed payload by default) to a SageMaker endpoint, or with --local URL to a local container.
# All logic lives in scripts/ncf_launch/invoke.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch invoke "$@"
