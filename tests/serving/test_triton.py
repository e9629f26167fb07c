"""A real ``tritonserver`` (NVIDIA's, from the nvidia-pytriton wheel) over repositories ``ncf_core export``
wrote: KServe v2 answers over HTTP against ``Recommender`` for the same artifact, and model control.

What runs as exported: both entry ensembles and the three numpy id-mapping models. What does not: this
server has no libtorch backend, so the two network models run their SAME exported ``model.pt`` through
``torch.jit.load`` in a Python-backend stand-in (``tests.support.triton.network_as_python``; names, shapes,
types, batching unchanged). The libtorch backend itself is for SageMaker's Triton image to show
(docs/triton.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ncf_core.inference import Recommender
from ncf_core.triton import export
from tests.support.triton import network_as_python, random_artifact, require_tritonserver, running_triton

K = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model_dir):
    server = require_tritonserver()
    root = tmp_path_factory.mktemp("triton")
    shop = random_artifact(root / "shop-model", string_ids=True)
    repo = root / "repo"
    export(model_dir, repo, "ncf", K)
    export(shop, repo, "shop", K)
    for model in ("ncf_topk", "ncf_pairs", "shop_topk", "shop_pairs"):
        network_as_python(repo, model)
    return server, repo, root, shop


@pytest.fixture(scope="module")
def triton(setup):
    server, repo, root, _ = setup
    # Explicit model control, as SageMaker runs Triton: loading an ensemble loads its steps.
    with running_triton(server, repo, root / "logs", load=["ncf", "ncf_scores"]) as t:
        yield t


@pytest.fixture(scope="module")
def rec(model_dir):
    return Recommender.load(model_dir, backend="torch")


def ids_input(name: str, values: list) -> dict:
    datatype = "BYTES" if isinstance(values[0], str) else "INT64"
    return {"name": name, "shape": [len(values), 1], "datatype": datatype, "data": values}


def outputs(answer: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def assert_recommendations(answer: dict, want: list) -> None:
    out = outputs(answer)
    for row, w in enumerate(want):
        n = int(out["COUNT"][row, 0])
        assert out["ITEMS"][row, :n].tolist() == w.items, (row, w)
        np.testing.assert_allclose(out["SCORES"][row, :n], w.scores, atol=1e-6, rtol=0)
        assert bool(out["FALLBACK"][row, 0]) is w.fallback


def test_ensemble_loaded_its_steps(triton):
    status, index = triton.request("POST", "/v2/repository/index", {})
    ready = {m["name"] for m in index if m.get("state") == "READY"}
    assert status == 200
    assert ready == {"ncf", "ncf_users", "ncf_topk", "ncf_items", "ncf_scores", "ncf_pair_ids", "ncf_pairs"}


def test_top_k_matches_recommender(triton, rec):
    users = [*rec.artifact.user_ids[:40], 10**9, -5]  # two users the model does not know
    status, answer = triton.infer("ncf", [ids_input("USER", users)])
    assert status == 200, answer
    assert_recommendations(answer, rec.recommend_many(users, k=K))


def test_dynamic_batching_keeps_each_request_its_own_answer(triton, rec):
    users = rec.artifact.user_ids[:24]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda u: triton.infer("ncf", [ids_input("USER", [u])]), users))
    for user, (status, answer) in zip(users, answers, strict=True):
        assert status == 200, answer
        assert_recommendations(answer, rec.recommend_many([user], k=K))


def test_pair_scores_match_recommender(triton, rec):
    items = rec.artifact.item_ids
    users = [*rec.artifact.user_ids[:20], 10**9, 10**9 + 1]
    pair_items = [items[(7 * j) % len(items)] for j in range(len(users))]
    status, answer = triton.infer("ncf_scores", [ids_input("USER", users), ids_input("ITEM", pair_items)])
    assert status == 200, answer
    out = outputs(answer)
    want = rec.score_pairs(users, pair_items)
    np.testing.assert_allclose(out["SCORE"][:, 0], want.scores, atol=1e-6, rtol=0)
    assert out["FALLBACK"][:, 0].tolist() == want.fallback


def test_unknown_item_is_a_400_naming_it(triton, rec):
    user = rec.artifact.user_ids[0]
    status, answer = triton.infer("ncf_scores", [ids_input("USER", [user]), ids_input("ITEM", [123456789])])
    assert status == 400
    assert "unknown item id 123456789" in answer["error"]


def test_load_and_unload_a_string_id_model(triton, setup):
    """What SageMaker's multi-model mode drives: load an ensemble (its steps come with it), answer, unload
    it with its steps."""
    shop = Recommender.load(setup[3], backend="torch")
    users = ["u0", "u3", "stranger"]
    assert triton.infer("shop", [ids_input("USER", users)])[0] != 200  # not loaded yet
    status, answer = triton.request("POST", "/v2/repository/models/shop/load", {})
    assert status == 200, answer
    status, answer = triton.infer("shop", [ids_input("USER", users)])
    assert status == 200, answer
    assert_recommendations(answer, shop.recommend_many(users, k=K))
    assert int(outputs(answer)["COUNT"][0, 0]) == 2  # user 0 has seen every item but two: padding follows
    assert outputs(answer)["ITEMS"][0, 2:].tolist() == [""] * (K - 2)

    status, answer = triton.request(
        "POST", "/v2/repository/models/shop/unload", {"parameters": {"unload_dependents": True}}
    )
    assert status == 200, answer
    status, index = triton.request("POST", "/v2/repository/index", {})
    states = {m["name"]: m.get("state") for m in index}
    assert all(states[m] != "READY" for m in ("shop", "shop_users", "shop_topk", "shop_items")), states
    assert states["ncf"] == "READY"
    assert triton.infer("shop", [ids_input("USER", users)])[0] != 200


def test_invoke_sh_speaks_kserve_v2_to_it(triton, rec):
    """scripts/invoke.sh --local URL --v2-model NAME --users / --pairs: the bodies it builds, answered."""
    import json
    import os
    import subprocess
    import sys

    from tests.support.paths import ROOT

    env = os.environ | {"PYTHON": sys.executable}
    base = [str(ROOT / "scripts" / "invoke.sh"), "--local", f"http://127.0.0.1:{triton.port}"]
    users = rec.artifact.user_ids[:3]
    proc = subprocess.run(
        [*base, "--v2-model", "ncf", "--users", ",".join(map(str, users))],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_recommendations(json.loads(proc.stdout), rec.recommend_many(users, k=K))
    user, item = rec.artifact.user_ids[0], rec.artifact.item_ids[0]
    proc = subprocess.run(
        [*base, "--v2-model", "ncf_scores", "--pairs", f"{user}:{item}"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    score = outputs(json.loads(proc.stdout))["SCORE"][0, 0]
    np.testing.assert_allclose(score, rec.score_pairs([user], [item]).scores[0], atol=1e-6, rtol=0)
