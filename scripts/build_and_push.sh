#!/usr/bin/env bash
# Build the training and serving images, tag them with the git revision and latest, push them to ECR.
# All logic lives in scripts/ncf_launch/build_and_push.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch build_and_push "$@"
