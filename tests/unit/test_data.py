from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from ncf_core import data as ncf_data
from ncf_core.errors import DataError
from tests.support import require_file, shared_data_dir


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- NCF files


def test_ncf_prefix_loads_with_validation_carved_from_train(ncf_prefix: Path):
    data = ncf_data.load(ncf_prefix, seed=3)
    assert data.test is not None and data.val is not None
    assert len(data.test) == data.num_users == 240
    assert data.test.negatives.shape == (240, 20)
    # Validation: one item per user, removed from train, never the test item.
    train = set(zip(data.train_users.tolist(), data.train_items.tolist(), strict=True))
    assert len(data.val) == 240
    for u, i in zip(data.val.users, data.val.items, strict=True):
        assert (u, i) not in train
    assert not np.any(data.val.items == data.test.items[np.argsort(data.test.users)][data.val.users])
    assert len(train) + len(data.val) == 240 * 11
    # Validation negatives avoid every known positive of the user and are distinct per row.
    known = set(zip(*map(np.ndarray.tolist, data.known_positives()), strict=True))
    for u, row in zip(data.val.users, data.val.negatives, strict=True):
        assert len(set(row.tolist())) == row.size
        assert not any((u, int(n)) in known for n in row)


def test_ncf_prefix_accepts_directory_and_train_file(ncf_prefix: Path):
    for spec in (ncf_prefix.parent, Path(f"{ncf_prefix}.train.rating")):
        kind, paths = ncf_data.resolve(spec)
        assert kind == "ncf" and paths["negative"] == Path(f"{ncf_prefix}.test.negative")


def test_train_file_extra_columns_ignored_two_columns_enough(tmp_path: Path):
    two = write(tmp_path / "a.rating", "0\t1\n1\t2\n")
    four = write(tmp_path / "b.rating", "0\t1\t5\t999\n1\t2\t3\t998\n")
    for path in (two, four):
        users, items = ncf_data.read_pairs(path)
        assert users.tolist() == [0, 1] and items.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("0\t1\n1\tx\n", 2, "'x' is not an integer"),
        ("0\t1\n2\n", 2, "expected at least 2"),
        ("0\t1\n1.5\t2\n", 2, "'1.5' is not an integer"),
        ("0\t1\n-1\t2\n", 2, "negative user/item ids"),
    ],
)
def test_malformed_train_line_names_file_and_line(tmp_path: Path, text: str, line: int, needle: str):
    path = write(tmp_path / "x.train.rating", text)
    with pytest.raises(DataError) as err:
        ncf_data.read_pairs(path)
    assert str(path) in str(err.value) and f"line {line}" in str(err.value) and needle in str(err.value)


def test_empty_file_is_an_error(tmp_path: Path):
    path = write(tmp_path / "x.train.rating", "")
    with pytest.raises(DataError, match="empty"):
        ncf_data.read_pairs(path)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("(0,1)\t2\t3\n(1,2)\t3\n", 2, "ragged negatives"),
        ("(0,1)\t2\t3\n1,2\t3\t4\n", 2, "'(user,item)'"),
        ("(0,1)\t2\t3\n(1,2)\t3\tfoo\n", 2, "'foo' is not an integer"),
        ("(0,1)\n", 1, "no negative items"),
    ],
)
def test_malformed_negative_file(tmp_path: Path, text: str, line: int, needle: str):
    path = write(tmp_path / "x.test.negative", text)
    with pytest.raises(DataError) as err:
        ncf_data.read_negatives(path)
    assert f"line {line}" in str(err.value) and needle in str(err.value)


def test_test_user_unseen_in_train_is_an_error(tmp_path: Path):
    p = tmp_path / "d"
    write(Path(f"{p}.train.rating"), "0\t1\n0\t2\n1\t0\n")
    write(Path(f"{p}.test.rating"), "0\t3\n5\t1\n")
    write(Path(f"{p}.test.negative"), "(0,3)\t0\n(5,1)\t2\n")
    with pytest.raises(DataError, match=r"never appear in train \(first: user 5\)") as err:
        ncf_data.load_ncf(f"{p}.train.rating", f"{p}.test.rating", f"{p}.test.negative")
    assert "line 2" in str(err.value)


