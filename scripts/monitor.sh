#!/usr/bin/env bash
# Schedule the hourly `monitor` analysis of an endpoint (EventBridge Scheduler), with CloudWatch alarms.
# All logic lives in scripts/ncf_launch/monitor.py (Python + boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs boto3 (pip install -e '.[aws]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_launch monitor "$@"
