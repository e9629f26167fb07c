"""SageMaker's hosting contract over HTTP, against real ``serve`` processes on a loopback port.

One server (2 gunicorn workers, 1 MB payload limit) answers most tests; the behaviours that need their own
server (slow or failing loads, SIGTERM, user code) start one each.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import pytest

from ncf_core.inference import Recommender
from tests.support.serving import (
    assert_json_error,
    copy_model,
    group_of_item,
    group_of_user,
    running_server,
)

WORKERS = 2


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS), "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"}
    with running_server(tmp_path_factory.mktemp("http"), model_dir, env) as srv:
        srv.wait_workers_ready(WORKERS)  # every answer below comes from a worker with its model
        yield srv


def seed_payload(rec, user=None, n=100):
    """The workshop's shape: one user repeated, paired with n items."""
    items = rec.items.ids[:n]
    return {"user": [rec.users.ids[0] if user is None else user] * len(items), "item": items}


# --------------------------------------------------------------------------------------------- /ping
def test_ping_is_healthy_json(server):
    resp = server.request("GET", "/ping")
    assert resp.status == 200 and resp.json() == {"status": "healthy", "message": "ready"}


def test_ping_answers_head_with_headers_only(server):
    resp = server.request("HEAD", "/ping")
    assert resp.status == 200 and resp.body == b"" and resp.headers["content-type"] == "application/json"
    assert "no-body response" not in server.log()


def test_ping_is_503_while_loading_and_invocations_meanwhile_wait_for_the_model(model_dir, tmp_path):
    slow = "import time\nfrom ncf_sagemaker.serving.handler import model_fn as default, warmup_fn\n\n"
    slow += "def model_fn(model_dir):\n    time.sleep(2)\n    return default(model_dir)\n"
    model = copy_model(model_dir, tmp_path / "slow", slow)
    rec = Recommender.load(model_dir)
    with running_server(tmp_path, model, {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}, wait=False) as srv:
        pings = []
        early: list = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ping = srv.request("GET", "/ping", timeout=5)
            except OSError:
                time.sleep(0.05)
                continue
            pings.append((time.monotonic(), ping.status))
            if ping.status == 200:
                break
            assert ping.json()["status"] == "unhealthy" and "loading" in ping.json()["message"]
            if not early:
                early.append(threading.Thread(target=lambda: early.append(srv.invoke(seed_payload(rec)))))
                early[0].start()
            time.sleep(0.1)
        assert pings[0][1] == 503 and pings[-1][1] == 200, pings
        early[0].join(30)
        assert early[1].status == 200 and len(early[1].json()) == 10


def test_ping_is_503_with_the_reason_when_loading_failed(tmp_path):
    empty = tmp_path / "model"
    empty.mkdir()
    with running_server(tmp_path, empty, {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}, wait=False) as srv:
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = srv.request("GET", "/ping")
                if "failed" in resp.json()["message"] or time.monotonic() > deadline:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert resp.status == 503
        assert "not an ncf_core model directory" in resp.json()["message"]
        assert_json_error(srv.invoke({"users": [1]}), 503, "not an ncf_core model directory")
        assert "not an ncf_core model directory" in srv.log()


def test_ping_answers_fast_under_load(server, rec):
    payload = json.dumps({"users": rec.users.ids[:20], "k": 10})
    stop = threading.Event()

    def hammer():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for _ in range(2000):
            if stop.is_set():
                break
            conn.request("POST", "/invocations", payload, {"Content-Type": "application/json"})
            conn.getresponse().read()
        conn.close()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        latencies = []
        for _ in range(20):
            start = time.perf_counter()
            assert server.request("GET", "/ping").status == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert max(latencies) < 1.0, latencies


