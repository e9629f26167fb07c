#!/usr/bin/env bash
# The NCF SageMaker pipeline: print its definition (no AWS), upsert it, start it, follow an execution.
# All logic lives in mlops/ncf_mlops (Python, the SageMaker SDK 2.x and boto3); run with --help for the options.
# PYTHON selects the interpreter (default python3); it needs the mlops extra (pip install -e '.[mlops]').
set -euo pipefail
exec "${PYTHON:-python3}" -m ncf_mlops "$@"
