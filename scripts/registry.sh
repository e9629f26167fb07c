#!/usr/bin/env bash
# The model registry: list a model package group's versions with their metrics; approve or reject one.
# All logic lives in scripts/ncf_launch/registry.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch registry "$@"
