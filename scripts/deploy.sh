#!/usr/bin/env bash
# Create or update a SageMaker endpoint for our serving image: single or multi-model, canary, data capture.
# All logic lives in scripts/ncf_launch/deploy.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch deploy "$@"