# --------------------------------------------------------------------------------------------- request shapes
def test_seed_payload_returns_the_workshops_top10_array(server, rec):
    payload = seed_payload(rec)
    resp = server.invoke(payload)
    assert resp.status == 200 and resp.headers["content-type"] == "application/json"
    top = resp.json()
    assert top == rec.recommend(payload["user"][0], 10, payload["item"], exclude_seen=False).items
    assert resp.headers["x-ncf-fallback"] == "false"
    assert len(server.invoke({**payload, "k": 3}).json()) == 3


def test_seed_payload_of_an_unknown_user_is_the_popularity_fallback(server, rec):
    payload = seed_payload(rec, user=987654)
    resp = server.invoke(payload)
    assert resp.status == 200 and resp.headers["x-ncf-fallback"] == "true"
    assert resp.json() == rec.recommend(987654, 10, payload["item"], exclude_seen=False).items


def test_top_k_recommendations_come_from_the_model(server, rec):
    users = rec.users.ids[:6]
    doc = server.invoke({"users": [*users, 555555], "k": 5}).json()
    recs = doc["recommendations"]
    assert [r["user"] for r in recs] == [*users, 555555]
    for r in recs[:-1]:
        assert [group_of_item(i) for i in r["items"]] == [group_of_user(r["user"])] * 5
        assert r["scores"] == sorted(r["scores"], reverse=True) and r["fallback"] is False
        assert not set(r["items"]) & set(rec.items.raw(rec.seen(rec.users.get(r["user"]))))
    assert recs[-1]["fallback"] is True and recs[-1]["items"] == rec.recommend(555555, 5).items


def test_recommendations_with_candidates_and_seen_items(server, rec):
    user = rec.users.ids[0]
    seen = rec.items.raw(rec.seen(0))
    candidates = seen[:3] + rec.items.ids[:5]
    with_seen = server.invoke(
        {"users": [user], "candidates": candidates, "exclude_seen": False, "k": 50}
    ).json()
    assert set(with_seen["recommendations"][0]["items"]) == set(candidates)
    without = server.invoke({"users": [user], "candidates": candidates, "k": 50}).json()
    assert set(without["recommendations"][0]["items"]) == set(candidates) - set(seen)


def test_pair_scores_match_the_model_and_flag_unknown_users(server, rec):
    pairs = [
        [rec.users.ids[0], rec.items.ids[0]],
        [rec.users.ids[1], rec.items.ids[1]],
        [777777, rec.items.ids[2]],
    ]
    doc = server.invoke({"pairs": pairs}).json()
    expected = rec.score([p[0] for p in pairs[:2]], [p[1] for p in pairs[:2]])
    assert doc["scores"][:2] == pytest.approx(expected, abs=1e-6)
    assert doc["fallback"] == [False, False, True] and 0 <= doc["scores"][2] <= 1


def test_custom_attributes_and_unknown_headers_are_accepted(server, rec):
    headers = {"X-Amzn-SageMaker-Custom-Attributes": "trace=abc123", "X-Some-Proxy": "whatever"}
    assert server.invoke(seed_payload(rec), headers=headers).status == 200
    csv = server.request(
        "POST",
        "/invocations",
        "\n".join(str(u) for u in rec.users.ids[:3]),
        {"Content-Type": "text/csv", "X-Amzn-SageMaker-Custom-Attributes": "k=3"},
    )
    assert csv.status == 200 and [len(row.split(",")) for row in csv.body.decode().splitlines()] == [3, 3, 3]


# ------------------------------------------------------------------------------------------ batch transform
def test_execution_parameters_honour_the_payload_limit(server):
    doc = server.request("GET", "/execution-parameters").json()
    assert doc["MaxPayloadInMB"] == 1 and doc["BatchStrategy"] == "MULTI_RECORD"
    assert doc["MaxConcurrentTransforms"] == WORKERS * 4  # 4 pool threads per worker by default


