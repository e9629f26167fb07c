"""The /invocations wire format: content negotiation, request parsing and response encoding.

Pure functions on bytes and plain objects (no web framework, no model), so every error case is testable
without a server. Parsing checks the *form* of a request (JSON types, field names, ids that are ids);
whether its values make sense for the model (``k`` within the catalogue, known items) is
``ncf_core.inference.Recommender``'s to say. Every client mistake raises ``BadRequest`` (or 415/406) with a
message naming the field and the record. Encoding writes the domain's own results (``Recommendation``,
``PairScores``) straight to bytes.

Request shapes (one JSON object; ``application/jsonlines`` carries one per line):

- the seed workshop's pairs  ``{"user": [0, 0, ...], "item": [25, 1064, ...], "k": 10}``
  → a bare JSON array of the top-``k`` item ids (``k`` optional, default 10)
- top-K recommendations      ``{"users": [...], "k": 10, "candidates": [...], "exclude_seen": true}``
  → ``{"recommendations": [{"user", "items", "scores", "fallback"}, ...]}``
- pair scores                ``{"pairs": [[user, item], ...]}`` → ``{"scores": [...], "fallback": [...]}``

``text/csv`` (batch transform) rows are ``user`` (recommendations; ``k``/``exclude_seen`` from the custom
attributes header) or ``user,item`` (scores): one output row per input row, in order.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ncf_core.config import DEFAULT_TOP_K

from . import sliced_json
from .responses import BadRequest, NotAcceptable, UnsupportedMediaType

if TYPE_CHECKING:
    from ncf_core.inference import PairScores, Recommendation

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
_JSONLINES_ALIASES = frozenset({JSONLINES, "application/jsonl", "application/x-jsonlines"})
# What each request kind can answer in, default first. CSV answers only CSV requests: a JSON request may
# hold many users, which has no one-row-per-record CSV form.
_RESPONSE_TYPES: dict[str, tuple[str, ...]] = {
    "json": (JSON,),
    "jsonlines": (JSONLINES, JSON),
    "csv": (CSV, JSONLINES, JSON),
}
Kind = Literal["json", "jsonlines", "csv"]

_SEED_FIELDS = frozenset({"user", "item", "k"})
_RECOMMEND_FIELDS = frozenset({"users", "k", "candidates", "exclude_seen"})
_SCORE_FIELDS = frozenset({"pairs"})
_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_ATTRIBUTE_SPLIT = re.compile(r"[;,]")
_INT_ONLY = {int}
CHECK_EVERY = 256
ID_SLICE = 65_536
# Raw ids travel as int64 (numpy id tables, every JSON encoder): a larger integer is a client error, not a
# crash when its answer is encoded.
MAX_ID = 2**63 - 1


# --------------------------------------------------------------------------------------------- queries
# ``where`` names the record in error messages: "body", "line 3" (JSON Lines) or "CSV".
@dataclass(frozen=True, slots=True)
class TopItemsQuery:
    """The workshop's request: score each (user, item) pair, answer the items of the best ``k`` pairs."""

    users: list
    items: list
    k: int
    where: str = "body"


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    users: list
    k: int
    candidates: list | None
    exclude_seen: bool
    where: str = "body"


@dataclass(frozen=True, slots=True)
class ScoreQuery:
    users: list
    items: list
    where: str = "body"


Query = TopItemsQuery | RecommendQuery | ScoreQuery


