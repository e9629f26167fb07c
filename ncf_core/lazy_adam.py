"""AdamW for embedding tables that reads and writes only the rows a batch used (TensorFlow's LazyAdam).

Dense Adam updates every row of every table on every step, because a row's moments decay even when its
gradient is zero. At ML-20M's 138k users that is 22M floats of gradient zeroing, scattering and moment
updates per step, whatever the batch touched: the cost per sample grows with the catalogue. Here a step
costs O(rows used): the trainer gathers the rows of a batch's distinct ids as leaf tensors, the model
computes with them, and ``step`` applies Adam to those rows (their moments, the global step count for the
bias correction) and leaves every other row's moments as they are.

Weight decay is AdamW's (decoupled: ``row *= 1 - lr × decay`` every step, for every row), as for the dense
tables, so that a table decays alike whichever way it is updated. A row that steps did not use owes the
product of the factors since its last use; it is paid when the row is next gathered (``gather``), and for
every row at once by ``settle`` (the trainer calls it before evaluating or saving the model). The running
log of that product is kept in float64, so the catch-up is exact to float32 rounding.
"""

from __future__ import annotations

import math
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
        """``weight_decay``: AdamW's, one for every table or one per table."""
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
        # Per table: log of the product of every step's decay factor so far, and per row its value when
        # the row was last brought up to date.
        self.decay_log = [0.0] * len(tables)
        self.row_log = [torch.zeros(t.shape[0], dtype=torch.float64, device=t.device) for t in tables]

    def _owed(self, k: int, ids: torch.Tensor | None) -> torch.Tensor:
        """The decay factor rows ``ids`` (all if None) of table ``k`` owe, as a column."""
        logs = self.row_log[k] if ids is None else self.row_log[k].index_select(0, ids)
        return (self.decay_log[k] - logs).exp_().to(self.tables[k].dtype).unsqueeze(1)

    def gather(self, k: int, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (distinct) of table ``k``, their owed decay applied, as a leaf that collects their
        gradient. Reads only: ``step`` writes the rows back and marks their debt paid."""
        rows = self.tables[k].detach().index_select(0, ids)
        if self.weight_decay[k]:
            rows.mul_(self._owed(k, ids))
        return rows.requires_grad_()

    @torch.no_grad()
    def settle(self) -> None:
        """Pay every row's owed decay, so the tables hold what dense AdamW decay would have left."""
        for k, table in enumerate(self.tables):
            if self.weight_decay[k]:
                table.mul_(self._owed(k, None))
                self.row_log[k].fill_(self.decay_log[k])

    @torch.no_grad()
    def step(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Apply one Adam step: ``rows[k]`` is (distinct ids, their gathered leaf) for table ``k``."""
        self.steps += 1
        beta1, beta2 = self.betas
        bias1 = 1.0 - beta1**self.steps
        bias2 = 1.0 - beta2**self.steps
        for k, (table, m_all, v_all, (ids, leaf)) in enumerate(
            zip(self.tables, self.exp_avg, self.exp_avg_sq, rows, strict=True)
        ):
            factor = 1.0 - self.lr * self.weight_decay[k]
            if factor != 1.0:
                self.decay_log[k] += math.log(factor)  # this step's decay, owed by every row
            params = (
                leaf.detach()
            )  # the rows as gathered (owed decay applied): the gradient was taken at them
            if factor != 1.0:
                params = params * factor  # AdamW: decay, then the Adam update
                self.row_log[k].index_fill_(0, ids, self.decay_log[k])  # written back below: paid
            grad = leaf.grad
            if grad is None:  # gathered, yet unused: write back the decay alone
                table.index_copy_(0, ids, params)
                continue
            m = m_all.index_select(0, ids).mul_(beta1).add_(grad, alpha=1.0 - beta1)
            v = v_all.index_select(0, ids).mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            m_all.index_copy_(0, ids, m)
            v_all.index_copy_(0, ids, v)
            denom = v.div_(bias2).sqrt_().add_(self.eps)
            table.index_copy_(0, ids, params.addcdiv(m, denom, value=-self.lr / bias1))

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
            "decay_log": list(self.decay_log),
            "row_log": self.row_log,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.decay_log = [float(x) for x in state["decay_log"]]
        for mine, theirs in zip(
            self.exp_avg + self.exp_avg_sq + self.row_log,
            state["exp_avg"] + state["exp_avg_sq"] + state["row_log"],
            strict=True,
        ):
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"optimiser state of shape {tuple(theirs.shape)} for a table of {tuple(mine.shape)}"
                )
            mine.copy_(theirs)