def test_test_pair_without_negatives_is_an_error(tmp_path: Path):
    p = tmp_path / "d"
    write(Path(f"{p}.train.rating"), "0\t1\n1\t0\n")
    write(Path(f"{p}.test.rating"), "0\t2\n1\t2\n")
    write(Path(f"{p}.test.negative"), "(0,2)\t0\n")
    with pytest.raises(DataError, match=r"\(1, 2\) has no line"):
        ncf_data.load_ncf(f"{p}.train.rating", f"{p}.test.rating", f"{p}.test.negative")


def test_cold_test_item_is_kept_with_a_warning(tmp_path: Path, caplog):
    p = tmp_path / "d"
    write(Path(f"{p}.train.rating"), "0\t1\n1\t0\n")
    write(Path(f"{p}.test.rating"), "0\t3\n1\t1\n")
    write(Path(f"{p}.test.negative"), "(0,3)\t2\n(1,1)\t2\n")
    data = ncf_data.load_ncf(f"{p}.train.rating", f"{p}.test.rating", f"{p}.test.negative")
    assert data.num_items == 4 and "1 test items never appear in train" in caplog.text


# ------------------------------------------------------------------------------------------ raw files


def test_raw_csv_leave_one_out_latest_is_test_previous_is_validation(tmp_path: Path):
    path = write(
        tmp_path / "r.csv",
        "userId,movieId,rating,timestamp\n"
        "a,x,5,30\na,y,4,10\na,z,3,20\n"  # a: y(10) z(20) x(30) → test x, val z
        "b,y,5,5\nb,x,5,1\n"  # b: x(1) y(5) → test y, no val (one left)
        "c,z,1,7\n"  # c: one interaction → train only
        "d,w,1,7\n",  # d: w exists so that every user has a negative to rank against
    )
    data = ncf_data.load_raw(path, num_eval_negatives=1)
    uid = {u: i for i, u in enumerate(data.user_ids)}
    iid = {u: i for i, u in enumerate(data.item_ids)}
    test = dict(zip(data.test.users.tolist(), data.test.items.tolist(), strict=True))
    assert test == {uid["a"]: iid["x"], uid["b"]: iid["y"]}
    assert dict(zip(data.val.users.tolist(), data.val.items.tolist(), strict=True)) == {uid["a"]: iid["z"]}
    train = sorted(zip(data.train_users.tolist(), data.train_items.tolist(), strict=True))
    assert train == sorted(
        [(uid["a"], iid["y"]), (uid["b"], iid["x"]), (uid["c"], iid["z"]), (uid["d"], iid["w"])]
    )
    assert data.user_ids == ["a", "b", "c", "d"] and data.item_ids == ["x", "y", "z", "w"]


def test_raw_repeated_pairs_merge_into_latest(tmp_path: Path, caplog):
    path = write(tmp_path / "r.csv", "user,item,timestamp\n1,7,1\n1,8,2\n1,7,3\n1,9,0\n")
    caplog.set_level("INFO")
    data = ncf_data.load_raw(path, num_eval_negatives=0, validation=False)
    # Order by time: 9(0) 8(2) 7(3, the repeat) → test is 7.
    assert data.item_ids[int(data.test.items[0])] == 7
    assert "1 repeated (user, item) rows merged" in caplog.text