@dataclass(frozen=True, slots=True)
class Batch:
    """What the default ``input_fn`` returns: the queries of one request and how they arrived.

    ``kind == "csv"`` always holds exactly one query whose users (or pairs) are the rows.
    """

    queries: list[Query]
    kind: Kind


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the default ``predict_fn`` returns: per query, in order, the ``Recommender``'s own answer —
    a ``Recommendation`` (top items of pairs), a list of them (top-K per user) or ``PairScores``."""

    batch: Batch
    results: list[Recommendation | list[Recommendation] | PairScores]


# --------------------------------------------------------------------------------------------- negotiation
@functools.lru_cache(maxsize=256)
def request_kind(content_type: str | None) -> Kind:
    """The request body's format from its Content-Type (absent means JSON); anything else is a 415."""
    if not content_type:
        return "json"
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    charset = _param(params, "charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"charset {charset!r} is not supported: send UTF-8")
    if media == JSON:
        return "json"
    if media in _JSONLINES_ALIASES:
        return "jsonlines"
    if media == CSV:
        return "csv"
    raise UnsupportedMediaType(f"Content-Type {media!r} is not supported: use {JSON}, {JSONLINES} or {CSV}")


@functools.lru_cache(maxsize=256)
def response_type(accept: str | None, kind: Kind) -> str:
    """The response media type for an Accept header (q-values and wildcards honoured), else 406."""
    offered = _RESPONSE_TYPES[kind]
    if not accept or not accept.strip():
        return offered[0]
    ranges = []
    for position, part in enumerate(accept.split(",")):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        if not media:
            continue
        try:
            q = float(_param(params, "q") or 1.0)
        except ValueError:
            q = 0.0
        if q > 0:
            ranges.append((-q, position, media))
    for _, _, media in sorted(ranges):
        if media in ("*/*", "*"):
            return offered[0]
        if media.endswith("/*"):
            prefix = media[:-1]
            for candidate in offered:
                if candidate.startswith(prefix):
                    return candidate
        elif media in _JSONLINES_ALIASES and JSONLINES in offered:
            return JSONLINES
        elif media in offered:
            return media
    raise NotAcceptable(f"cannot answer in {accept!r}: this request can be answered in {', '.join(offered)}")


def _param(params: str, name: str) -> str | None:
    for item in params.split(";"):
        key, _, value = item.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None


def custom_attributes(header: str | None) -> dict[str, str]:
    """``X-Amzn-SageMaker-Custom-Attributes`` as ``key=value`` pairs split on ``;`` or ``,``.

    The header is free-form by SageMaker's contract: parts that are not ``key=value`` are ignored.
    """
    out: dict[str, str] = {}
    if header:
        for part in _ATTRIBUTE_SPLIT.split(header):
            key, sep, value = part.partition("=")
            if sep and key.strip():
                out[key.strip().lower()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------- parsing
def parse(
    body: bytes,
    kind: Kind,
    attributes: dict[str, str] | None = None,
    check: Callable[[], None] | None = None,
) -> Batch:
    """Validate a request body into a ``Batch``; raises ``BadRequest`` saying what is wrong.

    ``check`` is called every ``CHECK_EVERY`` JSON Lines records: it raises to abandon the parse.
    """
    if kind == "json":
        return Batch([parse_query(_loads(body, "body"))], "json")
    if kind == "jsonlines":
        return Batch(_parse_jsonlines(body, check), "jsonlines")
    return Batch([_parse_csv(body, attributes or {})], "csv")


def _loads(data: bytes, where: str) -> Any:
    doc = sliced_json.loads(data)  # a large object a slice at a time: /ping is not starved meanwhile
    if doc is not None:
        return doc
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{where} is not valid JSON: {exc}") from None


def parse_query(doc: Any, where: str = "body") -> Query:
    """One JSON request object → a query (the three shapes are told apart by their fields)."""
    if not isinstance(doc, dict):
        raise BadRequest(
            f"{where} must be a JSON object with 'user' and 'item', 'users', or 'pairs'; "
            f"got {_type_name(doc)}"
        )
    if "pairs" in doc:
        _only(doc, _SCORE_FIELDS, "a pair-score", where)
        users, items = _pairs(doc["pairs"], where)
        return ScoreQuery(users, items, where)
    if "users" in doc:
        _only(doc, _RECOMMEND_FIELDS, "a recommendation", where)
        candidates = doc.get("candidates")
        exclude = doc.get("exclude_seen", True)
        if not isinstance(exclude, bool):
            raise BadRequest(f"{where}: 'exclude_seen' must be true or false, got {_type_name(exclude)}")
        return RecommendQuery(
            ids(doc["users"], "users", where),
            _k(doc.get("k", DEFAULT_TOP_K), where),
            None if candidates is None else ids(candidates, "candidates", where),
            exclude,
            where,
        )
    if "user" in doc or "item" in doc:
        _only(doc, _SEED_FIELDS, "a user/item pair", where)
        if "user" not in doc or "item" not in doc:
            raise BadRequest(f"{where}: 'user' and 'item' go together (two equal-length arrays of ids)")
        users = ids(doc["user"], "user", where)
        items = ids(doc["item"], "item", where)
        if len(users) != len(items):
            raise BadRequest(
                f"{where}: 'user' has {len(users)} ids but 'item' has {len(items)}: they must pair up"
            )
        return TopItemsQuery(users, items, _k(doc.get("k", DEFAULT_TOP_K), where), where)
    raise BadRequest(
        f"{where} needs 'user' and 'item' (top items of pairs), 'users' (recommendations) or 'pairs' "
        f"(scores); got fields {sorted(doc)}"
    )


def _only(doc: dict, allowed: frozenset[str], shape: str, where: str) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise BadRequest(
            f"{where}: unknown field(s) {sorted(unknown)}; {shape} request takes {sorted(allowed)}"
        )


def ids(value: Any, field: str, where: str = "body") -> list:
    """A non-empty array of raw ids: non-negative integers or non-empty strings."""
    if not isinstance(value, list):
        raise BadRequest(f"{where}: '{field}' must be an array of ids, got {_type_name(value)}")
    if not value:
        raise BadRequest(f"{where}: '{field}' is empty")
    # Fast path for the common all-integer array: C-level passes only (bool is not int here), a slice at a
    # time, so a million ids never hold the GIL (and /ping) in one call.
    if all(_plain_ids(value[i : i + ID_SLICE]) for i in range(0, len(value), ID_SLICE)):
        return value
    for i, x in enumerate(value):
        if type(x) is int:
            if x < 0:
                raise BadRequest(f"{where}: {field}[{i}] is {x}: ids are never negative")
            if x > MAX_ID:
                raise BadRequest(f"{where}: {field}[{i}] is {_short(x)}: integer ids must fit in 64 bits")
        elif isinstance(x, str):
            if not x.strip():
                raise BadRequest(f"{where}: {field}[{i}] is an empty string")
        else:
            raise BadRequest(f"{where}: {field}[{i}] must be an integer or string id, got {_type_name(x)}")
    return value


def _plain_ids(chunk: list) -> bool:
    return set(map(type, chunk)) == _INT_ONLY and min(chunk) >= 0 and max(chunk) <= MAX_ID


def _k(value: Any, where: str) -> int:
    """An integer (its range is the model's to check: ``Recommender``)."""
    if type(value) is not int:
        raise BadRequest(f"{where}: 'k' must be an integer, got {_type_name(value)}")
    return value


def _pairs(value: Any, where: str) -> tuple[list, list]:
    if not isinstance(value, list):
        raise BadRequest(f"{where}: 'pairs' must be an array of [user, item] arrays, got {_type_name(value)}")
    if not value:
        raise BadRequest(f"{where}: 'pairs' is empty")
    users, items = [], []
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadRequest(f"{where}: pairs[{i}] must be a [user, item] array, got {_short(pair)}")
        users.append(pair[0])
        items.append(pair[1])
    return ids(users, "pairs[*][0]", where), ids(items, "pairs[*][1]", where)


def _parse_jsonlines(body: bytes, check: Callable[[], None] | None = None) -> list[Query]:
    queries = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if check is not None and number % CHECK_EVERY == 0:
            check()
        if line.strip():
            where = f"line {number}"
            queries.append(parse_query(_loads(line, where), where))
    if not queries:
        raise BadRequest("the jsonlines body holds no records")
    return queries


def _parse_csv(body: bytes, attributes: dict[str, str]) -> Query:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the CSV body is not UTF-8 text: {exc}") from None
    # One row at a time into the columns: a million row lists kept and then freed together would hold the
    # GIL for ~0.1 s when they go.
    columns: list[list] = []
    width = number = 0
    try:
        for raw in csv.reader(io.StringIO(text)):
            row = [field.strip() for field in raw]
            if not any(row):
                continue
            number += 1
            if number == 1:
                width = len(row)
                if width not in (1, 2):
                    raise BadRequest(
                        f"CSV row 1 has {width} fields: rows are 'user' (recommend) or 'user,item' (score)"
                    )
                columns = [[] for _ in range(width)]
            elif len(row) != width:
                raise BadRequest(
                    f"CSV row {number} has {len(row)} fields, row 1 has {width}: rows must agree"
                )
            for column, field in zip(columns, row, strict=True):
                if _CANONICAL_INT.fullmatch(field):
                    if len(field) > 20:  # far past int64, and int() refuses past 4,300 digits
                        raise BadRequest(f"CSV row {number}: id {_short(field)} does not fit in 64 bits")
                    column.append(int(field))
                else:
                    column.append(field)
    except csv.Error as exc:
        raise BadRequest(f"the CSV body is malformed: {exc}") from None
    if not number:
        raise BadRequest("the CSV body holds no records")
    if width == 2:
        return ScoreQuery(ids(columns[0], "user", "CSV"), ids(columns[1], "item", "CSV"), "CSV")
    k = attributes.get("k")
    exclude = attributes.get("exclude_seen", "true").lower()
    if exclude not in ("true", "false"):
        raise BadRequest(f"custom attribute exclude_seen={exclude!r} must be true or false")
    if k is not None and not (_CANONICAL_INT.fullmatch(k) and len(k) <= 18):
        raise BadRequest(f"custom attribute k={k!r} is not an integer")
    k_value = DEFAULT_TOP_K if k is None else int(k)
    return RecommendQuery(ids(columns[0], "user", "CSV"), k_value, None, exclude == "true", "CSV")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: Any) -> str:
    """A value for an error message, at most ~40 characters, without walking into nested containers
    (a client may send an array nested thousands deep; encoders give up at a few hundred levels)."""
    if isinstance(value, list):
        text = "[" + ", ".join(_leaf(x) for x in value[:4]) + (", ...]" if len(value) > 4 else "]")
    elif isinstance(value, dict):
        keys = ", ".join(repr(str(k))[:20] for k in list(value)[:4])
        text = "{" + keys + (", ...}" if len(value) > 4 else "}")
    else:
        text = _leaf(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _leaf(value: Any) -> str:
    if isinstance(value, list):
        return "[...]" if value else "[]"
    if isinstance(value, dict):
        return "{...}" if value else "{}"
    if isinstance(value, str):
        return repr(value[:40])
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"{str(value)[:12]}... ({len(str(value))} digits)"
    return orjson.dumps(value).decode()


# --------------------------------------------------------------------------------------------- encoding
FALLBACK_HEADER = "X-Ncf-Fallback"


def headers(prediction: Prediction) -> tuple[tuple[str, str], ...]:
    """The workshop's bare-array answer has no room for the fallback flag: it travels as a header."""
    result = prediction.results[0]
    if prediction.batch.kind == "json" and isinstance(prediction.batch.queries[0], TopItemsQuery):
        return ((FALLBACK_HEADER, "true" if result.fallback else "false"),)
    return ()


def encode(prediction: Prediction, media: str) -> bytes:
    """Serialise a prediction for ``media`` (already negotiated by ``response_type``)."""
    batch, results = prediction.batch, prediction.results
    if batch.kind == "csv":
        query, result = batch.queries[0], results[0]
        if media == CSV:
            return _csv_rows(query, result)
        rows = _row_documents(query, result)
        if media == JSONLINES:
            return b"".join(orjson.dumps(row) + b"\n" for row in rows)
        return _json_array(rows)
    pairs = zip(batch.queries, results, strict=True)
    if media == JSONLINES:
        return b"".join(_json_document(q, r) + b"\n" for q, r in pairs)
    if batch.kind == "json":
        return _json_document(batch.queries[0], results[0])
    return b"[" + b",".join(_json_document(q, r) for q, r in pairs) + b"]"


def _row_documents(query: Query, result: Any) -> list:
    """A CSV request's result as one JSON value per input row."""
    if isinstance(query, RecommendQuery):
        return [r.as_dict() for r in result]
    return [
        {"user": u, "item": i, "score": s, "fallback": f}
        for u, i, s, f in zip(query.users, result.items, result.scores, result.fallback, strict=True)
    ]


# One orjson call holds the GIL until it returns: a list longer than this is encoded a slice at a time,
# so the event loop (and /ping) gets its turns while a response of millions of values is built.
ENCODE_SLICE = 4096


def _json_array(values: list) -> bytes:
    """``orjson.dumps(values)``, byte for byte, in slices of ``ENCODE_SLICE``."""
    return orjson.dumps(values) if len(values) <= ENCODE_SLICE else b"".join(_array_parts(values))


def _array_parts(values: list) -> list[bytes]:
    parts = [b"["]
    for i in range(0, len(values), ENCODE_SLICE):
        parts += (orjson.dumps(values[i : i + ENCODE_SLICE])[1:-1], b",")
    parts[-1] = b"]"
    return parts


def _json_document(query: Query, result: Any) -> bytes:
    """One query's JSON answer, with long arrays encoded in slices (joined once: each copy of a response
    of hundreds of MB also holds the GIL):

    - top items of pairs: the bare array of item ids (the workshop's answer);
    - recommendations: ``{"recommendations": [{"user", "items", "scores", "fallback"}, ...]}``;
    - pair scores: ``{"scores": [...], "fallback": [...]}``.
    """
    if isinstance(query, TopItemsQuery):
        return orjson.dumps(result.items)
    if isinstance(query, RecommendQuery):
        recs = [r.as_dict() for r in result]
        return b"".join([b'{"recommendations":', *_array_parts(recs), b"}"])
    parts = [b'{"scores":', *_array_parts(result.scores), b',"fallback":', *_array_parts(result.fallback)]
    return b"".join([*parts, b"}"])


def _csv_rows(query: Query, result: Any) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if isinstance(query, RecommendQuery):
        for r in result:
            writer.writerow(r.items)
    else:
        for score in result.scores:
            writer.writerow([repr(float(score))])
    return out.getvalue().encode()
