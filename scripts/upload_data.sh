#!/usr/bin/env bash
# Upload a dataset (NCF-format prefix or raw ratings file) under an S3 prefix, skipping unchanged files.
# All logic lives in scripts/ncf_launch/upload_data.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch upload_data "$@"
