"""python -m ncf_mlops [ARGS...]: scripts/pipeline.sh."""

from __future__ import annotations

import sys

from ncf_launch.extras import check_at_start, needs_extra


def run() -> int:
    check_at_start("pipeline.sh", "mlops", ("sagemaker", "boto3"), sys.argv[1:])
    from .commands import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(needs_extra("pipeline.sh", "mlops", run))
