"""The paper's pre-training step: NeuMF initialised from a trained GMF and a trained MLP.

``alpha`` weighs GMF against MLP in the combined output layer. The paper fixes it at 0.5; on ML-1M the
validation split prefers more GMF (0.7), and the combination alone, before any fine-tuning, already beats
both parts. So alpha is picked on validation by default, never on the test set.
"""

from __future__ import annotations

import logging

from .config import DEFAULT_TOP_K
from .data import EvalSplit
from .evaluation import evaluate
from .models import NCF, neumf_from_pretrained

log = logging.getLogger("ncf_core.pretraining")

ALPHA_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_ALPHA = 0.5


def pick_alpha(gmf: NCF, mlp: NCF, val: EvalSplit | None, k: int = DEFAULT_TOP_K) -> float:
    """The grid alpha whose combined model has the best validation NDCG@k (then HR@k).

    Without a validation split there is nothing honest to pick on: the paper's 0.5.
    """
    if val is None or len(val) == 0:
        log.info("no validation split: pre-training alpha %.1f (the paper's)", PAPER_ALPHA)
        return PAPER_ALPHA
    scores = {}
    for alpha in ALPHA_GRID:
        m = evaluate(neumf_from_pretrained(gmf, mlp, alpha=alpha).eval(), val, k)
        scores[alpha] = (m.ndcg, m.hr)
    best = max(ALPHA_GRID, key=lambda a: scores[a])
    log.info(
        "pre-training alpha %.1f picked on validation (NDCG@%d %s)",
        best,
        k,
        ", ".join(f"{a:.1f}: {s[0]:.4f}" for a, s in scores.items()),
    )
    return best


def combine(
    gmf: NCF, mlp: NCF, val: EvalSplit | None, alpha: float | None = None, k: int = DEFAULT_TOP_K, **kwargs
) -> tuple[NCF, float]:
    """NeuMF from ``gmf`` and ``mlp`` with ``alpha`` (picked on ``val`` when None), and the alpha used."""
    if alpha is None:
        alpha = pick_alpha(gmf, mlp, val, k)
    return neumf_from_pretrained(gmf, mlp, alpha=alpha, **kwargs), alpha
