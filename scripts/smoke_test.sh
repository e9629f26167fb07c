#!/usr/bin/env bash
# Invoke an endpoint (or a local `serve`) with the seed and top-K requests; exit 1 on errors or a slow p99.
# All logic lives in scripts/ncf_launch/smoke_test.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 for --endpoint (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch smoke_test "$@"
