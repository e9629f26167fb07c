"""One contract for every scoring backend and model variant (GMF, MLP of 1-3 layers, NeuMF).

Each variant is a random network with some hidden units forced dead (so the numpy backend's pruning has
work to do) over a small catalogue, where the torch network itself is the right answer: every backend
must give its logits for every pair, every user against every item, and the same top-K.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncf_core.artifact import Artifact
from ncf_core.config import check_device
from ncf_core.errors import ConfigError, NcfError
from ncf_core.inference import (
    BackendMismatchError,
    NumpyScorer,
    Recommender,
    TorchScorer,
    build_scorer,
    pick_precision,
    prune_dead_units,
    top_k,
)
from ncf_core.models import NCF, ModelConfig

USERS, ITEMS = 23, 31
VARIANTS = [("gmf", 1), ("mlp", 1), ("mlp", 3), ("neumf", 2), ("neumf", 3)]


def network(model: str, layers: int, kill_units: bool = True) -> NCF:
    torch.manual_seed(7 * layers + len(model))
    net = NCF(ModelConfig(model, USERS, ITEMS, factor=4, num_layers=layers))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
        if kill_units and net.config.uses_mlp and layers > 1:
            net.mlp_layers[1].bias[:2] = -1e3  # two units of the second layer can never fire
    return net.eval()


def recommender(net: NCF, backend: str, precision: str = "auto", device: str = "cpu") -> Recommender:
    rng = np.random.default_rng(0)
    seen = [np.sort(rng.choice(ITEMS, size=3, replace=False)) for _ in range(USERS)]
    art = Artifact(
        model=net,
        user_ids=list(range(100, 100 + USERS)),
        item_ids=[f"i{n}" for n in range(ITEMS)],
        history_indptr=np.cumsum([0] + [len(s) for s in seen]).astype(np.int64),
        history_indices=np.concatenate(seen).astype(np.int32),
        item_popularity=rng.integers(0, 50, ITEMS).astype(np.int64),
    )
    return Recommender(art, device, backend=backend, precision=precision)


def all_pairs() -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(np.arange(USERS), ITEMS), np.tile(np.arange(ITEMS), USERS)


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}")
def net(request) -> NCF:
    return network(*request.param)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_backend_logits_are_the_networks_for_every_pair_and_every_user(net, backend):
    scorer = build_scorer(net, backend)
    users, items = all_pairs()
    with torch.no_grad():
        want = net(torch.from_numpy(users), torch.from_numpy(items)).numpy()
    np.testing.assert_allclose(scorer.pairs(users, items), want, rtol=1e-5, atol=1e-5)
    rows = np.stack(list(scorer.users(np.arange(USERS), None)))
    np.testing.assert_allclose(rows, want.reshape(USERS, ITEMS), rtol=1e-5, atol=1e-5)
    some = np.asarray([5, 0, 5, 30])
    np.testing.assert_allclose(
        scorer.user(7, some), want.reshape(USERS, ITEMS)[7, some], rtol=1e-5, atol=1e-5
    )


def test_numpy_backend_prunes_only_units_that_never_fire(net):
    scorer = NumpyScorer(net)
    layers = net.config.num_layers if net.config.uses_mlp else 0
    assert scorer.pruned_units >= (2 if layers > 1 else 0)
    if layers > 1:
        assert scorer.layers[0][0].shape[1] <= net.mlp_layers[1].out_features - 2


def test_pruning_keeps_a_unit_when_a_whole_layer_is_dead():
    rng = np.random.default_rng(1)
    user, item = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    layers = [(rng.normal(size=(4, 3)).astype(np.float32), np.full(3, -1e4, np.float32))]
    pruned, w_out, dropped = prune_dead_units(user, item, layers, np.ones(3, np.float32))
    assert pruned[0][0].shape == (4, 1) and w_out.shape == (1,) and dropped == 2


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("with_candidates", [True, False])
def test_backends_agree_on_recommendations(net, exclude_seen, with_candidates):
    fast, reference = recommender(net, "numpy"), recommender(net, "torch")
    assert (fast.backend, reference.backend) == ("numpy", "torch")
    candidates = [f"i{n}" for n in range(0, ITEMS, 2)] if with_candidates else None
    users = [*fast.users.ids, 999]  # and one unknown user: the popularity fallback
    for got, want in zip(
        fast.recommend_many(users, 6, candidates, exclude_seen),
        reference.recommend_many(users, 6, candidates, exclude_seen),
        strict=True,
    ):
        assert (got.items, got.fallback) == (want.items, want.fallback)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
        if exclude_seen and not got.fallback:
            assert not set(got.items) & set(fast.items.raw(fast.seen(fast.users.get(got.user))))


def test_top_items_and_pair_scores_with_the_cold_start_fallback(net):
    rec = recommender(net, "numpy")
    items = rec.items.ids[3:20]
    user = rec.users.ids[4]
    top = rec.top_items([user] * len(items), items, 5)
    assert top == rec.recommend(user, 5, items, exclude_seen=False) and not top.fallback
    top = rec.top_items([999] * 3, items[:3], 2)
    assert top.fallback and top == rec.recommend(999, 2, items[:3])
    mixed_users = [user, 999, rec.users.ids[0]]
    scored = rec.score_pairs(mixed_users, items[:3])
    assert scored.fallback == [False, True, False] and scored.items == items[:3]
    assert scored.scores[0] == pytest.approx(rec.score([user], [items[0]])[0])
    assert scored.scores[1] == pytest.approx(rec.recommend(999, 1, [items[1]]).scores[0])
    top = rec.top_items(mixed_users, items[:3], 3)
    order = np.argsort(-np.asarray(scored.scores), kind="stable")
    assert top.fallback and top.user is None and top.items == [items[i] for i in order]
    assert top.scores == pytest.approx([scored.scores[i] for i in order])


def test_a_backend_that_disagrees_with_the_network_is_refused_at_load(monkeypatch):
    original = NumpyScorer._mlp
    monkeypatch.setattr(NumpyScorer, "_mlp", lambda self, h: original(self, h) * 1.01)
    with pytest.raises(BackendMismatchError, match="differs from the torch network"):
        recommender(network("neumf", 3), "numpy")
    assert recommender(network("neumf", 3), "torch").backend == "torch"  # the reference still loads


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        recommender(network("gmf", 1), "tpu")


# ------------------------------------------------------------------------------------- ranking on the device
def test_top_k_breaks_ties_by_position_also_at_the_kth_place():
    scores = np.array([0.0, 2.0, 1.0, 1.0, 2.0, 1.0, -np.inf, 1.0], np.float32)
    assert top_k(scores, 3).tolist() == [1, 4, 2]
    assert top_k(scores, 5).tolist() == [1, 4, 2, 3, 5]
    assert top_k(scores, 8).tolist() == [1, 4, 2, 3, 5, 7, 0]
    stable = torch.sort(torch.from_numpy(scores), descending=True, stable=True).indices[:5]
    assert stable.tolist() == top_k(scores, 5).tolist()


def test_the_torch_backend_ranks_a_chunk_of_users_on_its_device(net, monkeypatch):
    """All-items top-K through ``TorchScorer.top_k`` (one batched topk, history masked there): never the
    rows of logits the numpy path ranks one by one, and the numpy path's answer."""
    fast, reference = recommender(net, "numpy"), recommender(net, "torch")
    monkeypatch.setattr(TorchScorer, "users", lambda *a: pytest.fail("scores copied to the host"))
    users = [*fast.users.ids, 999]
    for k, candidates in ((6, None), (ITEMS, None), (4, [f"i{n}" for n in range(0, ITEMS, 3)])):
        got = reference.recommend_many(users, k, candidates)
        want = fast.recommend_many(users, k, candidates)
        assert [(r.items, r.fallback) for r in got] == [(r.items, r.fallback) for r in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.scores, w.scores, atol=1e-6)
    # k = every item: the seen ones (-inf on the device) are dropped, not returned last
    assert all(len(r.items) == ITEMS - 3 for r in reference.recommend_many(users[:-1], ITEMS))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_top_k_is_the_cpu_fp32_top_k(net):
    gpu, cpu = recommender(net, "auto", device="cuda"), recommender(net, "numpy")
    assert (gpu.backend, gpu.precision, gpu.device.type) == ("torch", "fp32", "cuda")
    users = [*cpu.users.ids, 999]
    for exclude_seen in (True, False):
        got = gpu.recommend_many(users, 6, exclude_seen=exclude_seen)
        want = cpu.recommend_many(users, 6, exclude_seen=exclude_seen)
        assert [r.items for r in got] == [r.items for r in want]


