"""Hostile requests for the serving reliability tests and ``benchmarks/reliability_bench.py``: a corpus
of malformed requests with the 4xx each must get, and the largest valid payload of each content type."""

from __future__ import annotations

import json

J, JL, CSV = "application/json", "application/jsonlines", "text/csv"
DEEP = b"[" * 5000 + b"]" * 5000
# (method, path, content type, body, status, fragment of the error message)
CORPUS = [
    ("POST", "/invocations", J, b'{"pairs": ' + b"[" * 300 + b"1" + b"]" * 300 + b"}", 400, "pairs[0]"),
    ("POST", "/invocations", J, b'{"users": ' + DEEP + b"}", 400, ""),
    ("POST", "/invocations", J, DEEP, 400, "must be a JSON object"),
    ("POST", "/invocations", J, b'{"users": [9223372036854775808]}', 400, "must fit in 64 bits"),
    ("POST", "/invocations", J, b'{"users": [1' + b"0" * 40 + b"]}", 400, "got the number"),
    ("POST", "/invocations", J, b'{"users": [1], "k": NaN}', 400, "not valid JSON"),
    ("POST", "/invocations", J, b'{"users": [1], "k": Infinity}', 400, "not valid JSON"),
    ("POST", "/invocations", J, b'{"users": [1e999]}', 400, "not valid JSON"),
    ("POST", "/invocations", J, b'{"users": [1], "candidates": []}', 400, "'candidates' is empty"),
    ("POST", "/invocations", J, b'{"users": [1], "candidates": [' + b"1," * 5000 + b"1]}", 400, "knows only"),
    ("POST", "/invocations", J, b'{"users": [1], "exclude_seen": "yes"}', 400, "'exclude_seen'"),
    ("POST", "/invocations", J, b'{"users": [{"a": 1}]}', 400, "users[0]"),
    ("POST", "/invocations", J, b'{"users": ["\xd9\xa3"]}', 200, ""),  # "٣" is an unknown id, not 3
    ("POST", "/invocations", J, b"\xff\xfe", 400, "not valid JSON"),
    ("POST", "/invocations", J, b"", 400, "not valid JSON"),
    ("POST", "/invocations", JL, b'{"users": [1]}\n\n{"users": [1], "k": "3"}\n', 400, "line 3"),
    ("POST", "/invocations", JL, b'{"users": [1]}\n[1, 2]\n', 400, "line 2"),
    ("POST", "/invocations", JL, b"\n\n", 400, "no records"),
    ("POST", "/invocations", CSV, b"1\n" + b"9" * 30 + b"\n", 400, "row 2"),
    ("POST", "/invocations", CSV, b"1\n" + b"9" * 5000 + b"\n", 400, "64 bits"),
    ("POST", "/invocations", CSV, b"1,2\n3\n", 400, "row 2"),
    ("POST", "/invocations", CSV, b"1,2,3\n", 400, "3 fields"),
    ("POST", "/invocations", CSV, b"\xff\xfe1\n", 400, "not UTF-8"),
    ("POST", "/invocations", "text/csv; charset=latin-1", b"1\n", 415, "charset"),
    ("POST", "/invocations", "application/x-protobuf", b"1", 415, "not supported"),
    ("GET", "/invocations", None, None, 405, "POST"),
    ("PUT", "/ping", None, None, 405, "GET"),
    ("GET", "/ping/", None, None, 404, "no route"),
    ("GET", "/%0a%0dforged", None, None, 404, "no route"),
    ("POST", "/models", J, b'{"model_name": "m", "url": "/x"}', 404, "SAGEMAKER_MULTI_MODEL"),
]


def largest_payload(users: list, items: list, kind: str, limit: int) -> bytes:
    """About ``limit`` bytes of valid requests of ``kind``: pair scores (JSON), one-user recommendations
    (JSON Lines, the many-records case), users to recommend for (CSV, batch transform)."""
    if kind == J:
        pairs = [[users[i % len(users)], items[i % len(items)]] for i in range(1000)]
        per_pair = len(json.dumps(pairs, separators=(",", ":"))) / 1000
        n = int((limit - 32) / per_pair)
        while True:  # pairs vary in length: shrink until the document fits
            pairs = [[users[i % len(users)], items[i % len(items)]] for i in range(n)]
            body = json.dumps({"pairs": pairs}, separators=(",", ":")).encode()
            if len(body) <= limit:
                return body
            n = int(n * limit / len(body) * 0.999)
    if kind == JL:
        lines = b"".join(json.dumps({"users": [u], "k": 10}).encode() + b"\n" for u in users)
        return lines * (limit // len(lines))
    rows = b"\n".join(str(u).encode() for u in users) + b"\n"
    return rows * (limit // len(rows))
