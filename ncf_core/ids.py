"""How a request's id is read against a model's raw ids: one rule for serving (``inference.IdMap``) and for
monitoring (``monitoring.IdSet``), so that an id the endpoint answers is never counted unknown, or the
reverse. Torch-free, like ``monitoring``."""

from __future__ import annotations

import re

_ASCII_INT = re.compile(r"-?[0-9]{1,19}")


def id_key(raw: object, numeric: bool) -> object | None:
    """``raw`` as a key of a map whose ids are all ints (``numeric``) or strings; None when it cannot be one.

    A numeric map also accepts numeric ASCII strings (" 12 " → 12; ASCII digits only: int() would also read
    "٣" as 3) and integral floats (12.0 → 12); a string map also accepts ints (12 → "12"). bool is never an
    id. Anything else is returned as it is, for the caller's lookup to miss (unhashable values raise there).
    """
    if isinstance(raw, bool):
        return None
    if numeric:
        if isinstance(raw, str):
            text = raw.strip()
            return int(text) if _ASCII_INT.fullmatch(text) else None
        if isinstance(raw, float):
            return int(raw) if raw.is_integer() else None
        return raw
    if isinstance(raw, int):
        return str(raw)
    return raw
