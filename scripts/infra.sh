#!/usr/bin/env bash
# Create or update the AWS stack of mlops/infra/template.yaml and print its variables for `eval`.
# All logic lives in scripts/ncf_launch/infra.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch infra "$@"
