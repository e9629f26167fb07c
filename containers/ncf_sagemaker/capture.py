"""SageMaker data capture, read back: the files of an endpoint for a time window, each record's request
and response decoded and fed to an ``ncf_core.monitoring.Window``.

Data capture writes JSON Lines files under ``{endpoint}/{variant}/yyyy/mm/dd/hh/`` (the hour the file
was written, UTC), one invocation a line::

    {"captureData": {"endpointInput":  {"observedContentType": "application/json", "mode": "INPUT",
                                        "data": "...", "encoding": "JSON" | "CSV" | "BASE64"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "...", "encoding": "..."}},
     "eventMetadata": {"eventId": "...", "inferenceTime": "2024-05-01T12:00:00.123Z"},
     "eventVersion": "0"}

Requests are parsed by the endpoint's own wire format (``serving.protocol.parse``), so the monitor reads
exactly what the server read; answers are read back in the shape ``protocol.encode`` wrote them. A line
that cannot be read (not JSON, a field missing, bad base64, an answer that does not fit its request) is
counted and sampled, never fatal; a request the server refuses (415, 400) counts as rejected.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from ncf_core.monitoring import RECOMMEND, SCORES, TOP_ITEMS, Window

from .serving import protocol
from .serving.protocol import RecommendQuery, TopItemsQuery
from .serving.responses import HttpError

INPUT, OUTPUT = "endpointInput", "endpointOutput"
ENCODINGS = ("JSON", "CSV", "BASE64")
FILE_SUFFIX = ".jsonl"
# Capture files sit in the hour they were written; records near an hour's edge may be in the next one.
HOUR_SLACK = timedelta(hours=1)
_HOUR_PARTS = re.compile(r"\d{4}/\d{2}/\d{2}/\d{2}$")


class CaptureError(ValueError):
    """The capture input cannot be analysed at all (an unknown endpoint, a path that does not exist)."""


class Unreadable(ValueError):
    """One capture record cannot be read; the message says why."""


@dataclass(frozen=True)
class TimeWindow:
    start: datetime | None = None
    end: datetime | None = None

    def __contains__(self, t: datetime) -> bool:
        return (self.start is None or t >= self.start) and (self.end is None or t < self.end)

    def hour_may_hold(self, hour: datetime) -> bool:
        """Whether a file written during ``hour`` may hold records of the window."""
        return (self.start is None or hour + timedelta(hours=1) + HOUR_SLACK > self.start) and (
            self.end is None or hour - HOUR_SLACK < self.end
        )


def parse_time(text: str, what: str = "time") -> datetime:
    """An ISO 8601 instant (``2019-12-01T15:20:00Z``; Model Monitor's documented example has stray spaces,
    ``2019-12-01T15: 20: 00Z``, which are ignored); naive times are UTC."""
    cleaned = "".join(str(text).split())
    try:
        t = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an ISO 8601 time such as 2024-05-01T12:00:00Z") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# --------------------------------------------------------------------------------------------- files
def capture_files(source: Path, endpoint: str | None, window: TimeWindow) -> list[tuple[Path, bool]]:
    """The capture files of ``endpoint`` (every endpoint under ``source`` when None) that may hold
    records of ``window``, each with whether it was written within the window (a file of a neighbouring
    hour is read only for its records in the window: its unreadable lines belong to its own window).
    Raises ``CaptureError`` for a source that does not exist or an endpoint with no directory beside
    others."""
    if not source.is_dir():
        raise CaptureError(f"the capture input {source} is not a directory")
    root = source
    if endpoint:
        root = source / endpoint
        if not root.is_dir():
            others = sorted(p.name for p in source.iterdir() if p.is_dir())
            if others:
                raise CaptureError(
                    f"no data capture for endpoint {endpoint!r} under {source}: it holds "
                    f"{', '.join(repr(o) for o in others[:10])}{' ...' if len(others) > 10 else ''}"
                )
            return []  # nothing captured in the window at all: "no data", not an error
    files = []
    for path in sorted(root.rglob("*" + FILE_SUFFIX)):
        hour = _file_hour(path)
        if hour is None:
            files.append((path, True))
        elif window.hour_may_hold(hour):
            files.append((path, hour in window))
    return files


def _file_hour(path: Path) -> datetime | None:
    parts = path.parent.parts[-4:]
    if len(parts) == 4 and _HOUR_PARTS.fullmatch("/".join(parts)):
        try:
            return datetime(*map(int, parts), tzinfo=UTC)
        except ValueError:
            return None
    return None


def variant_of(path: Path, source: Path, endpoint: str | None) -> str | None:
    """``{endpoint}/{variant}/yyyy/mm/dd/hh/file``: the variant, when the file sits in that layout."""
    try:
        rel = path.relative_to(source / endpoint if endpoint else source).parts
    except ValueError:
        return None
    depth = 6 if endpoint else 7  # variant/y/m/d/h/file, or endpoint/variant/y/m/d/h/file
    return rel[-6] if len(rel) >= depth else None


# --------------------------------------------------------------------------------------------- records
def read_files(
    files: Sequence[tuple[Path, bool]],
    window: Window,
    period: TimeWindow,
    outputs: bool = True,
    source: Path | None = None,
    endpoint: str | None = None,
) -> int:
    """Feed every record of ``files`` in ``period`` to ``window``; returns how many were outside it."""
    outside = 0
    for path, own in files:
        variant = variant_of(path, source, endpoint) if source is not None else None
        name = _relative(path, source)
        try:
            with path.open("rb") as fh:
                lines = fh.read().split(b"\n")
        except OSError as exc:
            if own:
                window.unreadable_record(name, f"cannot read the file: {exc}")
            continue
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                if not read_record(line, window, period, outputs, variant):
                    outside += 1
            except Unreadable as exc:
                if own:
                    window.unreadable_record(
                        f"{name}:{number}", str(exc), line[:200].decode("utf-8", "replace")
                    )
    return outside


def _relative(path: Path, source: Path | None) -> str:
    try:
        return str(path.relative_to(source)) if source is not None else str(path)
    except ValueError:
        return str(path)


def read_record(line: bytes, window: Window, period: TimeWindow, outputs: bool, variant: str | None) -> bool:
    """One capture line into ``window``; False when it lies outside ``period``. Raises ``Unreadable``."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise Unreadable(f"not a JSON object: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("captureData"), dict):
        raise Unreadable("no 'captureData' object")
    meta = doc.get("eventMetadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("inferenceTime"), str):
        raise Unreadable("no 'eventMetadata.inferenceTime'")
    try:
        when = parse_time(meta["inferenceTime"], "inferenceTime")
    except ValueError as exc:
        raise Unreadable(str(exc)) from None
    if when not in period:
        return False
    # Everything is read before anything is counted: a record is counted whole, or unreadable.
    data = doc["captureData"]
    content_type, body = payload(data.get(INPUT), INPUT)
    output = data.get(OUTPUT) if outputs else None
    response = payload(output, OUTPUT) if output is not None else None
    media = _media(content_type)
    try:
        kind = protocol.request_kind(content_type or None)
        batch = protocol.parse(body, kind)
    except HttpError:  # the server refused it too (415 / 400): the client got an error
        window.request(media, 1, False, variant)
        window.rejected()
        if response is not None:
            window.response_type(_media(response[0]))
            window.error_response()
        return True
    found: list[Answer] | None = []
    if response is not None:
        try:
            found = answers(batch, response[1], _media(response[0]))
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, csv.Error) as exc:
            raise Unreadable(f"{OUTPUT} does not fit its request: {exc}") from None
    records = len(batch.queries[0].users) if kind == "csv" else len(batch.queries)
    window.request(media, records, kind != "json", variant)
    for query in batch.queries:
        if isinstance(query, TopItemsQuery):
            window.query(TOP_ITEMS, query.users, query.items)
        elif isinstance(query, RecommendQuery):
            window.query(RECOMMEND, query.users, query.candidates or ())
        else:
            window.query(SCORES, query.users, query.items)
    if response is None:
        window.no_output()
        return True
    window.response_type(_media(response[0]))
    if found is None:
        window.error_response()
    else:
        for answer in found:
            window.answer(*answer)
    return True


