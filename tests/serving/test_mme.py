"""Multi-model endpoints: SageMaker's MME API over HTTP on a 2-worker server, and the shared registry
that keeps both workers' answers identical (unit-tested with two registries on one state directory, as
two worker processes see it)."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from ncf_sagemaker.serving.multi_model import COST_FACTOR, ModelRegistry, artifact_bytes
from ncf_sagemaker.serving.responses import BadRequest, Conflict, InsufficientStorage, NotFound
from tests.support.serving import assert_json_error, copy_model, running_server

WORKERS = 2


def local_names(registry: ModelRegistry) -> list[str]:
    """The models this process holds a copy of (the registry's own map: no production API for tests)."""
    return sorted(registry._local)


BUDGET_MB = 2  # holds a handful of the small test models (each worker holds a copy of each)


@pytest.fixture(scope="module")
def models_root(model_dir, tmp_path_factory):
    """/opt/ml/models as SageMaker lays it out: one directory per model, the artifact inside."""
    root = tmp_path_factory.mktemp("models")
    for name in ("a", "b", "c", "d"):
        copy_model(model_dir, root / name / "model")
    (root / "empty" / "model").mkdir(parents=True)
    return root


def per_model_cost(model_dir, workers: int) -> int:
    return COST_FACTOR * artifact_bytes(model_dir) * workers


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS), "NCF_MME_MEMORY_BUDGET_MB": str(BUDGET_MB)}
    with running_server(tmp_path_factory.mktemp("mme"), None, env) as srv:
        yield srv


def load(server, name, url):
    return server.request("POST", "/models", {"model_name": name, "url": str(url)})


def seed(rec):
    items = rec.items.ids[:50]
    return {"user": [rec.users.ids[0]] * len(items), "item": items}


# --------------------------------------------------------------------------------------------- HTTP
def test_mme_api_lifecycle(server, models_root, rec):
    assert server.request("GET", "/ping").status == 200
    assert server.request("GET", "/models").json() == {"models": []}
    url = models_root / "a" / "model"
    resp = load(server, "a", url)
    assert resp.status == 200 and resp.json()["modelName"] == "a"
    assert load(server, "a", url).status == 409
    assert server.request("GET", "/models/a").json() == {"modelName": "a", "modelUrl": str(url)}
    invoked = server.request("POST", "/models/a/invoke", seed(rec))
    assert invoked.status == 200
    assert invoked.json() == rec.recommend(rec.users.ids[0], 10, seed(rec)["item"], exclude_seen=False).items
    assert server.request("DELETE", "/models/a").status == 200
    for _ in range(2 * WORKERS):  # whichever worker answers: gone
        assert server.request("POST", "/models/a/invoke", seed(rec)).status == 404
        assert server.request("GET", "/models/a").status == 404
    assert server.request("DELETE", "/models/a").status == 404


def test_load_errors(server, models_root):
    assert load(server, "e", models_root / "empty" / "model").status == 404
    assert load(server, "e", models_root / "missing").status == 404
    assert server.request("POST", "/models", {"url": "x"}).status == 400
    assert server.request("POST", "/models", b"{nope", {"Content-Type": "application/json"}).status == 400
    assert server.request("POST", "/models/ghost/invoke", {"users": [1]}).status == 404
    resp = server.request("POST", "/invocations", {"users": [1]})
    assert resp.status == 404 and "/models/{model_name}/invoke" in resp.json()["error"]


