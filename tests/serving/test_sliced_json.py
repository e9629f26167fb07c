"""The sliced JSON parser: exactly orjson's answer, or ``None`` (parse whole) — never a different document.

Slices are made tiny (``slice_bytes``) and every size is sliced (``min_bytes=0``), so the cutting, the
string and escape tracking and the placeholders all run on small generated documents.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncf_sagemaker.serving import protocol, sliced_json

TINY = {"slice_bytes": 16, "min_bytes": 0}

# Text that stresses the scanner: quotes, backslashes, brackets and commas inside strings.
tricky_text = st.text(alphabet=st.sampled_from(list('ab"\\,[]{}: \n\t\u00e9\u0000')), max_size=8)
ids = st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), tricky_text)
element = st.one_of(ids, st.lists(ids, max_size=3), st.dictionaries(tricky_text, ids, max_size=2))
value = st.one_of(
    st.lists(element, max_size=30),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(list), max_size=30),
    ids,
    st.none(),
    st.booleans(),
    st.dictionaries(tricky_text, st.lists(ids, max_size=4), max_size=2),
)
documents = st.dictionaries(tricky_text, value, max_size=5)


def dumps(doc: object, indent: int | None) -> bytes:
    return json.dumps(doc, indent=indent, ensure_ascii=False).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.sampled_from([None, 0, 2]))
def test_a_valid_object_parses_to_orjsons_answer(doc, indent):
    data = dumps(doc, indent)
    got = sliced_json.loads(data, **TINY)
    assert got is None or got == orjson.loads(data)
    if any(isinstance(v, list) and len(orjson.dumps(v)) > 16 for v in doc.values()) and b"\\" not in data:
        assert got == orjson.loads(data)  # the shape it is for is sliced, not handed back


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.data())
def test_a_corrupted_body_is_never_accepted_when_orjson_rejects_it(doc, data):
    body = bytearray(dumps(doc, None))
    for _ in range(data.draw(st.integers(1, 3))):
        if not body:
            break
        at = data.draw(st.integers(0, len(body) - 1))
        op = data.draw(st.sampled_from(["drop", "replace", "insert"]))
        byte = data.draw(st.sampled_from(list(b'",[]{}:\\ 0a')))
        if op == "drop":
            del body[at]
        elif op == "replace":
            body[at] = byte
        else:
            body.insert(at, byte)
    body = bytes(body)
    got = sliced_json.loads(body, **TINY)
    try:
        expected = orjson.loads(body)
    except orjson.JSONDecodeError:
        assert got is None
    else:
        assert got is None or got == expected


PAIRS = [[u, u % 7] for u in range(40)]


@pytest.mark.parametrize(
    "body",
    [
        b'{"pairs": [1,,2,3,4,5,6,7,8,9,10,11,12]}',
        b'{"pairs": [1,2,3,4,5,6,7,8,9,10,11,12,]}',
        b'{"pairs": [,1,2,3,4,5,6,7,8,9,10,11,12]}',
        b'{"pairs": [1,2,3,4,5,6,7,8,9,10,11,12]} x',
        b'{"pairs": [1,2,3,4,5,6,7,8,9,10,11,12]}{}',
        b'{"pairs": [1,2,3,4,5,6,7,8,9,10,11 12]}',
        b'{"pairs": ["a,b", "c\\", 1,2,3,4,5,6,7,8]}',
        b'{"pairs": [[1,2],[3,4],[5,6],[7,8],[9,10]}',
        b'{"pairs": [1,2,3,4,5,6,7,8,9,10,11,12], }',
    ],
)
def test_invalid_documents_are_left_to_the_whole_parse(body):
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    assert sliced_json.loads(body, **TINY) is None


@pytest.mark.parametrize(
    "doc",
    [
        {"pairs": PAIRS, "k": 3},
        {"user": [str(u) + '", [\\' for u in range(30)], "item": list(range(30))},
        {"users": list(range(100)), "candidates": ["x\\", '"y"', "[", "]", ","] * 5, "exclude_seen": False},
    ],
)
def test_request_shapes_are_sliced_to_the_same_document(doc):
    data = orjson.dumps(doc)
    assert sliced_json.loads(data, **TINY) == doc


def test_a_duplicate_key_keeps_the_last_value_as_orjson_does():
    data = b'{"pairs": ' + orjson.dumps(PAIRS) + b', "pairs": 1}'
    assert sliced_json.loads(data, **TINY) in (None, orjson.loads(data))


def test_a_string_that_spells_a_placeholder_is_not_mistaken_for_an_array():
    for spelled in (b'"\\u0000ncf-slice-0"', b'"\\u0000ncf-sl\\u0069ce-0"'):
        data = b'{"pairs": ' + orjson.dumps(PAIRS) + b', "note": ' + spelled + b"}"
        assert sliced_json.loads(data, **TINY) in (None, orjson.loads(data))
        assert orjson.loads(data)["note"] == "\x00ncf-slice-0"


def test_small_bodies_and_other_top_level_values_are_parsed_whole():
    assert sliced_json.loads(orjson.dumps({"pairs": PAIRS})) is None  # under MIN_BYTES
    assert sliced_json.loads(orjson.dumps(PAIRS), **TINY) is None  # an array, not an object
    assert sliced_json.loads(b'{"k": 3, "user": 1}', **TINY) is None  # no array to slice


def test_protocol_parses_a_large_body_through_the_slicer(monkeypatch):
    pairs = [[u, u + 1] for u in range(200_000)]
    body = orjson.dumps({"pairs": pairs})
    assert len(body) > sliced_json.MIN_BYTES
    calls = []

    def spy(data, *args, **kwargs):
        calls.append(len(data))
        return real(data, *args, **kwargs)

    real = sliced_json.loads
    monkeypatch.setattr(sliced_json, "loads", spy)
    (query,) = protocol.parse(body, "json").queries
    assert calls == [len(body)]
    assert query.users == [p[0] for p in pairs] and query.items == [p[1] for p in pairs]
