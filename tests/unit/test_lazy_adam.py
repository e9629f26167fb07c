"""LazyAdam: Adam on the rows a step used, nothing on the others."""

from __future__ import annotations

import pytest
import torch

from ncf_core.lazy_adam import LazyAdam


def steps_with_both(rows_per_step: list[torch.Tensor], weight_decay: float = 0.0):
    torch.manual_seed(0)
    table = torch.randn(12, 4)
    lazy_table = table.clone()
    dense = torch.nn.Parameter(table.clone())
    reference = torch.optim.Adam([dense], lr=0.05, weight_decay=weight_decay)
    lazy = LazyAdam([lazy_table], lr=0.05, weight_decay=weight_decay)
    target = torch.randn(12, 4)
    for ids in rows_per_step:
        reference.zero_grad()
        ((dense[ids] - target[ids]) ** 2).sum().backward()
        reference.step()
        leaf = lazy.gather(0, ids)
        ((leaf - target[ids]) ** 2).sum().backward()
        lazy.step([(ids, leaf)])
    return dense.detach(), lazy_table, lazy


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_when_every_row_is_used_it_is_adam(weight_decay):
    every = torch.arange(12)
    dense, lazy_table, _ = steps_with_both([every] * 5, weight_decay)
    assert torch.allclose(dense, lazy_table, atol=1e-6)


def test_rows_a_step_did_not_use_keep_their_values_and_moments():
    some, others = torch.tensor([0, 3, 7]), torch.tensor([1, 2, 4, 5, 6, 8, 9, 10, 11])
    torch.manual_seed(0)
    before = torch.randn(12, 4)
    _, after, lazy = steps_with_both([some] * 3)
    assert torch.equal(after[others], before[others])
    assert not torch.equal(after[some], before[some])
    assert torch.count_nonzero(lazy.exp_avg[0][others]) == 0
    assert torch.count_nonzero(lazy.exp_avg_sq[0][some]) > 0


def test_state_round_trip_continues_identically():
    ids = torch.tensor([1, 4, 9])
    _, table_a, a = steps_with_both([ids] * 2)
    table_b = table_a.clone()
    b = LazyAdam([table_b], lr=0.05)
    b.load_state_dict(a.state_dict())
    for opt in (a, b):
        leaf = opt.gather(0, ids)
        (leaf**2).sum().backward()
        opt.step([(ids, leaf)])
    assert torch.equal(table_a, table_b) and a.steps == b.steps == 3


def test_state_for_another_table_shape_is_refused():
    a = LazyAdam([torch.zeros(5, 2)], lr=0.1)
    with pytest.raises(ValueError, match=r"shape \(5, 2\) for a table of \(6, 2\)"):
        LazyAdam([torch.zeros(6, 2)], lr=0.1).load_state_dict(a.state_dict())