# ------------------------------------------------------------------------------------------- precision
def test_precision_names_are_checked_in_one_place():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == pick_precision("fp32", cpu) == torch.float32
    assert pick_precision("bf16", cpu) == torch.bfloat16
    for bad in ("fp16", "BF16", "", "half"):
        with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16"):
            pick_precision(bad, cpu)
    with pytest.raises(ConfigError, match="precision must be one of"):
        recommender(network("gmf", 1), "auto", precision="fp64")
    assert [check_device(d) for d in ("auto", "cpu", "cuda", "cuda:1")] == ["auto", "cpu", "cuda", "cuda:1"]
    for bad in ("gpu", "cuda:", "cuda:x", "CPU"):
        with pytest.raises(ConfigError, match="device must be auto, cpu or cuda"):
            check_device(bad)


def test_auto_precision_is_fp32_and_the_numpy_backend_refuses_bf16():
    rec = recommender(network("neumf", 2), "auto")
    assert (rec.backend, rec.precision) == ("numpy", "fp32")
    with pytest.raises(NcfError, match="bf16 needs the torch backend"):
        recommender(network("neumf", 2), "numpy", precision="bf16")


def test_the_bf16_scorer_runs_the_upper_layers_in_bf16_and_agrees_on_top_k(net):
    fp32, bf16 = recommender(net, "numpy"), recommender(net, "auto", precision="bf16")
    assert (bf16.backend, bf16.precision) == ("torch", "bf16")  # the load-time check passed
    if net.config.uses_mlp and net.config.num_layers > 1:
        assert {w.dtype for w, _ in bf16.scorer._head.layers} == {torch.bfloat16}
    got, want = bf16.recommend_many(fp32.users.ids, 5), fp32.recommend_many(fp32.users.ids, 5)
    same = sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g.items, w.items, strict=True))
    assert same / (5 * USERS) >= 0.9
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.scores, w.scores, atol=0.05)


def test_a_bf16_scorer_far_from_the_network_is_refused(monkeypatch):
    from ncf_core import inference

    original = inference._LowPrecisionHead.__call__
    monkeypatch.setattr(
        inference._LowPrecisionHead, "__call__", lambda self, u, i: original(self, u, i) + 0.5
    )
    with pytest.raises(BackendMismatchError, match="torch bf16 scorer differs"):
        recommender(network("neumf", 3), "torch", precision="bf16")
