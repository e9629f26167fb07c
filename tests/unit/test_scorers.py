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
from ncf_core.inference import BackendMismatchError, NumpyScorer, Recommender, build_scorer, prune_dead_units
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


def recommender(net: NCF, backend: str) -> Recommender:
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
    return Recommender(art, backend=backend)


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
