"""The model side of serving without HTTP: the default handler's three request shapes as ``Recommender``
calls, user overrides from ``code/inference.py``, and model health."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from ncf_core.errors import UnknownIdError
from ncf_core.inference import Recommender
from ncf_sagemaker.serving import handler as handler_module
from ncf_sagemaker.serving import protocol
from ncf_sagemaker.serving.handler import FAILED, READY, Context, ServedModel, load_handler
from ncf_sagemaker.serving.http_errors import BadRequest, ServiceUnavailable
from tests.support.serving import copy_model, group_of_item, group_of_user


def ctx() -> Context:
    return Context(request_id="test")


# ----------------------------------------------------------------------------------- default handler
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_default_pipeline_answers_all_three_shapes_from_the_model(model_dir, rec, backend):
    model = Recommender.load(model_dir, backend=backend)
    user = rec.users.ids[0]
    items = rec.items.ids[:30]
    batch = protocol.Batch(
        [
            protocol.TopItemsQuery([user] * len(items), items, 5),
            protocol.RecommendQuery([user, 10**6], 4, None, True),
            protocol.ScoreQuery([user, 10**6], [items[0], items[1]]),
        ],
        "jsonlines",
    )
    top, recs, scores = handler_module.predict_fn(batch, model).results
    assert top.items == rec.recommend(user, 5, items, exclude_seen=False).items and not top.fallback
    mine, unknown = recs.recommendations
    assert [group_of_item(i) for i in mine.items] == [group_of_user(user)] * 4
    assert not set(mine.items) & set(rec.items.raw(rec.seen(0)))
    assert unknown.fallback and unknown.items == rec.recommend(10**6, 4).items
    assert scores.fallback == [False, True]
    assert scores.scores[0] == pytest.approx(rec.score([user], [items[0]])[0], abs=1e-6)
    popular = rec.recommend(10**6, 1, [items[1]], exclude_seen=False)
    assert scores.scores[1] == pytest.approx(popular.scores[0])


def test_seed_shape_with_mixed_users_ranks_all_pairs(rec):
    users = [rec.users.ids[0]] * 3 + [rec.users.ids[1]] * 3
    items = rec.items.ids[:6]
    batch = protocol.Batch([protocol.TopItemsQuery(users, items, 6)], "json")
    (result,) = handler_module.predict_fn(batch, rec).results
    expected = np.asarray(rec.score(users, items))
    assert result.items == [items[i] for i in np.argsort(-expected, kind="stable")]


def test_k_beyond_the_catalogue_and_unknown_items_are_client_errors(rec):
    def predict(query):
        return handler_module.predict_fn(protocol.Batch([query], "json"), rec)

    with pytest.raises(BadRequest, match=f"only {rec.num_items} items"):
        predict(protocol.RecommendQuery([1], rec.num_items + 1, None, True))
    with pytest.raises(BadRequest, match=f"only {rec.num_items} items"):
        predict(protocol.TopItemsQuery([1], [rec.items.ids[0]], rec.num_items + 1))
    with pytest.raises(UnknownIdError):
        predict(protocol.ScoreQuery([1], [424242]))


def test_output_fn_flags_the_fallback_of_the_seed_shape_in_a_header(rec):
    model = rec
    batch = protocol.Batch([protocol.TopItemsQuery([10**6, 10**6], rec.items.ids[:2], 1)], "json")
    body, media, headers = handler_module.output_fn(handler_module.predict_fn(batch, model), "*/*")
    assert (media, headers) == ("application/json", (("X-Ncf-Fallback", "true"),))
    assert orjson.loads(body) == [
        max(rec.items.ids[:2], key=lambda i: rec.artifact.item_popularity[rec.items.get(i)])
    ]


# --------------------------------------------------------------------------------------------- overrides
OVERRIDE = """
import json

def input_fn(request_body, content_type, context):
    assert content_type == "application/x-ncf-test", content_type
    if request_body == b"bad":
        raise ValueError("custom input_fn says the body is bad")
    return {"user": int(request_body), "attrs": context.custom_attributes}

def predict_fn(data, model):
    if data["user"] == 0:
        raise RuntimeError("a bug in user code")
    rec = model.recommend(data["user"], 2)
    return {"items": rec.items, "attrs": data["attrs"]}

def output_fn(prediction, accept):
    return json.dumps(prediction), "application/x-ncf-out"
"""


def test_user_code_overrides_some_steps_and_gets_the_context(model_dir, tmp_path, rec):
    model = ServedModel(copy_model(model_dir, tmp_path / "m", OVERRIDE), module_name="t_override")
    assert model.load() and model.state == READY
    assert model.handler.overridden == {"input_fn", "predict_fn", "output_fn"}
    assert model.handler.model_fn is handler_module.model_fn
    context = Context(request_id="r1", custom_attributes="k=2")
    reply = model.invoke(b"1", "application/x-ncf-test", None, context)
    assert reply.content_type == "application/x-ncf-out"
    assert orjson.loads(reply.body) == {"items": rec.recommend(1, 2).items, "attrs": "k=2"}
    with pytest.raises(BadRequest, match="custom input_fn says the body is bad"):
        model.invoke(b"bad", "application/x-ncf-test", None, context)
    with pytest.raises(RuntimeError, match="a bug in user code"):
        model.invoke(b"0", "application/x-ncf-test", None, context)


def test_custom_model_fn_without_warmup_is_ready_when_it_returns(model_dir, tmp_path):
    code = "def model_fn(model_dir):\n    return {'dir': model_dir}\n"
    handler = load_handler(copy_model(model_dir, tmp_path / "m", code), "t_model_fn")
    assert handler.overridden == {"model_fn"} and handler.warmup_fn is None
    assert handler.model_fn("x") == {"dir": "x"}


def test_broken_user_code_fails_the_model_with_the_reason(model_dir, tmp_path):
    model = ServedModel(
        copy_model(model_dir, tmp_path / "m", "import no_such_module_here\n"), module_name="t_bad"
    )
    assert model.load() is False and model.state == FAILED
    status, message = model.health()
    assert status == 503 and "No module named 'no_such_module_here'" in message
    with pytest.raises(ServiceUnavailable, match="no_such_module_here"):
        model.invoke(b"{}", "application/json", None, ctx())


def test_missing_or_corrupt_artifact_fails_with_the_reason(model_dir, tmp_path):
    empty = ServedModel(tmp_path / "nothing")
    empty.load()
    assert empty.health()[0] == 503 and "not an ncf_core model directory" in empty.health()[1]
    corrupt = copy_model(model_dir, tmp_path / "corrupt")
    (corrupt / "model.pt").write_bytes(b"garbage")
    model = ServedModel(corrupt)
    model.load()
    assert model.state == FAILED and "corrupted" in model.health()[1]


def test_health_is_503_until_warm_up_succeeded(model_dir, monkeypatch):
    calls = []

    def failing_warmup(model):
        calls.append(model)
        raise RuntimeError("warm-up prediction failed")

    model = ServedModel(model_dir)
    assert model.health()[0] == 503 and "loading" in model.health()[1]
    handler = handler_module.Handler(warmup_fn=failing_warmup)
    monkeypatch.setattr("ncf_sagemaker.serving.handler.load_handler", lambda *a: handler)
    model.load()
    assert calls and model.health() == (503, model.error)
    assert "warm-up prediction failed" in model.error
