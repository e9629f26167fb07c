"""The scale benchmark's synthetic ML-20M-shaped data: the invariants its figures rely on."""

from __future__ import annotations

import pandas as pd

from benchmarks.scale_bench import MIN_PER_USER, ML20M_ITEMS, generate, parse_size
from ncf_core import data as ncf_data


def test_generated_ratings_have_ml20m_shape_and_load_through_the_real_path(tmp_path):
    csv = tmp_path / "ratings.csv"
    info = generate(csv, 30_000, seed=1)
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert len(frame) == info["pairs"] == 30_000
    assert not frame.duplicated(["userId", "movieId"]).any()
    per_user = frame.groupby("userId").size()
    assert per_user.min() >= MIN_PER_USER and len(per_user) == info["users"] == 208
    assert frame["movieId"].max() > ML20M_ITEMS  # sparse movie ids, as in ML-20M
    popularity = frame["movieId"].value_counts()
    assert popularity.iloc[:100].sum() > 4 * popularity.iloc[-100:].sum()  # a popular head
    data = ncf_data.load(csv, seed=0)
    assert len(data.test) == info["users"]


def test_sizes_parse():
    assert [parse_size(x) for x in ("1M", "5m", "20M", "500K", "1234")] == [
        10**6,
        5 * 10**6,
        2 * 10**7,
        500_000,
        1234,
    ]
