"""The network-health check: subnormal weights and ReLU units that never fire, and the training warning."""

from __future__ import annotations

import logging

import torch

from ncf_core.health import DEAD_UNITS_WARN, dead_unit_shares, dying, network_health, warn_if_dying
from ncf_core.models import NCF, ModelConfig


def neumf() -> NCF:
    torch.manual_seed(0)
    return NCF(ModelConfig("neumf", num_users=50, num_items=40, factor=8, num_layers=3))


def by_name(model: NCF) -> dict:
    return {h.name: h for h in network_health(model)}


def test_a_fresh_network_is_alive():
    model = neumf()
    health = by_name(model)
    assert set(health) == {
        "embed_user_gmf", "embed_user_mlp", "embed_item_gmf", "embed_item_mlp",
        "mlp_layers.0", "mlp_layers.1", "mlp_layers.2", "predict_layer",
    }  # fmt: skip
    assert all(h.subnormal == 0 and h.zero == 0 for h in health.values())
    assert all(health[f"mlp_layers.{k}"].dead_units < 0.2 for k in range(3))
    assert dying(list(health.values())) == []


def test_units_that_never_fire_and_subnormal_weights_are_counted():
    model = neumf()
    with torch.no_grad():
        model.mlp_layers[0].bias[:24] = -1e3  # 24 of its 32 units never fire
        # A quarter of its values subnormal, written as bits: with flush-to-zero on, 1e-40 would land as 0.
        model.mlp_layers[2].weight.view(torch.int32).view(-1)[::4] = 0x00011C9A
    health = by_name(model)
    assert health["mlp_layers.0"].dead_units == 24 / 32 >= DEAD_UNITS_WARN
    assert abs(health["mlp_layers.2"].subnormal - 0.25) < 1e-9
    assert health["mlp_layers.1"].subnormal == 0
    assert [h.name for h in dying(list(health.values()))] == ["mlp_layers.0", "mlp_layers.2"]


def test_dead_units_downstream_of_a_dead_layer_are_dead_too():
    model = neumf()
    with torch.no_grad():
        model.mlp_layers[0].bias.fill_(-1e3)  # nothing reaches layer 1: only its biases decide
        model.mlp_layers[1].bias.fill_(-1.0)
    assert dead_unit_shares(model)[:2] == [1.0, 1.0]


def test_training_warns_once_per_epoch_naming_the_dying_layers(caplog):
    model = neumf()
    with caplog.at_level(logging.WARNING, logger="ncf_core.health"):
        assert warn_if_dying(network_health(model), 1) == []
    assert not caplog.records
    with torch.no_grad():
        model.mlp_layers[1].bias.fill_(-1e3)
    with caplog.at_level(logging.WARNING, logger="ncf_core.health"):
        bad = warn_if_dying(network_health(model), 2)
    assert [h.name for h in bad] == ["mlp_layers.1", "mlp_layers.2"]  # layer 2 sees only its biases
    (record,) = caplog.records
    assert "after epoch 2 the network is dying: mlp_layers.1 (0% subnormal, 100% of units never fire)" in (
        record.getMessage()
    )


def test_gmf_has_no_units_to_die():
    model = NCF(ModelConfig("gmf", num_users=5, num_items=4, factor=3))
    assert dead_unit_shares(model) == []
    assert [h.name for h in network_health(model)] == ["embed_user_gmf", "embed_item_gmf", "predict_layer"]
