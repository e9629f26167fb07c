"""The one way this project writes a JSON file: indented, sorted keys, replaced whole.

Written to a temporary file first and renamed, so a reader never sees half a document and a process killed
mid-write (SIGTERM on a spot job) leaves the previous version. Imports neither torch nor numpy: the launch
scripts use it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` to ``path`` (parent directories created) atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
