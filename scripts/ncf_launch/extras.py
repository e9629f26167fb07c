"""Which extra of pyproject.toml a launcher needs, and a one-line answer instead of a traceback without it.

Every scripts/*.sh runs ``python -m ncf_launch`` or ``python -m ncf_mlops``; both wrap their command in
``needs_extra``, so a missing package ends in the ``pip install -e '.[extra]'`` that brings it (exit 2).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "boto3": "aws",
    "botocore": "aws",
    "sagemaker": "mlops",
    "mlflow": "tracking",
    "numpy": "",
    "torch": "",
    "pandas": "train",
    "pyarrow": "train",
}


def install_hint(extra: str) -> str:
    return f"pip install -e '.[{extra}]'" if extra else "pip install -e ."


def needs_extra(script: str, extra: str, run: Callable[[], int]) -> int:
    """``run()``; a ModuleNotFoundError becomes one sentence naming the install command, exit code 2."""
    try:
        return run()
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        wanted = EXTRA_OF.get(top, extra)
        print(
            f"[{script}] error: {script} needs the Python package {top or exc.name!r}, not installed "
            f"for {sys.executable}: run `{install_hint(wanted)}` in the repository root (README, Install)",
            file=sys.stderr,
        )
        return 2


def missing(modules: Sequence[str]) -> str | None:
    """The first of ``modules`` that cannot be imported, or None."""
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def check_at_start(script: str, extra: str, modules: Sequence[str], argv: Sequence[str]) -> None:
    """Before parsing anything (but ``--help``): the modules the command needs, or ModuleNotFoundError."""
    if "-h" in argv or "--help" in argv:
        return
    absent = missing(modules)
    if absent is not None:
        raise ModuleNotFoundError(f"No module named {absent!r}", name=absent)
