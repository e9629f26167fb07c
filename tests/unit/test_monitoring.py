"""ncf_core.monitoring: the statistics (PSI, Gini, coverage, head share, cold start) and the checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncf_core import monitoring
from ncf_core.errors import ConfigError
from ncf_core.monitoring import RECOMMEND, SCORES, TOP_ITEMS, Catalogue, IdSet, Thresholds, Window


def test_psi_is_zero_for_the_same_distribution_and_the_textbook_value_otherwise():
    assert monitoring.psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    expected = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)
    assert monitoring.psi([50, 50], [90, 10]) == pytest.approx(expected)
    assert math.isfinite(monitoring.psi([50, 50], [100, 0]))  # an empty bin is floored, not log(0)
    with pytest.raises(ValueError):
        monitoring.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        monitoring.psi([0, 0], [1, 2])


def test_gini_counts_the_items_never_returned():
    assert monitoring.gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert monitoring.gini([0, 0, 0, 12]) == pytest.approx(3 / 4)  # all on one of n: (n - 1) / n
    assert monitoring.gini([]) == 0.0 and monitoring.gini([0, 0]) == 0.0
    assert monitoring.gini([1, 1, 0, 0]) > monitoring.gini([1, 1])


def test_quantile_bins_share_the_values_out_evenly_and_edges_go_up():
    values = np.linspace(0, 1, 1000, endpoint=False)
    edges = monitoring.quantile_edges(values)
    assert len(edges) == monitoring.BINS - 1
    assert monitoring.histogram(values, edges).tolist() == [100] * 10
    assert monitoring.histogram([0.5], [0.5]).tolist() == [0, 1]  # on an edge: the bin above
    assert monitoring.quantile_edges([0.7] * 50) == [0.7]  # ties merge bins


def test_exposure_coverage_gini_and_head_share():
    figures = monitoring.exposure([[1, 2], [1, 3]], catalogue_size=10, head=frozenset({1}))
    assert figures["coverage"] == pytest.approx(0.3)
    assert figures["head_share"] == pytest.approx(0.5)
    assert figures["slots"] == 4 and figures["distinct_items"] == 3 and figures["lists"] == 2
    assert figures["gini"] == pytest.approx(monitoring.gini([2, 1, 1, 0, 0, 0, 0, 0, 0, 0]))
    assert monitoring.grid_point(100) == 64 and monitoring.grid_point(15) is None
    assert monitoring.grid_point(5000, ceiling=256) == 256


def test_id_set_reads_ids_as_the_model_does():
    numeric = IdSet([1, 12, 300])
    assert numeric.canonical(12) == 12 and numeric.canonical("12") == 12 and numeric.canonical(" 12 ") == 12
    assert numeric.canonical(12.0) == 12
    for unknown in (13, "١٢", True, 12.5, None, [12], "x"):
        assert numeric.canonical(unknown) is None, unknown
    assert numeric.unknown([1, "12", 7, "7", [1]]) == 3
    strings = IdSet(["a", "12"])
    assert strings.canonical(12) == "12" and strings.canonical("a") == "a" and strings.canonical("b") is None


def test_catalogue_head_is_the_most_popular_items_and_survives_json():
    cat = Catalogue.build(["u1"], [10, 11, 12, 13], [5, 50, 1, 7], head_fraction=0.5)
    assert cat.head == frozenset({11, 13})
    again = Catalogue.from_dict(cat.to_dict())
    assert again.head == cat.head and again.items.ids == [10, 11, 12, 13]
    with pytest.raises(ConfigError, match="needs 'users', 'items' and 'head_items'"):
        Catalogue.from_dict({"users": []})


def test_thresholds_defaults_and_refusals():
    assert Thresholds().max_score_psi == 0.2
    assert Thresholds.from_dict({"max_score_psi": 0.25}).max_score_psi == 0.25
    with pytest.raises(ConfigError, match=r"unknown threshold\(s\) \['max_psi'\]"):
        Thresholds.from_dict({"max_psi": 0.2})
    for name, bad in [
        ("max_unknown_user_share", 1.5),
        ("max_unknown_item_share", -0.1),
        ("max_score_psi", float("nan")),
        ("max_coverage_drop", True),
        ("max_gini_increase", "0.1"),
        ("min_lists", 8),
        ("min_scores", 2.5),
    ]:
        with pytest.raises(ConfigError, match=name):
            Thresholds.from_dict({name: bad})


def synthetic_window(cat: Catalogue, seed: int, unknown_users: float = 0.0, popular: bool = False) -> Window:
    """A window of the three request kinds with random answers (a stand-in for the model's)."""
    rng = np.random.default_rng(seed)
    window = Window(cat)
    items = cat.items.ids
    for n in range(300):
        user = 10_000 + n if rng.random() < unknown_users else cat.users.ids[n % len(cat.users)]
        pool = items[:12] if popular else items
        window.request("application/json", 1, False)
        window.query(RECOMMEND, [user])
        window.answer(RECOMMEND, rng.choice(pool, 10, replace=False).tolist(), rng.beta(2, 2, 10), False)
        cands = [int(x) for x in rng.choice(items, 30, replace=False)]
        window.request("application/json", 1, False)
        window.query(TOP_ITEMS, [user], cands)
        window.answer(TOP_ITEMS, cands[:10])
        window.request("application/json", 1, False)
        window.query(SCORES, [user], cands[:5])
        window.answer(SCORES, None, rng.beta(1, 5, 5), [False] * 5)
    return window


@pytest.fixture
def catalogue() -> Catalogue:
    items = list(range(100, 300))
    return Catalogue.build(list(range(1, 501)), items, list(range(len(items), 0, -1)))


def test_a_window_like_the_baseline_has_no_violations(catalogue):
    base = synthetic_window(catalogue, seed=0).summary()
    assert set(base["catalogue"][RECOMMEND]["curve"]) == {"16", "32", "64", "128", "256"}
    now = synthetic_window(catalogue, seed=1).summary(reference=base)
    assert now["scores"][RECOMMEND]["psi"] < 0.05
    assert now["catalogue"][RECOMMEND]["at"]["lists"] == 256
    assert monitoring.check(base, now, Thresholds()) == []


def test_cold_start_collapse_and_drift_are_violations(catalogue):
    base = synthetic_window(catalogue, seed=0).summary()
    now = synthetic_window(catalogue, seed=1, unknown_users=0.5, popular=True).summary(reference=base)
    found = {(v.constraint_check_type, v.feature_name) for v in monitoring.check(base, now, Thresholds())}
    assert found == {
        ("cold_start_check", "user"),
        ("catalogue_coverage_check", "recommend_items"),
        ("popularity_concentration_check", "recommend_items"),
    }
    assert now["cold_start"]["unknown_user_share"] == pytest.approx(0.5, abs=0.1)


def test_small_samples_are_not_judged(catalogue):
    base = synthetic_window(catalogue, seed=0).summary()
    window = Window(catalogue)
    window.request("application/json", 1, False)
    window.query(RECOMMEND, [1])
    window.answer(RECOMMEND, [100, 101], [0.999, 0.998], False)  # far from the baseline, but 2 scores
    now = window.summary(reference=base)
    assert now["scores"][RECOMMEND]["psi"] > 1
    assert now["catalogue"][RECOMMEND].get("at") is None  # below the grid
    assert monitoring.check(base, now, Thresholds()) == []
    assert monitoring.check(base, now, Thresholds(min_scores=1)) != []
