"""python -m ncf_launch COMMAND [ARGS...]  (what scripts/COMMAND.sh runs)."""

from __future__ import annotations

import importlib
import sys

from .extras import check_at_start, needs_extra

COMMANDS = (
    "build_and_push", "upload_data", "train", "deploy", "invoke", "cleanup", "registry", "infra",
    "monitor", "smoke_test",
)  # fmt: skip
# The paths that need no AWS, hence no boto3 (the aws extra): every other one needs it.
WITHOUT_AWS = {"train": "--local", "invoke": "--local", "build_and_push": "--no-push", "smoke_test": "--url"}


def needs_aws(command: str, args: list[str]) -> bool:
    flag = WITHOUT_AWS.get(command)
    return flag is None or not any(a == flag or a.startswith(f"{flag}=") for a in args)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m ncf_launch {{{','.join(COMMANDS)}}} [ARGS...]", file=sys.stderr)
        return 2

    def run() -> int:
        if needs_aws(argv[0], argv[1:]):
            check_at_start(f"{argv[0]}.sh", "aws", ("boto3", "botocore"), argv[1:])
        module = importlib.import_module(f"{__package__}.{argv[0]}")
        return module.main(argv[1:])

    return needs_extra(f"{argv[0]}.sh", "aws", run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
