"""Parse a large JSON request object a slice at a time, so one worker's /ping is never starved.

One ``orjson.loads`` call holds the GIL until it returns: on a 6 MB body of ``{"pairs": [[u, i], ...]}``
that was 0.15–1.4 s on a 2-core machine, during which the worker's event loop (and /ping) stood still;
batch transform allows 100 MB bodies. The bulk of a large request is always a top-level array (``pairs``,
``user``/``item``, ``users``, ``candidates``), so ``loads`` finds those arrays' element boundaries with a
vectorised scan (numpy: quotes, escapes, brackets and commas outside strings), parses each array in
slices of at most ``SLICE_BYTES``, and parses the rest of the document (the arrays replaced by
placeholders) once.

The result is exactly ``orjson.loads(data)``. Whenever the document is not a plain object of that shape,
or any piece fails to parse, ``loads`` returns ``None`` and the caller parses the whole body, which then
raises orjson's own error for invalid JSON: the slicing never decides what is valid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

# The most one orjson call parses here (~5–25 ms of GIL on a slow core), and the smallest body worth
# slicing (below it one call is as short as a slice).
SLICE_BYTES = 128 * 1024
MIN_BYTES = 1024 * 1024
# A body with more quotes after a backslash than this is checked the slow way (the whole-body parse).
MAX_ESCAPED_QUOTES = 4096
# The structure is scanned this many bytes at a time (a few int32 temporaries of this length).
SCAN_BLOCK = 2**20

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_LIST, _END_LIST, _OBJECT, _END_OBJECT, _COMMA = (ord(c) for c in "[]{},")
_WHITESPACE = b" \t\r\n"
_PLACEHOLDER = "\x00ncf-slice-{}"


def loads(data: bytes, slice_bytes: int = SLICE_BYTES, min_bytes: int = MIN_BYTES) -> Any | None:
    """``orjson.loads(data)`` for a large JSON object with large top-level arrays, or ``None``."""
    if len(data) < min_bytes:
        return None
    try:
        return _loads(data, slice_bytes)
    except (orjson.JSONDecodeError, _NotSliceable):
        return None


class _NotSliceable(Exception):
    """The document is not one this module slices (or it is invalid): parse it whole."""


def _unmark_escaped(b: np.ndarray, start: int, quote: np.ndarray, budget: int) -> int:
    """Clear the quotes of the block at ``start`` that are text, not string ends (after an odd run of
    backslashes); returns how many quotes after a backslash it looked at (more than ``budget``: none)."""
    after_backslash = np.flatnonzero(quote) + start
    after_backslash = after_backslash[
        (after_backslash > 0) & (b[np.maximum(after_backslash - 1, 0)] == _BACKSLASH)
    ]
    if len(after_backslash) > budget:
        raise _NotSliceable
    for q in after_backslash.tolist():
        run = 0
        while q - run - 1 >= 0 and b[q - run - 1] == _BACKSLASH:
            run += 1
        if run % 2:
            quote[q - start] = False
    return len(after_backslash)


def _scan(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The structure outside strings, a block at a time (bounded memory, short GIL holds).

    Returns every bracket's position, the depth after it and whether it opens a list, and the commas at
    depth 2 (between the elements of the top-level object's arrays).
    """
    inside, level, looked_at = 0, 0, 0
    positions, depths, lists, commas = [], [], [], []
    for start in range(0, len(b), SCAN_BLOCK):
        block = b[start : start + SCAN_BLOCK]
        quote = block == _QUOTE
        looked_at += _unmark_escaped(b, start, quote, MAX_ESCAPED_QUOTES - looked_at)
        in_string = np.bitwise_xor.accumulate(quote.view(np.uint8)) ^ np.uint8(inside)
        inside = int(in_string[-1])
        outside = in_string == 0
        opens = ((block == _LIST) | (block == _OBJECT)) & outside
        closes = ((block == _END_LIST) | (block == _END_OBJECT)) & outside
        depth = np.cumsum(opens.view(np.int8) - closes.view(np.int8), dtype=np.int32) + level
        level = int(depth[-1])
        at = np.flatnonzero(opens | closes)
        positions.append(at + start)
        depths.append(depth[at])
        lists.append(block[at] == _LIST)
        commas.append(np.flatnonzero((block == _COMMA) & outside & (depth == 2)) + start)
    if inside or not positions:
        raise _NotSliceable  # an unterminated string, or nothing at all
    return tuple(np.concatenate(parts) for parts in (positions, depths, lists, commas))  # type: ignore[return-value]


def _loads(data: bytes, slice_bytes: int) -> Any | None:
    b = np.frombuffer(data, np.uint8)
    brackets, depth, lists, element_commas = _scan(b)
    if len(brackets) < 2:
        return None
    start = len(data) - len(data.lstrip(_WHITESPACE))
    if b[brackets[0]] != _OBJECT or brackets[0] != start or depth.min() < 0 or depth[-1] != 0:
        return None
    if np.any(depth[:-1] == 0):  # something after the top-level object closes: not ours to judge
        return None
    # Top-level arrays: a "[" that takes the depth to 2, up to the next bracket back at depth 1.
    opens = np.flatnonzero((depth == 2) & lists)
    if len(opens) == 0:
        return None
    ends_at = np.flatnonzero(depth == 1)
    closes = ends_at[np.searchsorted(ends_at, opens)]
    pairs = zip(brackets[opens].tolist(), brackets[closes].tolist(), strict=True)
    spans = [(lo, hi) for lo, hi in pairs if hi - lo > slice_bytes]
    if not spans:
        return None

    skeleton, arrays, last = [], {}, 0
    for n, (lo, hi) in enumerate(spans):
        key = _PLACEHOLDER.format(n)
        token = orjson.dumps(key)
        if token in data:
            return None
        skeleton += [data[last:lo], token]
        last = hi + 1
        inner = element_commas[np.searchsorted(element_commas, lo) : np.searchsorted(element_commas, hi)]
        arrays[key] = _parse_array(data, lo, hi, inner, slice_bytes)
    skeleton.append(data[last:])
    doc = orjson.loads(b"".join(skeleton))
    if not isinstance(doc, dict):
        return None
    # Each placeholder must come back once, as the value it stood for (a duplicate key may have dropped
    # it, or a user's string may spell it with other escapes): anything else is parsed whole.
    found = [name for name, value in doc.items() if isinstance(value, str) and value in arrays]
    if len(found) != len(arrays) or {doc[name] for name in found} != set(arrays):
        return None
    for name in found:
        doc[name] = arrays[doc[name]]
    return doc


def _parse_array(data: bytes, lo: int, hi: int, commas: np.ndarray, slice_bytes: int) -> list:
    """The array ``data[lo:hi + 1]``, parsed in runs of whole elements of about ``slice_bytes``."""
    # Cut at the element commas nearest each multiple of slice_bytes (each cut comma is dropped).
    targets = np.arange(lo + slice_bytes, hi, slice_bytes)
    cuts: list[int] = []
    if len(commas):
        cuts = np.unique(commas[np.minimum(np.searchsorted(commas, targets), len(commas) - 1)]).tolist()
    out: list = []
    begin = lo + 1
    for cut in [*cuts, hi]:
        piece = data[begin:cut]
        if not piece.strip(_WHITESPACE):  # an empty element ("[1,,2]" or "[1,]"): invalid
            raise _NotSliceable
        out += orjson.loads(b"[" + piece + b"]")
        begin = cut + 1
    return out
