#!/usr/bin/env bash
# Start a SageMaker training job with our image (or, with --local, run the same job here in Docker).
# All logic lives in scripts/ncf_launch/train.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch train "$@"
