"""The model side of serving without HTTP: the default handler's three request shapes as ``Recommender``
calls, user overrides from ``code/inference.py``, and model health."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from ncf_core.inference import Recommender
from ncf_sagemaker.serving import handler as handler_module
from ncf_sagemaker.serving import protocol
from ncf_sagemaker.serving.handler import FAILED, READY, Context, ServedModel, load_handler
from ncf_sagemaker.serving.responses import (
    BadRequest,
    NotAcceptable,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from tests.support.serving import copy_model, group_of_item, group_of_user


def ctx(**kwargs) -> Context:
    return Context(request_id="test", **kwargs)


def invoke(model: ServedModel, body: bytes, content_type: str | None, context: Context):
    """The app's two calls, in the calling thread."""
    return model.answer(model.decode(body, content_type, context), context)


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
    mine, unknown = recs
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
    assert result.user is None and not result.fallback


def test_the_models_own_checks_are_client_errors_that_name_the_record(rec):
    """``k``, candidates and unknown items are the Recommender's to judge; predict_fn says where."""

    def predict(query):
        return handler_module.predict_fn(protocol.Batch([query], "jsonlines"), rec)

    with pytest.raises(
        BadRequest, match=f"line 3: 'k' is {rec.num_items + 1} but .* only {rec.num_items} items"
    ):
        predict(protocol.RecommendQuery([1], rec.num_items + 1, None, True, "line 3"))
    with pytest.raises(BadRequest, match=f"body: 'k' is .* only {rec.num_items} items"):
        predict(protocol.TopItemsQuery([1], [rec.items.ids[0]], rec.num_items + 1))
    with pytest.raises(BadRequest, match="line 2: 'k' must be ≥ 1, got 0"):
        predict(protocol.RecommendQuery([1], 0, None, True, "line 2"))
    with pytest.raises(BadRequest, match=f"CSV: 'candidates' holds {rec.num_items + 1} ids"):
        predict(protocol.RecommendQuery([1], 1, [rec.items.ids[0]] * (rec.num_items + 1), True, "CSV"))
    with pytest.raises(BadRequest, match="body: unknown item id 424242"):
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
    assert model.input_cost(b"1") is None  # user code: the app runs it in its thread pool
    decoded = model.decode(b"1", "application/x-ncf-test", context)
    assert decoded.cost is None
    reply = model.answer(decoded, context)
    assert (reply.status, reply.content_type) == (200, "application/x-ncf-out")
    assert orjson.loads(reply.body) == {"items": rec.recommend(1, 2).items, "attrs": "k=2"}
    with pytest.raises(BadRequest, match="custom input_fn says the body is bad"):
        invoke(model, b"bad", "application/x-ncf-test", context)
    with pytest.raises(RuntimeError, match="a bug in user code"):
        invoke(model, b"0", "application/x-ncf-test", context)


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
        invoke(model, b"{}", "application/json", ctx())


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


def test_the_default_pipeline_is_the_handler_contract_and_prices_its_steps(model_dir, rec):
    """input_fn → predict_fn → output_fn is the fast path itself; the model states each step's cost."""
    model = ServedModel(model_dir)
    assert model.load() and model.handler.overridden == frozenset()
    body = orjson.dumps({"users": [rec.users.ids[0]], "k": 3, "candidates": rec.items.ids[:40]})
    assert model.input_cost(body) == len(body)
    decoded = model.decode(body, "application/json", ctx(accept="application/json"))
    assert isinstance(decoded.data, protocol.Batch) and decoded.cost == 40
    reply = model.answer(decoded, ctx())
    want = rec.recommend(rec.users.ids[0], 3, rec.items.ids[:40])
    assert orjson.loads(reply.body) == {"recommendations": [want.as_dict()]}
    assert model.decode(orjson.dumps({"users": [1]}), None, ctx()).cost == rec.num_items
    # 415 and 406 come from input_fn before any parsing: the body here is not even JSON
    with pytest.raises(NotAcceptable):
        model.decode(b"not json", "application/json", ctx(accept="text/csv"))
    with pytest.raises(UnsupportedMediaType):
        model.decode(b"not json", "text/plain", ctx())


def test_our_output_fn_encodes_what_a_users_predict_fn_returns_as_json(model_dir, tmp_path):
    code = "import numpy as np\n\ndef predict_fn(data, model):\n    return {'n': np.arange(3)}\n"
    model = ServedModel(copy_model(model_dir, tmp_path / "m", code), module_name="t_plain_predict")
    assert model.load()
    decoded = model.decode(b'{"users": [1]}', "application/json", ctx())
    assert decoded.cost is None  # a user's predict_fn: cost unknown
    reply = model.answer(decoded, ctx())
    assert (reply.content_type, orjson.loads(reply.body)) == ("application/json", {"n": [0, 1, 2]})
    with pytest.raises(NotAcceptable):
        model.answer(decoded, ctx(accept="text/csv"))


def test_the_documented_custom_output_fn_works_as_written(model_dir, tmp_path, rec):
    """The example in containers/serve/README.md (Custom code), run as a user would drop it in."""
    readme = (Path(__file__).resolve().parents[2] / "containers" / "serve" / "README.md").read_text()
    section = readme.split("## Custom code", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    model = ServedModel(copy_model(model_dir, tmp_path / "m", code), module_name="t_readme_output")
    assert model.load()
    users = rec.users.ids[:2]
    reply = invoke(model, orjson.dumps({"users": users, "k": 3}), "application/json", ctx())
    answer = orjson.loads(reply.body)["answer"]
    assert answer == {str(u): rec.recommend(u, 3).items for u in users}


# --------------------------------------------------------------------------------------------- the scorer
@pytest.fixture
def scoring(monkeypatch):
    """Restores the process's scorer settings after the test."""
    monkeypatch.setattr(handler_module, "_scoring", handler_module._scoring)
    return handler_module


def test_model_fn_scores_in_the_precision_and_on_the_device_it_is_given(model_dir, scoring):
    assert handler_module.model_fn(model_dir).precision == "fp32"  # auto, on every device
    scoring.use_scoring(scoring.Scoring("cpu", "bf16"))
    rec = handler_module.model_fn(model_dir)
    assert (rec.backend, rec.precision, rec.device.type) == ("torch", "bf16", "cpu")
    handler_module.warmup_fn(rec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is visible")
def test_a_cuda_device_without_a_gpu_fails_the_load_with_the_reason(model_dir, scoring):
    scoring.use_scoring(scoring.Scoring("cuda", "auto"))
    model = ServedModel(model_dir)
    assert not model.load() and model.state == FAILED
    assert "CUDA is not available" in model.health()[1]


def test_the_app_hands_the_scorer_settings_to_model_fn(model_dir, scoring):
    from ncf_sagemaker.serving.app import ServingApp
    from ncf_sagemaker.serving.settings import Settings

    threads = torch.get_num_threads()
    served = ServedModel(model_dir)
    app = ServingApp(replace(Settings.from_env(), device="cpu", precision="bf16"), model=served)
    try:
        app.start()
        assert served.wait(60) and served.state == READY, served.error
        assert (served.model.backend, served.model.precision) == ("torch", "bf16")
    finally:
        app.stop()
        torch.set_num_threads(threads)
