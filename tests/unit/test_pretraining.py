"""Pre-training: alpha picked on validation, never on test; the paper's 0.5 without a validation split."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ncf_core.evaluation import evaluate
from ncf_core.models import neumf_from_pretrained
from ncf_core.pretraining import ALPHA_GRID, PAPER_ALPHA, combine, pick_alpha
from ncf_core.training import TrainConfig, train
from tests.support.synthetic import SMALL_DATA

CFG = TrainConfig(factor=8, num_layers=2, epochs=4, batch_size=512, seed=3, **SMALL_DATA)


@pytest.fixture(scope="module")
def halves(planted):
    gmf = train(planted, replace(CFG, model="gmf")).model
    mlp = train(planted, replace(CFG, model="mlp", epochs=2, lr=0.003)).model  # deliberately the weaker
    return gmf, mlp


def test_alpha_is_the_grid_value_with_the_best_validation_ndcg(planted, halves):
    gmf, mlp = halves
    alpha = pick_alpha(gmf, mlp, planted.val)
    val_ndcg = {
        a: evaluate(neumf_from_pretrained(gmf, mlp, alpha=a).eval(), planted.val).ndcg for a in ALPHA_GRID
    }
    assert alpha in ALPHA_GRID and val_ndcg[alpha] == max(val_ndcg.values())
    # The halves differ in strength, so the choice is not the paper's fixed midpoint by accident of ties.
    assert len({round(v, 6) for v in val_ndcg.values()}) > 1


def test_without_validation_the_papers_alpha(halves):
    assert pick_alpha(*halves, None) == PAPER_ALPHA


def test_explicit_alpha_is_used_as_given(planted, halves):
    model, alpha = combine(*halves, planted.val, alpha=0.25)
    assert alpha == 0.25
    gmf_w = halves[0].predict_layer.weight
    assert model.predict_layer.weight[:, : gmf_w.shape[1]].allclose(0.25 * gmf_w)