def test_jsonlines_gives_one_line_per_record_in_order(server, rec):
    records = [
        seed_payload(rec, n=20),
        {"users": [rec.users.ids[2]], "k": 2},
        {"pairs": [[1, rec.items.ids[0]]]},
    ]
    body = "\n".join(json.dumps(r) for r in records) + "\n"
    resp = server.request("POST", "/invocations", body, {"Content-Type": "application/jsonlines"})
    assert resp.status == 200 and resp.headers["content-type"] == "application/jsonlines"
    lines = [json.loads(line) for line in resp.body.decode().splitlines()]
    assert len(lines) == 3 and isinstance(lines[0], list) and len(lines[0]) == 10
    assert lines[1]["recommendations"][0]["user"] == rec.users.ids[2] and "scores" in lines[2]


def test_csv_batch_rows_in_order(server, rec):
    users = rec.users.ids[:50][::-1]
    resp = server.request(
        "POST", "/invocations", "\n".join(map(str, users)) + "\n", {"Content-Type": "text/csv"}
    )
    assert resp.status == 200 and resp.headers["content-type"] == "text/csv"
    rows = resp.body.decode().splitlines()
    assert len(rows) == 50
    assert [int(i) for i in rows[0].split(",")] == rec.recommend(users[0], 10).items
    pairs = "\n".join(f"{u},{rec.items.ids[0]}" for u in users[:5])
    resp = server.request(
        "POST", "/invocations", pairs, {"Content-Type": "text/csv", "Accept": "application/jsonlines"}
    )
    lines = [json.loads(x) for x in resp.body.decode().splitlines()]
    assert [x["user"] for x in lines] == users[:5]
    assert [x["score"] for x in lines] == pytest.approx(
        rec.score(users[:5], [rec.items.ids[0]] * 5), abs=1e-6
    )


# --------------------------------------------------------------------------------------------- errors
BAD_JSON_BODIES = [
    (b"{not json", "not valid JSON"),
    (b'["user", "item"]', "must be a JSON object"),
    (b'{"user": "0", "item": [25]}', "'user' must be an array of ids"),
    (b'{"user": [0, 0], "item": [25]}', "they must pair up"),
    (b'{"user": [1], "item": [-25]}', "ids are never negative"),
    (b'{"user": [1], "item": [1.5]}', "got the number 1.5"),
    (b'{"user": [1], "item": [999999]}', "unknown item id 999999"),
    (b'{"user": [1], "item": [18446744073709551615]}', "must fit in 64 bits"),
    (b'{"user": [], "item": []}', "'user' is empty"),
    (b'{"users": [1], "k": 0}', "'k' must be ≥ 1"),
    (b'{"users": [1], "k": -1}', "'k' must be ≥ 1"),
    (b'{"users": [1], "k": 1000000000}', "the model knows only"),
    (b'{"users": [1], "k": 1e9}', "'k' must be an integer"),
    (b'{"users": [1], "candidates": [10, 424242]}', "unknown item id 424242"),
    (b'{"users": []}', "'users' is empty"),
    (b'{"pairs": [[1]]}', "must be a [user, item] array"),
    (b'{"pairs": [[1, 10]], "k": 2}', "unknown field(s) ['k']"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_JSON_BODIES)
def test_bad_input_is_a_400_saying_what_is_wrong(server, body, fragment):
    resp = server.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    assert_json_error(resp, 400, fragment)


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"1,10\n2\n", "text/csv", "row 2 has 1 fields"),
        (b'{"users": [1]}\n{"users": 1}\n', "application/jsonlines", "line 2: 'users' must be an array"),
    ],
)
def test_bad_batch_input_is_a_400(server, body, content_type, fragment):
    assert_json_error(
        server.request("POST", "/invocations", body, {"Content-Type": content_type}), 400, fragment
    )


def test_workers_survive_every_bad_request(server, rec):
    for body, _ in BAD_JSON_BODIES:
        server.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    for _ in range(4 * WORKERS):
        assert server.invoke(seed_payload(rec)).status == 200
    log = server.log()
    assert log.count("Booting worker") == WORKERS, log
    assert "Traceback" not in log and "exited" not in log.lower()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_unsupported_content_type_is_415(server, content_type):
    resp = server.request("POST", "/invocations", b'{"users": [1]}', {"Content-Type": content_type})
    assert_json_error(resp, 415, "is not supported")


