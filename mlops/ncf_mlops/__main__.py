"""python -m ncf_mlops [ARGS...]: scripts/pipeline.sh."""

from __future__ import annotations

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
