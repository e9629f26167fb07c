from __future__ import annotations

import numpy as np
import pytest

from ncf_core import data as ncf_data
from ncf_core.errors import UnknownIdError
from ncf_core.inference import IdMap, Recommender
from ncf_core.jobs import train_to_artifact
from ncf_core.training import TrainConfig
from tests.support.synthetic import SMALL_DATA, write_ratings_csv

CFG = TrainConfig(factor=8, num_layers=2, epochs=6, batch_size=512, lr=0.01, **SMALL_DATA)


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> Recommender:
    root = tmp_path_factory.mktemp("inf")
    data = ncf_data.load(write_ratings_csv(root / "r.csv", string_ids=True))
    train_to_artifact(data, CFG, root / "model")
    return Recommender.load(root / "model")


def test_top_k_excludes_seen_items_and_is_sorted(rec):
    r = rec.recommend("u0", k=10)
    seen = set(rec.items.raw(rec.seen(rec.users.get("u0"))))
    assert len(r.items) == 10 and not r.fallback
    assert not seen & set(r.items)
    assert r.scores == sorted(r.scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in r.scores)


def test_top_k_learned_the_group(rec):
    # Users u0, u6, ... and items i0, i6, ... form group 0: unseen group-0 items must come first.
    r = rec.recommend("u0", k=5)
    assert all(int(i[1:]) % 6 == 0 for i in r.items), r.items


def test_include_seen(rec):
    seen = set(rec.items.raw(rec.seen(rec.users.get("u0"))))
    r = rec.recommend("u0", k=len(seen), exclude_seen=False)
    assert len(seen & set(r.items)) >= len(seen) // 2


def test_candidates_restrict_and_rank(rec):
    cands = ["i0", "i1", "i2", "i6", "i12"]
    r = rec.recommend("u0", k=3, candidates=cands, exclude_seen=False)
    assert set(r.items) <= set(cands) and len(r.items) == 3
    scores = dict(zip(cands, rec.score(["u0"] * 5, cands), strict=True))
    assert r.items == sorted(cands, key=lambda c: -scores[c])[:3]


def test_many_users_match_single_calls(rec):
    many = rec.recommend_many(["u1", "nobody", "u2"], k=4)
    assert [m.user for m in many] == ["u1", "nobody", "u2"]
    for got, user in ((many[0], "u1"), (many[2], "u2")):
        one = rec.recommend(user, k=4)
        assert got.items == one.items and got.scores == pytest.approx(one.scores, abs=1e-6)
    assert many[1].fallback and not many[0].fallback


def test_unknown_user_gets_popular_items(rec):
    r = rec.recommend("stranger", k=5)
    pop = rec.artifact.item_popularity
    assert r.fallback and r.items == rec.items.raw(np.argsort(-pop, kind="stable")[:5])


def test_unknown_item_is_an_error(rec):
    with pytest.raises(UnknownIdError, match="unknown item id 'nope'"):
        rec.score(["u0"], ["nope"])
    with pytest.raises(UnknownIdError):
        rec.recommend("u0", candidates=["i0", "nope"])


def test_score_pairs_and_validation(rec):
    assert rec.score([], []) == []
    with pytest.raises(ValueError, match="differ in length"):
        rec.score(["u0"], [])
    with pytest.raises(ValueError, match="'k' must be ≥ 1, got 0"):
        rec.recommend("u0", k=0)
    with pytest.raises(ValueError, match=f"'k' is {rec.num_items + 1} but the model knows only"):
        rec.recommend("u0", k=rec.num_items + 1)
    with pytest.raises(ValueError, match=f"'k' is {rec.num_items + 1} but"):
        rec.top_items(["u0"], [rec.items.ids[0]], rec.num_items + 1)
    with pytest.raises(ValueError, match=f"'candidates' holds {rec.num_items + 1} ids"):
        rec.recommend("u0", candidates=[rec.items.ids[0]] * (rec.num_items + 1))
    with pytest.raises(ValueError, match="empty"):
        rec.recommend("u0", candidates=[])


def test_k_of_the_whole_catalogue_returns_every_unseen_item(rec):
    r = rec.recommend("u0", k=rec.num_items)
    assert len(r.items) == rec.num_items - len(rec.seen(rec.users.get("u0")))


def test_id_map_reads_only_ascii_digits_as_integers():
    ints = IdMap([3, 7])
    assert ints.get("3") == 0 and ints.get(" 3 ") == 0
    # ARABIC-INDIC DIGIT THREE, FULLWIDTH DIGIT THREE, SUPERSCRIPT THREE: int() reads the first two as 3.
    assert ints.get("٣") is None and ints.get("３") is None and ints.get("³") is None
    strs = IdMap(["٣", "x"])
    assert strs.get("٣") == 0 and strs.get(3) is None and strs.get("3") is None


def test_id_map_accepts_equivalent_forms():
    ints = IdMap([5, 7])
    assert ints.get("7") == 1 and ints.get(7.0) == 1 and ints.get(True) is None and ints.get([1]) is None
    strs = IdMap(["5", "x"])
    assert strs.get(5) == 0 and strs.get("x") == 1 and strs.get("y") is None