@pytest.mark.parametrize("accept", ["text/html", "text/csv", "image/png;q=1, text/plain"])
def test_unsupported_accept_is_406(server, rec, accept):
    assert_json_error(server.invoke(seed_payload(rec), headers={"Accept": accept}), 406, "cannot answer")


@pytest.mark.parametrize("accept", ["*/*", "application/json", "text/html;q=0.9, application/*;q=0.1"])
def test_acceptable_accept_headers(server, rec, accept):
    assert server.invoke(seed_payload(rec), headers={"Accept": accept}).status == 200


def test_body_over_the_limit_is_413_and_the_server_goes_on(server, rec):
    big = b'{"users": [' + b"1, " * 400_000 + b"1]}"  # 1.2 MB > 1 MB
    resp = server.request("POST", "/invocations", big, {"Content-Type": "application/json"})
    assert_json_error(resp, 413, "over the 1 MB limit")

    def chunks():
        for _ in range(20):
            yield b" " * 100_000

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/invocations", chunks(), {"Content-Type": "application/json"}, encode_chunked=True)
    chunked = conn.getresponse()
    assert chunked.status == 413 and "over the 1 MB limit" in json.loads(chunked.read())["error"]
    conn.close()
    assert server.invoke(seed_payload(rec)).status == 200


def test_wrong_methods_and_paths_are_json_errors(server):
    assert_json_error(server.request("GET", "/invocations"), 405, "POST")
    assert_json_error(server.request("GET", "/nope"), 404, "")
    assert_json_error(server.request("GET", "/models"), 404, "SAGEMAKER_MULTI_MODEL=true")
    assert_json_error(server.request("POST", "/models/m/invoke", b"{}"), 404, "multi-model API is off")


def test_unknown_paths_and_wrong_methods_are_json_errors_with_the_request_id(server):
    # Starlette's router finds no route (404) or no route for this method (405); our handler answers.
    resp = server.request("GET", "/nope?x=1", headers={"X-Request-Id": "trace-404"})
    assert_json_error(resp, 404, "/nope")
    assert resp.headers["x-request-id"] == "trace-404"
    assert_json_error(server.request("GET", "/ping/"), 404, "/ping/")  # exact paths, no redirect
    big = b" " * 900_000  # a body nobody reads is dropped, so the client still gets its answer
    assert_json_error(
        server.request("POST", "/nope", big, {"Content-Type": "application/json"}), 404, "/nope"
    )
    for method, path, allow in [
        ("DELETE", "/ping", "GET, HEAD"),
        ("PUT", "/invocations", "POST"),
        ("GET", "/models/m/invoke", "POST"),
        ("PUT", "/models/m", "DELETE, GET, HEAD"),
        ("POST", "/execution-parameters", "GET, HEAD"),
    ]:
        resp = server.request(method, path, b"{}", {"Content-Type": "application/json"})
        assert_json_error(resp, 405, f"{path} answers {allow}, not {method}")
        assert resp.headers["allow"] == allow
    log = _wait_for_log(server, "request trace-404: GET /nope -> 404")
    assert '"GET /nope?x=1" 404' in log and "rid=trace-404" in log


