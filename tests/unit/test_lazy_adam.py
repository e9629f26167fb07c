"""LazyAdam: Adam on the rows a step used, nothing on the others; AdamW's decay on every row."""

from __future__ import annotations

import pytest
import torch

from ncf_core.lazy_adam import LazyAdam


def steps_with_both(rows_per_step: list[torch.Tensor], weight_decay: float = 0.0):
    torch.manual_seed(0)
    table = torch.randn(12, 4)
    lazy_table = table.clone()
    dense = torch.nn.Parameter(table.clone())
    reference = torch.optim.AdamW([dense], lr=0.05, weight_decay=weight_decay)
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


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_when_every_row_is_used_it_is_adamw(weight_decay):
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


def test_rows_a_step_did_not_use_owe_adamw_decay_and_pay_it_when_used_or_settled():
    """Unused rows decay as under dense AdamW (their moments aside): by the product of every step's
    ``1 - lr × decay``, paid when the row is next gathered or by ``settle``."""
    torch.manual_seed(0)
    before = torch.randn(12, 4)
    some, others = torch.tensor([0, 3, 7]), torch.tensor([1, 2, 4, 5, 6, 8, 9, 10, 11])
    _, table, lazy = steps_with_both([some] * 3, weight_decay=0.5)
    assert torch.equal(table[others], before[others])  # nothing written to them yet
    owed = (1 - 0.05 * 0.5) ** 3
    assert torch.allclose(lazy.gather(0, others[:2]), before[others[:2]] * owed, rtol=1e-6)
    lazy.lr = 0.02  # the learning rate changes: the factor owed follows it
    leaf = lazy.gather(0, some)
    (leaf**2).sum().backward()
    lazy.step([(some, leaf)])
    lazy.settle()
    owed *= 1 - 0.02 * 0.5
    assert torch.allclose(table[others], before[others] * owed, rtol=1e-6)
    lazy.settle()  # nothing more is owed
    assert torch.allclose(table[others], before[others] * owed, rtol=1e-6)


def test_each_table_takes_its_own_weight_decay():
    torch.manual_seed(0)
    tables = [torch.randn(6, 3), torch.randn(6, 3)]
    dense = [torch.nn.Parameter(t.clone()) for t in tables]
    decays = (0.0, 0.5)
    reference = [
        torch.optim.AdamW([d], lr=0.05, weight_decay=wd) for d, wd in zip(dense, decays, strict=True)
    ]
    lazy = LazyAdam([t.clone() for t in tables], lr=0.05, weight_decay=list(decays))
    every = torch.arange(6)
    for _ in range(4):
        leaves = [lazy.gather(k, every) for k in (0, 1)]
        for d, leaf, opt in zip(dense, leaves, reference, strict=True):
            opt.zero_grad()
            (d**2).sum().backward()
            opt.step()
            (leaf**2).sum().backward()
        lazy.step([(every, leaf) for leaf in leaves])
    for d, mine in zip(dense, lazy.tables, strict=True):
        assert torch.allclose(d.detach(), mine, atol=1e-6)
    with pytest.raises(ValueError, match="2 weight decays for 1 tables"):
        LazyAdam([torch.zeros(2, 2)], lr=0.1, weight_decay=[0.0, 0.1])