def payload(part: Any, name: str) -> tuple[str, bytes]:
    """(observed content type, body bytes) of ``captureData.endpointInput`` / ``endpointOutput``."""
    if not isinstance(part, dict):
        raise Unreadable(f"no '{name}' object")
    data, encoding = part.get("data"), part.get("encoding")
    content_type = part.get("observedContentType")
    if not isinstance(data, str):
        raise Unreadable(f"'{name}.data' is not a string")
    if content_type is not None and not isinstance(content_type, str):
        raise Unreadable(f"'{name}.observedContentType' is not a string")
    if encoding == "BASE64":
        try:
            return content_type or "", base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Unreadable(f"'{name}.data' is not valid base64: {exc}") from None
    if encoding in ("JSON", "CSV"):
        return content_type or "", data.encode("utf-8", "surrogatepass")
    raise Unreadable(f"'{name}.encoding' is {encoding!r}, not one of {', '.join(ENCODINGS)}")


def _media(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


# --------------------------------------------------------------------------------------------- answers
# (kind, top-K items or None, scores or None, fallback flag(s) or None): ``Window.answer``'s arguments.
Answer = tuple[str, list | None, list[float] | None, Any]


def answers(batch: protocol.Batch, body: bytes, media: str) -> list[Answer] | None:
    """A response read back in the shape ``protocol.encode`` wrote it for ``batch``; None for an error
    reply (``{"error": ...}``). Raises ValueError (or KeyError, TypeError) when it does not fit."""
    try:
        form = protocol.request_kind(media or None)  # the same media names as requests
    except HttpError:
        raise ValueError(f"an answer in {media!r}, which the endpoint never sends") from None
    out: list[Answer] = []
    if form == "csv":
        if batch.kind != "csv":
            raise ValueError("a CSV answer to a JSON request")
        rows = [r for r in csv.reader(io.StringIO(body.decode("utf-8"))) if r]
        query = batch.queries[0]
        if len(rows) != len(query.users):
            raise ValueError(f"{len(rows)} CSV rows answer {len(query.users)} request rows")
        if isinstance(query, RecommendQuery):
            return [(RECOMMEND, row, None, None) for row in rows]
        scores = [float(r[0]) for r in rows]
        if not all(math.isfinite(x) for x in scores):
            raise ValueError("a CSV score that is not a finite number")
        return [(SCORES, None, scores, None)]
    jsonlines = form == "jsonlines"
    docs = [orjson.loads(x) for x in body.split(b"\n") if x.strip()] if jsonlines else [orjson.loads(body)]
    if not jsonlines and len(docs) == 1 and _is_error(docs[0]):
        return None
    if batch.kind == "json":
        _document(batch.queries[0], _only(docs), out)
    elif batch.kind == "jsonlines":
        docs = docs if jsonlines else _list(_only(docs))
        if len(docs) != len(batch.queries):
            raise ValueError(f"{len(docs)} answers to {len(batch.queries)} records")
        for query, doc in zip(batch.queries, docs, strict=True):
            _document(query, doc, out)
    else:
        _rows(batch.queries[0], docs if jsonlines else _list(_only(docs)), out)
    return out


def _is_error(doc: Any) -> bool:
    return isinstance(doc, dict) and "error" in doc


def _only(docs: list) -> Any:
    if len(docs) != 1:
        raise ValueError(f"{len(docs)} JSON documents where one was expected")
    return docs[0]


def _list(doc: Any) -> list:
    if not isinstance(doc, list):
        raise ValueError("not a JSON array")
    return doc


def _scores(values: Any) -> list[float]:
    scores = _list(values)
    if not all(type(x) is float or type(x) is int for x in scores):
        raise ValueError("scores that are not numbers")
    return scores


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"a fallback flag that is not true or false: {value!r}")
    return value