def test_raw_formats_movielens_dat_udata_parquet(tmp_path: Path):
    dat = write(tmp_path / "ratings.dat", "1::10::5::100\n1::11::3::101\n2::10::4::50\n2::12::4::60\n")
    udata = write(tmp_path / "u.data", "1\t10\t5\t100\n1\t11\t3\t101\n2\t10\t4\t50\n2\t12\t4\t60\n")
    import pandas as pd

    parquet = tmp_path / "r.parquet"
    pd.DataFrame({"userID": ["1", "1", "2", "2"], "movieID": ["10", "11", "10", "12"]}).to_parquet(parquet)
    for path in (dat, udata, parquet):
        frame = ncf_data.read_raw(path)
        assert len(frame) == 4, path
        assert [str(x) for x in frame["user"]] == ["1", "1", "2", "2"]


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("ratings.dat", "1::10::5::100\n1::xx::3::101\n", "line 2"),
        ("u.data", "1\t10\t5\t100\n1\t10\n3\n", "line 2: 2 fields here, 4 on the first"),
        ("r.csv", "user,rating\n1,5\n", "needs 'user' and 'item' columns"),
        ("r.csv", "user,item,timestamp\n1,2,3\n1,3,soon\n", "line 3"),
        ("r.csv", "user,item\n1,2\n,3\n", "empty user id"),
    ],
)
def test_raw_malformed(tmp_path: Path, name: str, text: str, needle: str):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as err:
        ncf_data.load_raw(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_min_rating_filters_and_is_logged(tmp_path: Path, caplog):
    caplog.set_level("INFO")
    path = write(tmp_path / "u.data", "1\t10\t5\t1\n1\t11\t1\t2\n1\t12\t4\t3\n")
    frame = ncf_data.read_raw(path, min_rating=4)
    assert sorted(frame["item"].tolist()) == [10, 12] and "1 of 3 rows" in caplog.text


@pytest.mark.parametrize(
    ("name", "text", "min_rating", "message"),
    [
        ("r.csv", "user,item\na,x\nb,y\nc,x\n", None, "each of the 3 users has a single interaction,"),
        ("u.data", "1\t10\t5\t1\n1\t11\t1\t2\n2\t12\t4\t3\n", 4, "single interaction with rating ≥ 4,"),
    ],
)
def test_data_without_test_users_is_an_error(tmp_path: Path, name, text, min_rating, message):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as err:
        ncf_data.load(path, min_rating=min_rating, num_eval_negatives=1)
    assert str(err.value).startswith(f"{path}: no test users: ") and message in str(err.value)


def test_blank_test_file_is_an_error(ncf_prefix: Path):
    test = Path(f"{ncf_prefix}.test.rating")
    test.write_text("\n\n")
    with pytest.raises(DataError) as err:
        ncf_data.load(ncf_prefix)
    assert str(err.value) == f"{test}: no data lines (only blank lines)"


# "٣" is ARABIC-INDIC DIGIT THREE: int() and regex \d read it as 3; ids and indices are ASCII digits only.
@pytest.mark.parametrize(
    ("reader", "text", "needle"),
    [
        (ncf_data.read_negatives, "(0,1)\t2\t3\n(٣,1)\t2\t3\n", "line 2: expected '(user,item)'"),
        (
            ncf_data.read_negatives,
            "(0,1)\t2\t3\n(1,1)\t٣\t2\n",
            "line 2: negative item '٣' is not an integer",
        ),
        (ncf_data.read_negatives, "(0,1)\t2\t1_0\n", "line 1: negative item '1_0' is not an integer"),
        (ncf_data.read_pairs, "0\t1\n٣\t2\n", "line 2: '٣' is not an integer id"),
    ],
)
def test_non_ascii_digits_are_not_integers_in_ncf_files(tmp_path: Path, reader, text, needle):
    path = write(tmp_path / "x.test.negative", text)
    with pytest.raises(DataError) as err:
        reader(path)
    assert f"{path}, {needle}" in str(err.value)


@pytest.mark.parametrize("lookalike", ["٣", "３", '"3\n"', " 3"])
def test_raw_ids_that_only_look_like_an_integer_stay_distinct_strings(tmp_path: Path, lookalike):
    path = write(tmp_path / "r.csv", f"user,item\n3,a\n3,b\n{lookalike},a\n{lookalike},b\n9,c\n")
    data = ncf_data.load(path, validation=False, num_eval_negatives=1)
    assert data.user_ids == ["3", lookalike.strip('"') if lookalike.startswith('"') else lookalike, "9"]
    assert len(data.test) == 2


def test_unknown_path_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        ncf_data.load(tmp_path / "nothing")


def test_history_and_popularity(planted):
    indptr, indices = planted.history_csr()
    assert indptr[-1] == len(indices) == 240 * 12
    assert np.all(np.diff(indptr) == 12)
    assert planted.item_popularity().sum() == 240 * 12


# ------------------------------------------------------------------------------------ real MovieLens


@pytest.mark.movielens
def test_genuine_ml1m_files_load():
    base = require_file(shared_data_dir() / "ml-1m")
    data = ncf_data.load_ncf(
        base / "derived" / "ml-1m.train.pairs.tsv", base / "ml-1m.test.rating", base / "ml-1m.test.negative"
    )
    assert (data.num_users, data.num_items, len(data.train_users)) == (6040, 3706, 994169)
    assert data.test.negatives.shape == (6040, 99)
    # The known quirk: 156 users have their own test item among the negatives.
    assert int((data.test.negatives == data.test.items[:, None]).any(1).sum()) == 156


@pytest.mark.movielens
def test_ml1m_partial_ratings_dat_reads(tmp_path: Path):
    gz = require_file(shared_data_dir() / "ml-1m" / "partial" / "ratings.dat.users1-2999.gz")
    with gzip.open(gz) as fh:
        head = b"".join(fh.readlines()[:5000])
    path = tmp_path / "ratings.dat"
    path.write_bytes(head)
    data = ncf_data.load(path)
    assert len(data.train_users) + len(data.val) + len(data.test) == 5000


def test_write_ncf_files_load_back_as_the_same_split(ratings_csv: Path, tmp_path: Path):
    """A raw file's leave-one-out split, written as NCF files (what the pipeline's Evaluate step reads)."""
    raw = ncf_data.load(ratings_csv, seed=3, validation=False)
    prefix = ncf_data.write_ncf(raw, tmp_path / "ncf" / "toy")
    kind, paths = ncf_data.resolve(tmp_path / "ncf")
    assert kind == "ncf" and paths["train"] == Path(f"{prefix}.train.rating")
    back = ncf_data.load(prefix, validation=False)
    assert (back.num_users, back.num_items) == (raw.num_users, raw.num_items)
    np.testing.assert_array_equal(back.train_users, raw.train_users)
    np.testing.assert_array_equal(back.train_items, raw.train_items)
    for field in ("users", "items", "negatives"):
        np.testing.assert_array_equal(getattr(back.test, field), getattr(raw.test, field))


def test_write_ncf_without_a_test_split_is_an_error(ratings_csv: Path, tmp_path: Path):
    raw = ncf_data.load(ratings_csv, validation=False)
    raw.test = None
    with pytest.raises(DataError, match="no test split"):
        ncf_data.write_ncf(raw, tmp_path / "x")


# ------------------------------------------------------------------ raw CSV: fast reader vs read_raw's


def _ratings_text(ids, seed: int = 0, sep: str = ",", timestamp: bool = True, rows: int = 400) -> str:
    """Rows over 25 users and 40 items, with repeated pairs and timestamp ties (few distinct times)."""
    rng = np.random.default_rng(seed)
    head = ["userId", "movieId", "rating"] + (["timestamp"] if timestamp else [])
    lines = [sep.join(head)]
    for _ in range(rows):
        u, i = int(rng.integers(25)), int(rng.integers(40))
        fields = [ids("u", u), ids("i", i), str(float(rng.integers(1, 11)) / 2)]
        lines.append(sep.join(fields + ([str(int(rng.integers(-3, 6)))] if timestamp else [])))
    return "\n".join(lines) + "\n"


def _assert_same_interactions(a: ncf_data.Interactions, b: ncf_data.Interactions) -> None:
    assert (a.num_users, a.num_items, a.user_ids, a.item_ids) == (
        b.num_users,
        b.num_items,
        b.user_ids,
        b.item_ids,
    )
    assert [type(x) for x in a.user_ids + a.item_ids] == [type(x) for x in b.user_ids + b.item_ids]
    pairs = [(a.train_users, b.train_users), (a.train_items, b.train_items)]
    for sa, sb in ((a.test, b.test), (a.val, b.val)):
        pairs += [(sa.users, sb.users), (sa.items, sb.items), (sa.negatives, sb.negatives)]
    for x, y in pairs:
        assert x.dtype == y.dtype and np.array_equal(x, y)


_ID_STYLES = {
    "ints": lambda kind, k: str(k * 7),
    "text": lambda kind, k: f"{kind}{k}",
    "leading_zeros": lambda kind, k: f"{k - 13:03d}" if k >= 13 else str(k),  # "003" and "3": distinct ids
    "negative_ints": lambda kind, k: str(k - 12),
    "quoted": lambda kind, k: f'"{k}"',
    "lookalike": lambda kind, k: "٣" if k == 3 else str(k),
    "na_like": lambda kind, k: ["NA", "null", "nan", "None"][k] if k < 4 else str(k),  # text, not missing
}


@pytest.mark.parametrize("style", sorted(_ID_STYLES))
@pytest.mark.parametrize(
    ("sep", "timestamp", "min_rating"),
    [(",", True, None), ("\t", True, None), (",", False, None), (",", True, 3)],
)
def test_fast_csv_reader_gives_read_raws_interactions(
    tmp_path, monkeypatch, style, sep, timestamp, min_rating
):
    path = write(tmp_path / "ratings.csv", _ratings_text(_ID_STYLES[style], sep=sep, timestamp=timestamp))
    assert ncf_data._read_csv_fast(path, min_rating) is not None  # the fast path does take this file
    fast = ncf_data.load_raw(path, num_eval_negatives=5, min_rating=min_rating)
    monkeypatch.setattr(ncf_data, "_read_csv_fast", lambda path, min_rating: None)
    slow = ncf_data.load_raw(path, num_eval_negatives=5, min_rating=min_rating)
    _assert_same_interactions(fast, slow)
    if style == "leading_zeros":
        assert "003" in fast.user_ids and "3" in fast.user_ids
    if style == "ints":
        assert all(type(x) is int for x in fast.user_ids)


@pytest.mark.parametrize(
    "text",
    [
        "user,item,rating\n1,2,nan\n1,3,4\n",  # pandas reads nan as missing: an error there
        "user,item,rating\n1,2,inf\n1,3,4\n",
        "user,item,timestamp\n1,2,3\n1,3,soon\n",
        "user,item,timestamp\n1,2,3\n1,3,1.5\n",  # pandas reads float times; not the int64 fast path
        "user,item\n1,2\n,3\n",
        "user,item\n1,2\n  ,3\n",
        "user,item\n1,2\n1\n",
        "user,item\n1,2\n1,2,3\n",
        "user,user,item\n1,1,2\n1,1,3\n",  # pandas renames the second 'user' to 'user.1'
        "user,item\n",
        "\ufeffuser,item\n1,2\n1,3\n",
    ],
)
def test_fast_csv_reader_declines_what_read_raw_must_judge(tmp_path: Path, text: str):
    path = tmp_path / "r.csv"
    path.write_text(text, encoding="utf-8")
    # The BOM file may be read fast (pandas and pyarrow both drop the BOM); the others must not be.
    fast = ncf_data._read_csv_fast(path, None)
    if not text.startswith("\ufeff"):
        assert fast is None
    else:
        assert fast is None or fast[1] == [1]


def test_fast_csv_reader_declines_min_rating_without_rating(tmp_path: Path):
    path = write(tmp_path / "r.csv", "user,item\n1,2\n1,3\n")
    assert ncf_data._read_csv_fast(path, 3) is None


@pytest.mark.parametrize("kind", ["int", "wide_int", "float", "none"])
def test_chronological_order_is_lexsort_by_user_time_then_file_order(kind: str):
    rng = np.random.default_rng(3)
    users = rng.integers(0, 50, 5000)
    times = {
        "int": rng.integers(-5, 5, 5000),
        "wide_int": rng.integers(-(2**62), 2**62, 5000),  # (users+1) * span overflows: lexsort itself
        "float": rng.integers(0, 5, 5000) / 2,
        "none": None,
    }[kind]
    expected = np.lexsort((np.arange(5000), np.arange(5000) if times is None else times, users))
    assert np.array_equal(ncf_data._chronological_order(users, times), expected)


def test_fast_csv_reader_declines_bad_utf8_in_a_column_it_does_not_use(tmp_path: Path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"user,item,comment\n1,2,ok\n1,3,\xff\n2,3,ok\n")
    assert ncf_data._read_csv_fast(path, None) is None
    with pytest.raises(DataError, match="cannot parse as CSV"):
        ncf_data.load_raw(path, num_eval_negatives=1)


def test_fast_csv_reader_logs_min_rating_once(tmp_path: Path, caplog):
    caplog.set_level("INFO")
    path = write(tmp_path / "r.csv", "user,item,rating\n1,10,5\n1,11,1\n1,12,4\n2,10,4\n2,11,5\n")
    data = ncf_data.load_raw(path, min_rating=4, num_eval_negatives=0, validation=False)
    assert data.num_items == 3 and caplog.text.count("1 of 5 rows have rating < 4") == 1
