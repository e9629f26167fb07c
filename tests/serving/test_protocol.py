"""The /invocations wire format without a server: negotiation, validation messages, encodings."""

from __future__ import annotations

import orjson
import pytest

from ncf_core.inference import PairScores, Recommendation
from ncf_sagemaker.serving import protocol
from ncf_sagemaker.serving.responses import BadRequest, NotAcceptable, UnsupportedMediaType


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        (None, "json"),
        ("application/json", "json"),
        ("Application/JSON; charset=UTF-8", "json"),
        ("application/jsonlines", "jsonlines"),
        ("application/x-jsonlines", "jsonlines"),
        ("text/csv", "csv"),
        ("text/csv; charset=utf-8", "csv"),
    ],
)
def test_request_kind(content_type, kind):
    assert protocol.request_kind(content_type) == kind


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", "image/png"],
)
def test_unsupported_content_type_is_415(content_type):
    with pytest.raises(UnsupportedMediaType, match="not supported"):
        protocol.request_kind(content_type)


@pytest.mark.parametrize(
    ("accept", "kind", "media"),
    [
        (None, "json", "application/json"),
        ("*/*", "json", "application/json"),
        ("application/*", "jsonlines", "application/jsonlines"),
        ("text/html;q=0.9, application/json;q=0.5", "json", "application/json"),
        ("application/json;q=0.2, application/jsonlines", "jsonlines", "application/jsonlines"),
        ("application/json;q=0.2, application/jsonlines;q=0", "jsonlines", "application/json"),
        (None, "csv", "text/csv"),
        ("application/jsonlines", "csv", "application/jsonlines"),
        ("text/*", "csv", "text/csv"),
    ],
)
def test_response_type_honours_accept(accept, kind, media):
    assert protocol.response_type(accept, kind) == media


@pytest.mark.parametrize(
    ("accept", "kind"), [("text/html", "json"), ("text/csv", "json"), ("image/*", "csv")]
)
def test_unanswerable_accept_is_406(accept, kind):
    with pytest.raises(NotAcceptable, match="cannot answer"):
        protocol.response_type(accept, kind)


def test_seed_payload_parses_unchanged():
    items = [25, 1064, 174, 2791]
    batch = protocol.parse(orjson.dumps({"user": [0] * 4, "item": items}), "json")
    assert batch == protocol.Batch([protocol.TopItemsQuery([0] * 4, items, 10)], "json")


def test_recommend_and_pairs_parse_with_defaults_and_options():
    q = protocol.parse_query({"users": [1, "u2"]})
    assert q == protocol.RecommendQuery([1, "u2"], 10, None, True)
    q = protocol.parse_query({"users": [1], "k": 3, "candidates": [5, 6], "exclude_seen": False})
    assert q == protocol.RecommendQuery([1], 3, [5, 6], False)
    q = protocol.parse_query({"pairs": [[1, 5], [2, 6]]})
    assert q == protocol.ScoreQuery([1, 2], [5, 6])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"foo": 1}', "needs 'user' and 'item'"),
        (b'{"user": [1]}', "go together"),
        (b'{"user": 1, "item": [2]}', "'user' must be an array of ids, got the integer 1"),
        (b'{"user": [1, 1], "item": [2]}', "'user' has 2 ids but 'item' has 1"),
        (b'{"user": [], "item": []}', "'user' is empty"),
        (b'{"user": [1], "item": [-3]}', "item[0] is -3: ids are never negative"),
        (b'{"user": [1], "item": [2.5]}', "item[0] must be an integer or string id, got the number 2.5"),
        (b'{"user": [true], "item": [2]}', "user[0] must be an integer or string id, got a boolean"),
        (b'{"user": [[1]], "item": [2]}', "user[0] must be an integer or string id, got an array"),
        (b'{"user": [" "], "item": [2]}', "user[0] is an empty string"),
        (b'{"user": [1], "item": [2], "k": "10"}', "'k' must be an integer"),
        (b'{"user": [1], "item": [2], "k": 2.0}', "'k' must be an integer"),
        (b'{"user": [1], "item": [2], "top": 3}', "unknown field(s) ['top']"),
        (b'{"users": [1], "exclude_seen": "no"}', "'exclude_seen' must be true or false"),
        (b'{"users": [1], "candidates": []}', "'candidates' is empty"),
        (b'{"users": {"a": 1}}', "'users' must be an array of ids, got an object"),
        (b'{"pairs": [[1, 2], [3]]}', "pairs[1] must be a [user, item] array"),
        (b'{"pairs": []}', "'pairs' is empty"),
        (b'{"pairs": [[1, -2]]}', "is -2: ids are never negative"),
        (b'{"user": [1], "item": [99999999999999999999999]}', "got the number 1e+23"),
    ],
)
def test_invalid_json_requests_say_what_is_wrong(body, message):
    with pytest.raises(BadRequest) as info:
        protocol.parse(body, "json")
    assert message in info.value.message