def test_management_errors_are_json_with_the_request_id(server, models_root):
    json_body = {"Content-Type": "application/json"}
    url = str(models_root / "a" / "model")
    assert load(server, "x", url).status == 200
    try:
        for (method, path, body, headers), status, fragment in [
            (("POST", "/models", b"{nope", json_body), 400, "body is not valid JSON"),
            (("POST", "/models", b"[1]", json_body), 400, 'body must be {"model_name"'),
            (("POST", "/models", {"url": "x"}, None), 400, "'model_name' must be a non-empty string"),
            (("POST", "/models", {"model_name": "x", "url": url}, None), 409, "model 'x' is already loaded"),
            (
                ("POST", "/models", {"model_name": "y", "url": url + "-missing"}, None),
                404,
                "no ncf_core model",
            ),
            (("GET", "/models/ghost", None, None), 404, "model 'ghost' is not loaded"),
            (("DELETE", "/models/ghost", None, None), 404, "model 'ghost' is not loaded"),
            (("POST", "/models/ghost/invoke", {"users": [1]}, None), 404, "load it with POST /models"),
            (("GET", "/models?page_size=abc", None, None), 400, "page size 'abc' is not an integer"),
            (("GET", "/models?limit=0", None, None), 400, "page size must be ≥ 1"),
            (("GET", "/models?next_page_token=%25%25", None, None), 400, "not a token this server issued"),
            (("PATCH", "/models", b"{}", json_body), 405, "/models answers GET, HEAD, POST, not PATCH"),
            (("PUT", "/models/x", b"{}", json_body), 405, "/models/x answers DELETE, GET, HEAD, not PUT"),
            (("GET", "/models/x/invoke", None, None), 405, "/models/x/invoke answers POST, not GET"),
            (("GET", "/models/x/y", None, None), 404, "there is no route /models/x/y"),
        ]:
            resp = server.request(method, path, body, {**(headers or {}), "X-Request-Id": f"t-{status}"})
            assert_json_error(resp, status, fragment)
            assert resp.headers["x-request-id"] == f"t-{status}"
        # Successful management answers carry the request id too.
        ok = server.request("GET", "/models", headers={"X-Request-Id": "list-1"})
        assert ok.status == 200 and ok.headers["x-request-id"] == "list-1"
        assert ok.headers["content-type"] == "application/json"
        assert server.request("GET", "/models?limit=1").json()["models"] == [
            {"modelName": "x", "modelUrl": url}
        ]
    finally:
        assert server.request("DELETE", "/models/x").status == 200


def test_state_is_identical_whichever_worker_answers(server, models_root, rec):
    assert load(server, "b", models_root / "b" / "model").status == 200
    listings, workers = set(), set()
    deadline = time.monotonic() + 30
    while len(workers) < WORKERS and time.monotonic() < deadline:
        listing = server.request("GET", "/models")
        listings.add(listing.body)
        invoked = server.request("POST", "/models/b/invoke", seed(rec))
        assert invoked.status == 200
        workers.add(invoked.worker)
    assert len(workers) == WORKERS, "every worker answered an invocation of the model one worker loaded"
    assert len(listings) == 1
    server.request("DELETE", "/models/b")


def test_memory_budget_507_and_delete_releases_it(server, models_root, model_dir):
    cost = per_model_cost(model_dir, WORKERS)
    fits = BUDGET_MB * 2**20 // cost
    assert fits >= 3, "the pagination test needs three test models in the budget"
    names = [f"m{i}" for i in range(fits)]
    for name in names:
        assert load(server, name, models_root / "c" / "model").status == 200
    over = load(server, "one-too-many", models_root / "d" / "model")
    assert over.status == 507 and "model budget" in over.json()["error"]
    assert server.request("DELETE", f"/models/{names[0]}").status == 200
    assert load(server, "one-too-many", models_root / "d" / "model").status == 200
    for name in [*names[1:], "one-too-many"]:
        server.request("DELETE", f"/models/{name}")


def test_list_models_is_paginated(server, models_root):
    for name in ("p1", "p2", "p3"):
        assert load(server, name, models_root / "c" / "model").status == 200
    first = server.request("GET", "/models?page_size=2").json()
    assert [m["modelName"] for m in first["models"]] == ["p1", "p2"]
    rest = server.request("GET", f"/models?page_size=2&next_page_token={first['nextPageToken']}").json()
    assert [m["modelName"] for m in rest["models"]] == ["p3"] and "nextPageToken" not in rest
    assert server.request("GET", "/models?page_size=0").status == 400
    assert server.request("GET", "/models?next_page_token=%25%25").status == 400
    for name in ("p1", "p2", "p3"):
        server.request("DELETE", f"/models/{name}")


# --------------------------------------------------------------------------------------------- registry
@pytest.fixture
def pair(tmp_path, model_dir):
    """Two registries on one state directory: what two worker processes share."""
    budget = 3 * per_model_cost(model_dir, 2)
    return ModelRegistry(tmp_path, budget, workers=2), ModelRegistry(tmp_path, budget, workers=2)


