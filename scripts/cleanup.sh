#!/usr/bin/env bash
# Delete an endpoint with its endpoint configs and models (created by deploy.sh), after asking.
# All logic lives in scripts/ncf_launch/cleanup.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch cleanup "$@"