def test_jsonlines_one_query_per_line_and_errors_name_the_line():
    body = b'{"user": [1], "item": [2]}\n\n{"users": [3], "k": 2}\n{"pairs": [[1, 2]]}\n'
    batch = protocol.parse(body, "jsonlines")
    assert [type(q).__name__ for q in batch.queries] == ["TopItemsQuery", "RecommendQuery", "ScoreQuery"]
    # each query knows its record, for the model's own checks on its values (k ≥ 1: test_handler.py)
    assert [q.where for q in batch.queries] == ["line 1", "line 3", "line 4"]
    later = protocol.parse(b'{"users": [1]}\n{"users": [1], "k": 0}\n', "jsonlines").queries[1]
    assert (later.k, later.where) == (0, "line 2")
    with pytest.raises(BadRequest, match="line 2: 'k' must be an integer"):
        protocol.parse(b'{"users": [1]}\n{"users": [1], "k": "2"}\n', "jsonlines")
    with pytest.raises(BadRequest, match="no records"):
        protocol.parse(b"\n \n", "jsonlines")


def test_csv_rows_become_one_query_and_attributes_set_k():
    batch = protocol.parse(b"1\n2\n\nu3\n", "csv", protocol.custom_attributes("k=3; exclude_seen=false"))
    assert batch.queries == [protocol.RecommendQuery([1, 2, "u3"], 3, None, False, "CSV")]
    batch = protocol.parse(b"1,10\r\n2,11\r\n", "csv")
    assert batch.queries == [protocol.ScoreQuery([1, 2], [10, 11], "CSV")]
    zero = protocol.parse(b"1\n", "csv", protocol.custom_attributes("k=0")).queries[0]
    assert (zero.k, zero.where) == (0, "CSV")  # the model refuses it, naming "CSV" (test_handler.py)


@pytest.mark.parametrize(
    ("body", "attributes", "message"),
    [
        (b"1,2\n3\n", "", "row 2 has 1 fields, row 1 has 2"),
        (b"1,2,3\n", "", "row 1 has 3 fields"),
        (b"-1\n", "", "user[0] is -1"),
        (b"\n", "", "no records"),
        (b"\xff\xfe", "", "not UTF-8"),
        (b"1\n", "k=ten", "custom attribute k='ten' is not an integer"),
        (b"1\n", "exclude_seen=maybe", "exclude_seen='maybe' must be true or false"),
    ],
)
def test_invalid_csv_says_what_is_wrong(body, attributes, message):
    with pytest.raises(BadRequest) as info:
        protocol.parse(body, "csv", protocol.custom_attributes(attributes))
    assert message in info.value.message


def test_custom_attributes_ignore_free_form_parts():
    assert protocol.custom_attributes("trace=abc, k=5; free text") == {"trace": "abc", "k": "5"}
    assert protocol.custom_attributes(None) == {}


def _prediction(queries, results, kind):
    return protocol.Prediction(protocol.Batch(queries, kind), results)


RECS = [Recommendation(1, [10, 11], [0.9, 0.5], False), Recommendation(7, [12], [0.3], True)]
RECOMMEND = protocol.RecommendQuery([1, 7], 2, None, True)
TOP = protocol.TopItemsQuery([1, 1], [3, 1], 2)


def test_encodings_give_one_record_per_input_record():
    top = Recommendation(1, [3, 1], [0.7, 0.6], False)
    json_top = _prediction([TOP], [top], "json")
    assert orjson.loads(protocol.encode(json_top, protocol.JSON)) == [3, 1]
    assert protocol.headers(json_top) == (("X-Ncf-Fallback", "false"),)
    json_recs = _prediction([RECOMMEND], [RECS], "json")
    assert protocol.headers(json_recs) == ()
    doc = orjson.loads(protocol.encode(json_recs, protocol.JSON))
    assert doc["recommendations"][1] == {"user": 7, "items": [12], "scores": [0.3], "fallback": True}
    lines = _prediction([RECOMMEND, TOP], [RECS, Recommendation(1, [4], [0.5], False)], "jsonlines")
    expected = [{"recommendations": [r.as_dict() for r in RECS]}, [4]]
    assert [
        orjson.loads(line) for line in protocol.encode(lines, protocol.JSONLINES).splitlines()
    ] == expected
    assert orjson.loads(protocol.encode(lines, protocol.JSON)) == expected
    csv_recs = _prediction([RECOMMEND], [RECS], "csv")
    assert protocol.encode(csv_recs, protocol.CSV) == b"10,11\n12\n"
    rows = protocol.encode(csv_recs, protocol.JSONLINES).splitlines()
    assert [orjson.loads(r)["user"] for r in rows] == [1, 7]
    scores = _prediction(
        [protocol.ScoreQuery([1, 2], [10, 11])], [PairScores([10, 11], [0.25, 0.5], [False, True])], "csv"
    )
    assert protocol.encode(scores, protocol.CSV) == b"0.25\n0.5\n"
    assert orjson.loads(protocol.encode(scores, protocol.JSON))[1] == {
        "user": 2,
        "item": 11,
        "score": 0.5,
        "fallback": True,
    }