def test_a_model_loaded_by_one_process_serves_from_the_other(pair, model_dir):
    a, b = pair
    a.load("x", str(model_dir))
    assert b.describe("x") == {"modelName": "x", "modelUrl": str(model_dir)}
    assert b.local("x") is None  # not loaded in this process yet
    assert b.get("x").state == "ready" and b.local("x") is b.get("x")
    with pytest.raises(Conflict):
        b.load("x", str(model_dir))


def test_unload_in_one_process_drops_the_copy_in_the_other(pair, model_dir):
    a, b = pair
    a.load("x", str(model_dir))
    b.get("x")
    a.unload("x")
    with pytest.raises(NotFound):
        b.get("x")
    b.sync()
    assert local_names(b) == [] and local_names(a) == []
    with pytest.raises(NotFound):
        a.unload("x")


def test_unloading_releases_the_model_memory(pair, model_dir):
    a, b = pair
    a.load("x", str(model_dir))
    copies = [weakref.ref(r.get("x").model) for r in (a, b)]
    a.unload("x")
    b.sync()
    gc.collect()
    assert [ref() for ref in copies] == [None, None], "a process still holds an unloaded model"


def test_follower_preloads_new_models_and_drops_unloaded_ones(pair, model_dir):
    a, b = pair
    b.start_follower(interval=0.05)
    try:
        a.load("x", str(model_dir))
        _wait(lambda: local_names(b) == ["x"])
        a.unload("x")
        _wait(lambda: local_names(b) == [])
    finally:
        b.stop()


def test_reloading_a_name_replaces_the_copy_everywhere(pair, model_dir, tmp_path):
    a, b = pair
    a.load("x", str(model_dir))
    first = b.get("x")
    a.unload("x")
    a.load("x", str(model_dir))
    assert b.get("x") is not first


def test_budget_counts_every_worker_copy(pair, model_dir):
    a, _ = pair
    for name in ("x", "y", "z"):
        a.load(name, str(model_dir))
    with pytest.raises(InsufficientStorage, match="unload a model first"):
        a.load("w", str(model_dir))
    assert sum(e.cost_bytes for e in a.entries().values()) == 3 * per_model_cost(model_dir, 2)


@pytest.mark.parametrize(("name", "url"), [("", "/x"), ("a/b", "/x"), (None, "/x"), ("ok", ""), ("ok", 5)])
def test_bad_load_requests(pair, name, url):
    with pytest.raises(BadRequest):
        pair[0].load(name, url)


def test_corrupt_artifact_is_refused_with_the_reason(pair, model_dir, tmp_path):
    broken = copy_model(model_dir, tmp_path / "broken")
    (broken / "model.pt").write_bytes(b"not a model")
    with pytest.raises(BadRequest, match="corrupted"):
        pair[0].load("x", str(broken))
    assert pair[1].entries() == {}


def _wait(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------- hostile input
@pytest.mark.parametrize("name", ["模型", "émoji-😀", "mü"])
def test_non_ascii_model_names_load_answer_describe_and_unload(server, models_root, rec, name):
    from urllib.parse import quote

    path = "/models/" + quote(name)
    assert load(server, name, models_root / "b" / "model").status == 200
    try:
        assert server.request("GET", path).json()["modelName"] == name
        assert server.request("POST", path + "/invoke", seed(rec)).status == 200
    finally:
        assert server.request("DELETE", path).status == 200
    assert_json_error(server.request("GET", path), 404, "is not loaded")


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"model_name": "m", "url": "/" + "x" * 100_000}, "at most 4096 characters"),
        ({"model_name": "m", "url": "/tmp/a\x00b"}, "NUL"),
        ({"model_name": "m\nFORGED", "url": "/tmp"}, "control characters"),
        ({"model_name": "m", "url": "/x/" + "y" * 300}, "no ncf_core model artifact"),
    ],
)
def test_hostile_load_requests_are_400s_or_404s(server, doc, fragment):
    resp = server.request("POST", "/models", doc)
    assert resp.status in (400, 404) and fragment in resp.json()["error"], resp.body[:300]