def test_request_ids_are_echoed_up_to_128_characters_on_every_route(server, rec):
    for method, path, body in [
        ("GET", "/ping", None),
        ("POST", "/invocations", seed_payload(rec)),
        ("GET", "/execution-parameters", None),
        ("GET", "/nope", None),
    ]:
        resp = server.request(method, path, body, {"X-Request-Id": "r" * 128})
        assert resp.headers["x-request-id"] == "r" * 128, (path, resp.headers)
        generated = server.request(method, path, body, {"X-Request-Id": "r" * 129}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", generated), (path, generated)  # <worker pid>-<counter>


def _wait_for_log(server, fragment: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while fragment not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    assert fragment in log, log[-3000:]
    return log


def test_errors_are_logged_with_the_request_id(server):
    resp = server.request("POST", "/invocations", b"{oops", {"Content-Type": "application/json"})
    rid = resp.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while f"request {rid}:" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"request {rid}: POST /invocations -> 400" in server.log()


def test_successful_pings_stay_out_of_the_access_log(server, rec):
    for _ in range(5):
        server.request("GET", "/ping")
    server.invoke(seed_payload(rec))
    time.sleep(0.2)
    log = server.log()
    assert '"POST /invocations" 200' in log
    assert '"GET /ping" 200' not in log


# --------------------------------------------------------------------------------------------- lifecycle
SLOW_PREDICT = """
import time
from ncf_sagemaker.serving import handler as default


def predict_fn(data, model, context):
    # X-Amzn-SageMaker-Custom-Attributes: sleep=SECONDS makes this prediction slow
    attributes = dict(p.split("=") for p in (context.custom_attributes or "").split(";") if "=" in p)
    time.sleep(float(attributes.get("sleep", 0)))
    return default.predict_fn(data, model)
"""


def slow_invoke(srv, rec, seconds: float):
    headers = {"X-Amzn-SageMaker-Custom-Attributes": f"sleep={seconds}"}
    return srv.invoke(seed_payload(rec), headers=headers)


FAILING_PREDICT = """
from ncf_sagemaker.serving import handler as default


def predict_fn(data, model, context):
    if context.custom_attributes == "fail":
        raise RuntimeError("predict_fn broke")
    return default.predict_fn(data, model)
"""


def test_user_code_failure_is_a_500_with_the_traceback_logged_and_the_connection_kept(model_dir, tmp_path):
    model = copy_model(model_dir, tmp_path / "failing", FAILING_PREDICT)
    rec = Recommender.load(model_dir)
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "NCF_ACCESS_LOG": "errors"}
    with running_server(tmp_path, model, env) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        body = json.dumps(seed_payload(rec))
        for attributes, status in [("fail", 500), ("", 200)]:  # one keep-alive connection for both
            headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": attributes}
            conn.request("POST", "/invocations", body, headers)
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            assert resp.status == status, doc
            if status == 500:
                assert doc["error"] == "internal error; see the server log"
                rid = resp.getheader("x-request-id")
                assert doc["request_id"] == rid
        conn.close()
        log = _wait_for_log(srv, "RuntimeError: predict_fn broke")
        assert f"request {rid}: POST /invocations failed" in log and "Traceback" in log
        assert '"POST /invocations" 500' in log and '"POST /invocations" 200' not in log  # errors only


def test_sigterm_drains_in_flight_requests_then_exits(model_dir, tmp_path):
    model = copy_model(model_dir, tmp_path / "slow", SLOW_PREDICT)
    rec = Recommender.load(model_dir)
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "20"}
    with running_server(tmp_path, model, env) as srv:
        results = []
        thread = threading.Thread(target=lambda: results.append(slow_invoke(srv, rec, 1.5)))
        thread.start()
        time.sleep(0.5)  # the request is inside predict_fn now
        started = time.monotonic()
        srv.proc.terminate()
        thread.join(30)
        assert results and results[0].status == 200 and len(results[0].json()) == 10
        assert srv.proc.wait(30) == 0
        assert time.monotonic() - started < 15


def test_a_prediction_over_the_model_server_timeout_is_504_and_the_worker_lives(model_dir, tmp_path):
    model = copy_model(model_dir, tmp_path / "slow", SLOW_PREDICT)
    rec = Recommender.load(model_dir)
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"}
    with running_server(tmp_path, model, env) as srv:
        assert_json_error(slow_invoke(srv, rec, 3), 504, "SAGEMAKER_MODEL_SERVER_TIMEOUT=1 s")
        assert srv.request("GET", "/ping").status == 200
        assert slow_invoke(srv, rec, 0).status == 200
        assert srv.log().count("Booting worker") == 1
