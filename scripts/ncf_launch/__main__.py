"""python -m ncf_launch COMMAND [ARGS...]  (what scripts/COMMAND.sh runs)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = ("build_and_push", "upload_data", "train", "deploy", "invoke", "cleanup", "registry")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m ncf_launch {{{','.join(COMMANDS)}}} [ARGS...]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__package__}.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