def _document(query: protocol.Query, doc: Any, out: list[Answer]) -> None:
    if isinstance(query, TopItemsQuery):
        out.append((TOP_ITEMS, _list(doc), None, None))
    elif isinstance(query, RecommendQuery):
        recs = _list(doc["recommendations"])
        if len(recs) != len(query.users):
            raise ValueError(f"{len(recs)} recommendations for {len(query.users)} users")
        out += [(RECOMMEND, _list(r["items"]), _scores(r["scores"]), _flag(r["fallback"])) for r in recs]
    else:
        scores, fallback = _scores(doc["scores"]), [_flag(f) for f in _list(doc["fallback"])]
        if len(scores) != len(query.users) or len(fallback) != len(scores):
            raise ValueError(f"{len(scores)} scores for {len(query.users)} pairs")
        out.append((SCORES, None, scores, fallback))


def _rows(query: protocol.Query, rows: list, out: list[Answer]) -> None:
    if len(rows) != len(query.users):
        raise ValueError(f"{len(rows)} answer rows for {len(query.users)} request rows")
    if isinstance(query, RecommendQuery):
        out += [(RECOMMEND, _list(r["items"]), _scores(r["scores"]), _flag(r["fallback"])) for r in rows]
    else:
        scores = _scores([row["score"] for row in rows])
        out.append((SCORES, None, scores, [_flag(row["fallback"]) for row in rows]))
