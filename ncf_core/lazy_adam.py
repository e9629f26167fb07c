"""Adam for embedding tables that reads and writes only the rows a batch used (TensorFlow's LazyAdam).

Dense Adam updates every row of every table on every step, because a row's moments decay even when its
gradient is zero. At ML-20M's 138k users that is 22M floats of gradient zeroing, scattering and moment
updates per step, whatever the batch touched: the cost per sample grows with the catalogue. Here a step
costs O(rows used): the trainer gathers the rows of a batch's distinct ids as leaf tensors, the model
computes with them, and ``step`` applies Adam to those rows (their moments, the global step count for the
bias correction, L2 weight decay added to their gradient) and leaves every other row as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class LazyAdam:
    """Row-sparse Adam over a fixed list of 2-D tables (``torch.nn.Embedding`` weights)."""

    def __init__(
        self,
        tables: list[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | Sequence[float] = 0.0,
    ):
        """``weight_decay``: one for every table, or one per table (NeuMF's MLP tables take more)."""
        self.tables = tables
        self.lr = lr
        self.betas = betas
        self.eps = eps
        if isinstance(weight_decay, int | float):
            weight_decay = [float(weight_decay)] * len(tables)
        if len(weight_decay) != len(tables):
            raise ValueError(f"{len(weight_decay)} weight decays for {len(tables)} tables")
        self.weight_decay = list(weight_decay)
        self.steps = 0
        self.exp_avg = [torch.zeros_like(t) for t in tables]
        self.exp_avg_sq = [torch.zeros_like(t) for t in tables]

    def gather(self, k: int, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (distinct) of table ``k`` as a leaf that collects their gradient."""
        return self.tables[k].detach().index_select(0, ids).requires_grad_()

    @torch.no_grad()
    def step(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Apply one Adam step: ``rows[k]`` is (distinct ids, their gathered leaf) for table ``k``."""
        self.steps += 1
        beta1, beta2 = self.betas
        bias1 = 1.0 - beta1**self.steps
        bias2 = 1.0 - beta2**self.steps
        for table, decay, m_all, v_all, (ids, leaf) in zip(
            self.tables, self.weight_decay, self.exp_avg, self.exp_avg_sq, rows, strict=True
        ):
            grad = leaf.grad
            if grad is None:
                continue
            params = leaf.detach()  # the rows as gathered: the values the gradient was taken at
            if decay:
                grad = grad.add(params, alpha=decay)
            m = m_all.index_select(0, ids).mul_(beta1).add_(grad, alpha=1.0 - beta1)
            v = v_all.index_select(0, ids).mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            m_all.index_copy_(0, ids, m)
            v_all.index_copy_(0, ids, v)
            denom = v.div_(bias2).sqrt_().add_(self.eps)
            table.index_copy_(0, ids, params.addcdiv(m, denom, value=-self.lr / bias1))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for mine, theirs in zip(
            self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"], strict=True
        ):
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"optimiser state of shape {tuple(theirs.shape)} for a table of {tuple(mine.shape)}"
                )
            mine.copy_(theirs)
