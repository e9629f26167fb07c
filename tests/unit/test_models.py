"""One contract suite run against every model variant."""

from __future__ import annotations

import pytest
import torch

from ncf_core.config import MODEL_TYPES, TrainConfig
from ncf_core.errors import ConfigError
from ncf_core.models import NCF, ModelConfig, neumf_from_pretrained


@pytest.fixture(params=MODEL_TYPES)
def model(request) -> NCF:
    torch.manual_seed(0)
    return NCF(ModelConfig(request.param, num_users=30, num_items=40, factor=8, num_layers=3))


def reference_forward(m: NCF, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The paper's NeuMF written naively: concat embeddings, then the MLP tower."""
    parts = []
    if m.config.uses_gmf:
        parts.append(m.embed_user_gmf(users) * m.embed_item_gmf(items))
    if m.config.uses_mlp:
        h = torch.cat([m.embed_user_mlp(users), m.embed_item_mlp(items)], -1)
        for layer in m.mlp_layers:
            h = torch.relu(layer(h))
        parts.append(h)
    return m.predict_layer(torch.cat(parts, -1)).squeeze(-1)


@pytest.mark.parametrize("batch", [5, 200])  # below and above the entity count: both projection paths
def test_forward_matches_naive_concatenation(model: NCF, batch: int):
    users = torch.randint(30, (batch,))
    items = torch.randint(40, (batch,))
    assert torch.allclose(model(users, items), reference_forward(model, users, items), atol=1e-6)


def test_one_user_against_all_items_broadcasts(model: NCF):
    with torch.no_grad():
        us = tuple(None if t is None else t[3:4] for t in model.user_side())
        scores = model.head(us, model.item_side())
        expected = model(torch.full((40,), 3), torch.arange(40))
    assert scores.shape == (40,) and torch.allclose(scores, expected, atol=1e-6)


def test_a_user_per_column_broadcasts_against_a_group_of_items_with_the_same_gradients(model: NCF):
    """The trainer's layout: P users against [G, P] items (a positive and its negatives per column)."""
    users, items = torch.randint(30, (7,)), torch.randint(40, (3, 7))
    grouped = model(users, items)
    grads = torch.autograd.grad(grouped.square().sum(), list(model.parameters()))
    flat = model(users.repeat(3), items.reshape(-1))
    expected = torch.autograd.grad(flat.square().sum(), list(model.parameters()))
    assert grouped.shape == (3, 7) and torch.allclose(grouped.reshape(-1), flat, atol=1e-6)
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)


def test_gradients_reach_every_parameter(model: NCF):
    model(torch.randint(30, (64,)), torch.randint(40, (64,))).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_paper_sizes():
    m = NCF(ModelConfig("neumf", 10, 10, factor=32, num_layers=3))
    assert m.embed_user_mlp.weight.shape == (10, 128)
    assert [tuple(layer.weight.shape) for layer in m.mlp_layers] == [(128, 256), (64, 128), (32, 64)]
    assert m.predict_layer.weight.shape == (1, 64)
    assert float(m.embed_user_gmf.weight.detach().std()) == pytest.approx(0.01, rel=0.3)


@pytest.mark.parametrize(
    "kwargs",
    [{"model": "svd"}, {"factor": 0}, {"num_layers": 0}, {"dropout": 1.0}, {"num_users": 0}],
)
def test_invalid_config(kwargs):
    base = {"model": "neumf", "num_users": 3, "num_items": 3}
    with pytest.raises(ConfigError):
        ModelConfig(**(base | kwargs))


@pytest.mark.parametrize("kwargs", [{"model": "svd"}, {"factor": 0}, {"num_layers": 9}, {"dropout": 1.0}])
def test_the_network_is_checked_with_the_training_settings_words(kwargs):
    """One check (config.check_network): the settings refuse it before any data, in the same words."""
    with pytest.raises(ConfigError) as from_settings:
        TrainConfig(**kwargs).validate()
    with pytest.raises(ConfigError) as from_model:
        ModelConfig(**({"model": "neumf", "num_users": 3, "num_items": 3} | kwargs))
    assert str(from_model.value) == str(from_settings.value)


def test_neumf_from_pretrained_mixes_gmf_and_mlp():
    torch.manual_seed(1)
    gmf = NCF(ModelConfig("gmf", 20, 25, factor=8))
    mlp = NCF(ModelConfig("mlp", 20, 25, factor=8, num_layers=2))
    neu = neumf_from_pretrained(gmf, mlp, alpha=0.5)
    u, i = torch.randint(20, (50,)), torch.randint(25, (50,))
    # Logit of NeuMF = 0.5 * GMF logit + 0.5 * MLP logit when both predict layers are split by alpha.
    with torch.no_grad():
        assert torch.allclose(neu(u, i), 0.5 * gmf(u, i) + 0.5 * mlp(u, i), atol=1e-6)
    with pytest.raises(ConfigError):
        neumf_from_pretrained(mlp, gmf)
