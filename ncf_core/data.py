"""Interaction data: readers for the NCF paper's leave-one-out files and for raw ratings, turned into
contiguous user/item indices with held-out test and validation splits.

Protocol (He et al. 2017): each user's latest interaction is the test item, ranked against 99 sampled
items the user never interacted with. The validation item (used to pick the epoch, never the test item) is
carved from train the same way: the latest remaining interaction when timestamps (or file order) give
time, else a seeded random one (the NCF files carry no training timestamps).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import NUM_EVAL_NEGATIVES
from .errors import DataError
from .sampling import PositiveSet, sample_distinct_negatives

log = logging.getLogger("ncf_core.data")

NCF_SUFFIXES = {"train": ".train.rating", "test": ".test.rating", "negative": ".test.negative"}
RAW_FILE_NAMES = ("ratings.dat", "u.data", "ratings.csv", "ratings.parquet")
RAW_SUFFIXES = (".csv", ".tsv", ".parquet", ".dat", ".data")
_USER_COLUMNS = {"user", "userid", "users"}
_ITEM_COLUMNS = {"item", "itemid", "items", "movie", "movieid"}
# ASCII digits only, matched whole (fullmatch): int() and \d would also read "٣" (Arabic-Indic three) as 3.
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_NEG_KEY = re.compile(r"\((-?[0-9]+),(-?[0-9]+)\)")


@dataclass(frozen=True)
class EvalSplit:
    """Held-out positives, one per user, with the negatives each is ranked against."""

    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    negatives: np.ndarray  # (n, m) int64

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class Interactions:
    """Everything training and evaluation need, in contiguous indices, plus the raw-id maps."""

    num_users: int
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    test: EvalSplit | None
    val: EvalSplit | None = None
    user_ids: list = field(default_factory=list)  # index -> raw id
    item_ids: list = field(default_factory=list)
    source: str = ""
    # How ``load`` split it (seed, num_eval_negatives, validation, min_rating): recorded in the artifact, so
    # that a raw file can be split again exactly so (``jobs.evaluate_raw_split``).
    split: dict = field(default_factory=dict)

    def known_positives(self) -> tuple[np.ndarray, np.ndarray]:
        """All known (user, item) interactions: train, validation and test."""
        users = [self.train_users] + [s.users for s in (self.val, self.test) if s is not None]
        items = [self.train_items] + [s.items for s in (self.val, self.test) if s is not None]
        return np.concatenate(users), np.concatenate(items)

    def history_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Each user's interacted items as CSR (indptr, indices), sorted and deduplicated."""
        users, items = self.known_positives()
        keys = np.unique(users.astype(np.int64) * self.num_items + items)
        indptr = np.searchsorted(keys // self.num_items, np.arange(self.num_users + 1))
        return indptr.astype(np.int64), (keys % self.num_items).astype(np.int32)

    def item_popularity(self) -> np.ndarray:
        _, items = self.known_positives()
        return np.bincount(items, minlength=self.num_items).astype(np.int64)


# --------------------------------------------------------------------------------------------- resolving


def resolve(spec: str | Path) -> tuple[str, dict[str, Path]]:
    """Tell an NCF-format prefix (or directory holding one) from a raw ratings file (or its directory).

    Returns ("ncf", {"train", "test", "negative"}) or ("raw", {"ratings"}).
    """
    path = Path(spec)
    if path.is_file():
        if path.name.endswith(NCF_SUFFIXES["train"]):
            return "ncf", _ncf_paths(Path(str(path)[: -len(NCF_SUFFIXES["train"])]))
        return "raw", {"ratings": path}
    if path.is_dir():
        trains = sorted(path.glob("*" + NCF_SUFFIXES["train"]))
        if len(trains) == 1:
            return "ncf", _ncf_paths(Path(str(trains[0])[: -len(NCF_SUFFIXES["train"])]))
        if len(trains) > 1:
            raise DataError(f"several NCF training files, pass a prefix: {[t.name for t in trains]}", path)
        for name in RAW_FILE_NAMES:
            if (path / name).is_file():
                return "raw", {"ratings": path / name}
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RAW_SUFFIXES]
        if len(files) == 1:  # e.g. an S3 channel holding one interactions.csv
            return "raw", {"ratings": files[0]}
        raise DataError(
            f"no '*{NCF_SUFFIXES['train']}' and none of {', '.join(RAW_FILE_NAMES)} in this directory", path
        )
    if Path(str(path) + NCF_SUFFIXES["train"]).is_file():
        return "ncf", _ncf_paths(path)
    raise DataError("no such file, directory or NCF prefix", path)


def _ncf_paths(prefix: Path) -> dict[str, Path]:
    paths = {k: Path(str(prefix) + s) for k, s in NCF_SUFFIXES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"NCF prefix {prefix} is missing {', '.join(missing)}")
    return paths


def load(
    spec: str | Path,
    *,
    seed: int = 0,
    num_eval_negatives: int = NUM_EVAL_NEGATIVES,
    validation: bool = True,
    min_rating: float | None = None,
) -> Interactions:
    """Load an NCF prefix/dir or a raw ratings file/dir, with validation carved from train."""
    kind, paths = resolve(spec)
    split = {
        "seed": seed,
        "num_eval_negatives": num_eval_negatives,
        "validation": validation,
        "min_rating": min_rating,
    }
    if kind == "ncf":
        data = load_ncf(paths["train"], paths["test"], paths["negative"])
        if validation:
            add_validation(data, seed=seed, num_negatives=num_eval_negatives, chronological=False)
    else:
        data = load_raw(
            paths["ratings"],
            seed=seed,
            num_eval_negatives=num_eval_negatives,
            validation=validation,
            min_rating=min_rating,
        )
    data.split = split
    return data


# ------------------------------------------------------------------------------------------- NCF format


def read_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """First two tab-separated integer columns of a ``*.train.rating`` / ``*.test.rating`` file."""
    import pandas as pd

    path = Path(path)
    _require_nonempty(path)
    try:
        frame = pd.read_csv(
            path, sep="\t", header=None, usecols=[0, 1], dtype=np.int64, engine="c", skip_blank_lines=True
        )
    except pd.errors.EmptyDataError:
        raise DataError("no data lines (only blank lines)", path) from None
    except (ValueError, pd.errors.ParserError) as exc:
        _raise_first_bad_line(path, sep="\t", min_fields=2, int_fields=2, fallback=exc)
        raise AssertionError("unreachable") from exc
    if frame.empty:
        raise DataError("no data lines", path)
    # Copies: pandas' copy-on-write hands out read-only arrays, which torch.from_numpy warns about.
    users = frame[0].to_numpy(copy=True)
    items = frame[1].to_numpy(copy=True)
    _check_nonnegative(path, users, items)
    return users, items


def read_negatives(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u,i)\\tneg1\\t...`` lines → users, items, negatives (n, m). Every line must have the same m."""
    path = Path(path)
    _require_nonempty(path)
    users: list[int] = []
    items: list[int] = []
    rows: list[list[int]] = []
    width = None
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            match = _NEG_KEY.fullmatch(fields[0].strip()) if fields[0].isascii() else None
            if match is None:
                raise DataError(
                    f"expected '(user,item)' as the first field, got {fields[0][:40]!r}", path, lineno
                )
            try:
                if not line.isascii() or "_" in line:  # what int() accepts beyond ASCII integers
                    raise ValueError(line)
                negs = [int(f) for f in fields[1:] if f != ""]
            except ValueError:
                bad = next(f for f in fields[1:] if f != "" and not _is_int(f))
                raise DataError(f"negative item {bad[:40]!r} is not an integer", path, lineno) from None
            if width is None:
                width = len(negs)
                if width == 0:
                    raise DataError("no negative items after the (user,item) key", path, lineno)
            elif len(negs) != width:
                raise DataError(
                    f"ragged negatives: {len(negs)} items here, {width} on the first line", path, lineno
                )
            users.append(int(match.group(1)))
            items.append(int(match.group(2)))
            rows.append(negs)
    if not rows:
        raise DataError("no data lines", path)
    u, i, n = np.asarray(users, np.int64), np.asarray(items, np.int64), np.asarray(rows, np.int64)
    _check_nonnegative(path, u, i)
    if (n < 0).any():
        line = int(np.nonzero((n < 0).any(1))[0][0])
        raise DataError("negative item ids are not allowed", path, _data_line_number(path, line))
    return u, i, n


def load_ncf(train: str | Path, test: str | Path, negative: str | Path) -> Interactions:
    """The paper's files: train pairs, one test pair per user, and the test pair's sampled negatives."""
    train_u, train_i = read_pairs(train)
    test_u, test_i = read_pairs(test)
    neg_u, neg_i, negs = read_negatives(negative)

    num_users = int(max(train_u.max(), test_u.max())) + 1
    num_items = int(max(train_i.max(), test_i.max(), negs.max())) + 1

    if len(np.unique(test_u)) != len(test_u):
        dup = int(test_u[np.nonzero(np.bincount(test_u) > 1)[0][0]])
        raise DataError(f"user {dup} has more than one test line (leave-one-out expects one)", test)
    seen_users = np.zeros(num_users, bool)
    seen_users[train_u] = True
    unseen = np.nonzero(~seen_users[test_u])[0]
    if unseen.size:
        raise DataError(
            f"{unseen.size} test users never appear in train (first: user {int(test_u[unseen[0]])}); "
            "their embeddings would be untrained",
            test,
            _data_line_number(Path(test), int(unseen[0])),
        )
    # Negatives are matched to test pairs by key, not by line order.
    order = {(int(u), int(i)): k for k, (u, i) in enumerate(zip(neg_u, neg_i, strict=True))}
    try:
        idx = np.asarray([order[(int(u), int(i))] for u, i in zip(test_u, test_i, strict=True)], np.int64)
    except KeyError as exc:
        raise DataError(f"test pair {exc.args[0]} has no line in {negative}", test) from None
    if len(order) != len(test_u):
        log.warning(
            "%s: %d lines whose pair is not in the test file were ignored", negative, len(order) - len(test_u)
        )
    seen_items = np.zeros(num_items, bool)
    seen_items[train_i] = True
    cold = int((~seen_items[test_i]).sum())
    if cold:
        # Genuine ML-1M has 2 such items; they are legitimate (cold) test items, not a format error.
        log.warning("%s: %d test items never appear in train (cold items, kept)", test, cold)
    dup_neg = int((negs[idx] == test_i[:, None]).any(1).sum())
    if dup_neg:
        log.warning(
            "%s: %d users have their own test item among their negatives; evaluation ignores those copies",
            negative,
            dup_neg,
        )
    log.info(
        "loaded NCF data: %d users, %d items, %d train pairs, %d test users, %d negatives each",
        num_users,
        num_items,
        len(train_u),
        len(test_u),
        negs.shape[1],
    )
    return Interactions(
        num_users=num_users,
        num_items=num_items,
        train_users=train_u,
        train_items=train_i,
        test=EvalSplit(test_u, test_i, negs[idx]),
        user_ids=list(range(num_users)),
        item_ids=list(range(num_items)),
        source=str(train),
    )


def write_ncf(data: Interactions, prefix: str | Path) -> Path:
    """Write ``data``'s train pairs and test split as NCF files (``PREFIX.train.rating``,
    ``PREFIX.test.rating``, ``PREFIX.test.negative``) in its contiguous indices, so that a raw ratings file
    (ML-100K's ``u.data``) can feed what reads only NCF files (the pipeline's Evaluate step). Ratings and
    timestamps are not kept (the NCF readers use the first two columns): written as 1 and 0."""
    if data.test is None or len(data.test) == 0:
        raise DataError("no test split to write", data.source or None)
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {kind: Path(str(prefix) + suffix) for kind, suffix in NCF_SUFFIXES.items()}

    def pairs(users: np.ndarray, items: np.ndarray) -> str:
        return "".join(f"{u}\t{i}\t1\t0\n" for u, i in zip(users.tolist(), items.tolist(), strict=True))

    paths["train"].write_text(pairs(data.train_users, data.train_items), encoding="utf-8")
    test = data.test
    paths["test"].write_text(pairs(test.users, test.items), encoding="utf-8")
    lines = (
        f"({u},{i})\t" + "\t".join(map(str, negs)) + "\n"
        for u, i, negs in zip(test.users.tolist(), test.items.tolist(), test.negatives.tolist(), strict=True)
    )
    paths["negative"].write_text("".join(lines), encoding="utf-8")
    return prefix


# ----------------------------------------------------------------------------------------- raw ratings


def read_raw(path: str | Path, min_rating: float | None = None):
    """Raw interactions as a DataFrame with columns user, item and optional rating, timestamp.

    Formats: MovieLens ``ratings.dat`` (``::``), ``u.data`` (tab, no header), CSV/TSV with a header naming
    user and item columns (``userId``, ``movieId`` ... are recognised), Parquet.
    """
    import pandas as pd

    path = Path(path)
    _require_nonempty(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types
            raise DataError(f"not a readable Parquet file ({exc})", path) from None
        frame = _rename_columns(frame, path)
    elif name.endswith(".dat") or _first_line(path).count("::") >= 1:
        raw = path.read_bytes().replace(b"::", b"\t")
        frame = _read_headerless(io.BytesIO(raw), path, sep="\t")
    elif name == "u.data" or _looks_headerless(path):
        frame = _read_headerless(path, path, sep="\t" if "\t" in _first_line(path) else ",")
    else:
        sep = "\t" if "\t" in _first_line(path) else ","
        try:
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, engine="c")
        except (ValueError, pd.errors.ParserError) as exc:
            raise DataError(f"cannot parse as CSV ({exc})", path) from None
        frame = _rename_columns(frame, path)
        for col in ("rating", "timestamp"):
            if col in frame:
                num = pd.to_numeric(frame[col], errors="coerce")
                if num.isna().any():
                    row = int(np.nonzero(num.isna().to_numpy())[0][0])
                    raise DataError(f"{col} {frame[col].iloc[row]!r} is not a number", path, row + 2)
                frame[col] = num
    if frame.empty:
        raise DataError("no data rows", path)
    for col in ("user", "item"):
        blank = frame[col].isna() | (frame[col].astype(str).str.strip() == "")
        if blank.any():
            row = int(np.nonzero(blank.to_numpy())[0][0])
            raise DataError(f"empty {col} id", path, row + 2)
    if min_rating is not None:
        if "rating" not in frame:
            raise DataError("min_rating given but the file has no rating column", path)
        before = len(frame)
        frame = frame[frame["rating"] >= min_rating]
        log.info(
            "%s: %d of %d rows have rating < %s and were left out",
            path,
            before - len(frame),
            before,
            min_rating,
        )
    return frame


def _read_headerless(source, path: Path, sep: str):
    import pandas as pd

    try:
        frame = pd.read_csv(source, sep=sep, header=None, engine="c", dtype=np.int64, skip_blank_lines=True)
    except (ValueError, pd.errors.ParserError) as exc:
        _raise_first_bad_line(
            path, sep="::" if path.name.endswith(".dat") else sep, min_fields=2, int_fields=4, fallback=exc
        )
        raise AssertionError("unreachable") from exc
    if frame.shape[1] < 2:
        raise DataError("expected at least 'user item' columns", path, 1)
    names = ["user", "item", "rating", "timestamp"][: frame.shape[1]]
    frame = frame.iloc[:, : len(names)]
    frame.columns = names
    return frame


def _rename_columns(frame, path: Path):
    mapping = _column_roles(frame.columns)
    if "user" not in mapping.values() or "item" not in mapping.values():
        raise DataError(f"needs 'user' and 'item' columns, found {list(frame.columns)}", path, 1)
    return frame[list(mapping)].rename(columns=mapping)


def _column_roles(columns) -> dict:
    """Header name -> user, item, rating or timestamp, for the columns that are one of those."""
    mapping = {}
    for col in columns:
        key = str(col).lower().replace("_", "")
        if key in _USER_COLUMNS and "user" not in mapping.values():
            mapping[col] = "user"
        elif key in _ITEM_COLUMNS and "item" not in mapping.values():
            mapping[col] = "item"
        elif key == "rating":
            mapping[col] = "rating"
        elif key in {"timestamp", "time", "ts"}:
            mapping[col] = "timestamp"
    return mapping


def load_raw(
    path: str | Path,
    *,
    seed: int = 0,
    num_eval_negatives: int = NUM_EVAL_NEGATIVES,
    validation: bool = True,
    min_rating: float | None = None,
) -> Interactions:
    """Raw interactions → contiguous ids, latest per user as test, the one before as validation."""
    path = Path(path)
    columns = _read_csv_fast(path, min_rating)
    if columns is None:
        columns = _read_raw_columns(path, min_rating)
    users, user_ids, items, item_ids, timestamps = columns
    del columns
    if timestamps is None:
        log.info("%s: no timestamp column, file order stands for time", path)
    num_users, num_items = len(user_ids), len(item_ids)
    # Chronological per user (stable: ties keep file order).
    order = _chronological_order(users, timestamps)
    del timestamps
    users, items = users[order], items[order]
    del order

    # Repeated (user, item) pairs: keep the latest. A stable sort of the keys puts each pair's rows in
    # time order, so the last of each run of equal keys is the latest; the runs' keys are the sorted,
    # distinct positives the PositiveSet needs, so they are not sorted again there.
    keys = torch.from_numpy(users * num_items + items)
    sorted_keys, position = torch.sort(keys, stable=True)
    del keys
    last = torch.ones(len(sorted_keys), dtype=torch.bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    if not bool(last.all()):
        keep = torch.sort(position[last]).values.numpy()
        log.info("%s: %d repeated (user, item) rows merged into their latest", path, len(users) - len(keep))
        users, items = users[keep], items[keep]
        sorted_keys = sorted_keys[last]
        del keep
    del position, last

    positives = PositiveSet.from_unique_keys(sorted_keys, num_users, num_items)
    del sorted_keys
    train_u, train_i, test_u, test_i = _hold_out(users, items, num_users, None)
    del users, items
    if len(test_u) == 0:
        kept = f" with rating ≥ {min_rating}" if min_rating is not None else ""
        raise DataError(
            f"no test users: each of the {num_users} users has a single interaction{kept}, and leave-one-out "
            "holds out a user's latest interaction only when the user has at least 2",
            path,
        )
    gen = torch.Generator().manual_seed(seed)
    test = EvalSplit(test_u, test_i, _eval_negatives(test_u, num_eval_negatives, positives, gen))
    skipped = num_users - len(test_u)
    if skipped:
        log.info("%s: %d users with a single interaction stay in train only (no test item)", path, skipped)
    data = Interactions(
        num_users=num_users,
        num_items=num_items,
        train_users=train_u,
        train_items=train_i,
        test=test,
        user_ids=user_ids,
        item_ids=item_ids,
        source=str(path),
    )
    if validation:
        # Train and test together are every pair above: the same positives, not built again.
        _carve_validation(
            data, seed=seed, num_negatives=num_eval_negatives, chronological=True, positives=positives
        )
    log.info(
        "loaded %s: %d users, %d items, %d train pairs, %d test users",
        path,
        num_users,
        num_items,
        len(data.train_users),
        len(test_u),
    )
    return data


def _read_raw_columns(path: Path, min_rating: float | None):
    """read_raw's frame as (users, user_ids, items, item_ids, timestamps or None), ids factorized."""
    import pandas as pd

    frame = read_raw(path, min_rating=min_rating)
    user_idx, user_index = pd.factorize(frame["user"], sort=False)
    item_idx, item_index = pd.factorize(frame["item"], sort=False)
    timestamps = frame["timestamp"].to_numpy() if "timestamp" in frame else None
    del frame
    return (
        user_idx.astype(np.int64),
        _python_ids(user_index),
        item_idx.astype(np.int64),
        _python_ids(item_index),
        timestamps,
    )


def _read_csv_fast(path: Path, min_rating: float | None):
    """What _read_raw_columns returns, for a CSV/TSV with a header, read by pyarrow (typed, threaded).

    None when the file is not such a CSV or anything is not plainly well formed (pyarrow refuses it, a
    rating is not finite, an id is blank, header names are ambiguous ...): read_raw then reads it as
    before and names the offending line. Ids stay text, so "007" and "7" stay distinct as there.
    """
    name = path.name.lower()
    if not path.is_file() or path.stat().st_size == 0 or name.endswith((".parquet", ".dat")):
        return None
    first = _first_line(path)
    if first.count("::") >= 1 or name == "u.data" or _looks_headerless(path):
        return None
    sep = "\t" if "\t" in first else ","
    try:
        return _read_csv_pyarrow(path, sep, min_rating)
    except Exception as exc:  # any failure means: read it the careful way
        log.debug("%s: fast CSV reader declined (%s); reading with pandas", path, exc)
        return None


def _read_csv_pyarrow(path: Path, sep: str, min_rating: float | None):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    # Header names as pandas reads them (it renames duplicates and blanks) must be pyarrow's too.
    header = list(pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, engine="c", nrows=0).columns)
    parse = pacsv.ParseOptions(delimiter=sep)
    with pacsv.open_csv(path, parse_options=parse) as reader:
        if list(reader.schema.names) != header or len(set(header)) != len(header):
            return None
    mapping = _column_roles(header)
    roles = list(mapping.values())
    if "user" not in roles or "item" not in roles or len(set(roles)) != len(roles):
        return None
    if min_rating is not None and "rating" not in roles:
        return None
    types = {"user": pa.string(), "item": pa.string(), "rating": pa.float64(), "timestamp": pa.int64()}
    convert = pacsv.ConvertOptions(
        # Other columns are read too, as text: pandas decodes the whole file, so bad UTF-8 anywhere is
        # an error there, and pyarrow checks UTF-8 only in the text columns it converts.
        column_types={col: types[mapping[col]] if col in mapping else pa.string() for col in header},
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    if table.num_rows == 0:
        return None
    table = table.select(list(mapping)).rename_columns(list(mapping.values()))
    keep = None
    if "rating" in roles:
        rating = table.column("rating").to_numpy()
        if not np.isfinite(rating).all():  # pandas reads nan as missing; inf: let pandas decide
            return None
        if min_rating is not None:
            keep = rating >= min_rating
        del rating
    out = []
    for role in ("user", "item"):
        encoded = pc.dictionary_encode(table.column(role).combine_chunks())
        table = table.drop_columns([role])
        texts = encoded.dictionary.to_pylist()
        if (pd.Series(texts, dtype=str).str.strip() == "").any():  # read_raw's blank-id test
            return None
        codes = encoded.indices.to_numpy().astype(np.int64)
        del encoded
        if keep is not None:
            # Ids in order of first appearance among the rows kept, as factorizing the filtered frame.
            codes, first_seen = pd.factorize(codes[keep], sort=False)
            codes = codes.astype(np.int64)
            texts = [texts[k] for k in first_seen]
        out += [codes, _python_ids(texts)]
    timestamps = None
    if "timestamp" in roles:
        timestamps = table.column("timestamp").to_numpy()
        if keep is not None:
            timestamps = timestamps[keep]
    del table
    # mimalloc keeps the freed table's pages (~0.5 GB at 20M rows) that numpy and torch cannot reuse.
    pa.default_memory_pool().release_unused()
    if len(out[0]) == 0:  # every row filtered out: read_raw's path says what it says about that
        return None
    if keep is not None:
        log.info(
            "%s: %d of %d rows have rating < %s and were left out",
            path,
            len(keep) - len(out[0]),
            len(keep),
            min_rating,
        )
    return (*out, timestamps)


def _chronological_order(users: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray:
    """Row order by (user, timestamp), ties in file order: np.lexsort((arange, timestamps, users))."""
    if timestamps is None:
        key = users
    elif timestamps.dtype == np.int64 and len(users):
        low, high = int(timestamps.min()), int(timestamps.max())
        span = high - low + 1
        if (int(users.max()) + 1) * span > np.iinfo(np.int64).max:
            return np.lexsort((np.arange(len(users)), timestamps, users))
        key = users * span + (timestamps - low)
    else:
        return np.lexsort((np.arange(len(users)), timestamps, users))
    # One stable sort of a combined key: ~10x faster than lexsort's three passes at 20M rows.
    return torch.sort(torch.from_numpy(key), stable=True).indices.numpy()


def _python_ids(index) -> list:
    """Raw ids as JSON-friendly Python values; text ids that are all canonical integers become ints."""
    values = index.to_numpy() if hasattr(index, "to_numpy") else np.asarray(index, dtype=object)
    if values.dtype.kind in "iu":
        return [int(v) for v in values]
    texts = [str(v) for v in values]
    if all(_CANONICAL_INT.fullmatch(t) for t in texts):
        return [int(t) for t in texts]
    return texts


# ---------------------------------------------------------------------------------------------- splits


def _hold_out(
    users: np.ndarray, items: np.ndarray, num_users: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Take one interaction per user with ≥2 of them: the last in order (rng None) or a random one.

    ``users`` must be grouped by user (sorted); within a user, order is time.
    """
    counts = np.bincount(users, minlength=num_users)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    eligible = np.nonzero(counts >= 2)[0]
    if rng is None:
        pick = starts[eligible] + counts[eligible] - 1
    else:
        pick = starts[eligible] + (rng.random(len(eligible)) * counts[eligible]).astype(np.int64)
    mask = np.ones(len(users), bool)
    mask[pick] = False
    return users[mask], items[mask], users[pick], items[pick]


def add_validation(
    data: Interactions, *, seed: int, num_negatives: int = NUM_EVAL_NEGATIVES, chronological: bool
) -> None:
    """Carve one validation positive per user (≥2 train items) out of train, in place."""
    _carve_validation(data, seed=seed, num_negatives=num_negatives, chronological=chronological)


def _carve_validation(
    data: Interactions,
    *,
    seed: int,
    num_negatives: int,
    chronological: bool,
    positives: PositiveSet | None = None,
) -> None:
    """add_validation; ``positives``, if given, must hold exactly ``data.known_positives()``."""
    users, items = data.train_users, data.train_items
    if len(users) and not bool((users[1:] >= users[:-1]).all()):  # stable: sorted stays as it is
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        del order
    rng = None if chronological else np.random.default_rng(seed)
    train_u, train_i, val_u, val_i = _hold_out(users, items, data.num_users, rng)
    del users, items
    if positives is not None:  # load_raw's own data: let the old train arrays go before sampling
        data.train_users, data.train_items = train_u, train_i
    if positives is None:
        all_u, all_i = data.known_positives()
        positives = PositiveSet(
            torch.from_numpy(all_u), torch.from_numpy(all_i), data.num_users, data.num_items
        )
        del all_u, all_i
    gen = torch.Generator().manual_seed(seed + 1)
    data.val = EvalSplit(val_u, val_i, _eval_negatives(val_u, num_negatives, positives, gen))
    data.train_users, data.train_items = train_u, train_i
    log.info("validation: %d users hold out one train item each", len(val_u))


def _eval_negatives(users: np.ndarray, num: int, positives: PositiveSet, gen: torch.Generator) -> np.ndarray:
    if len(users) == 0 or num == 0:
        return np.zeros((len(users), num), np.int64)
    try:
        return sample_distinct_negatives(torch.from_numpy(users), num, positives, gen).numpy()
    except ValueError as exc:
        raise DataError(f"cannot build evaluation candidates: {exc}") from None


# ------------------------------------------------------------------------------------------ diagnostics


def _require_nonempty(path: Path) -> None:
    if not path.is_file():
        raise DataError("file not found", path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", path)


def _first_line(path: Path) -> str:
    with path.open("r", encoding="latin-1") as fh:
        for line in fh:
            if line.strip():
                return line
    return ""


def _looks_headerless(path: Path) -> bool:
    first = _first_line(path).strip()
    fields = re.split(r"[\t,]", first)
    return len(fields) >= 2 and all(_is_int(f) for f in fields[:2])


def _is_int(text: str) -> bool:
    """An integer written in ASCII digits (surrounding whitespace allowed), as the fast parsers read."""
    return text.isascii() and _INT_TEXT.fullmatch(text.strip()) is not None


def _check_nonnegative(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    bad = np.nonzero((users < 0) | (items < 0))[0]
    if bad.size:
        raise DataError("negative user/item ids are not allowed", path, _data_line_number(path, int(bad[0])))


def _data_line_number(path: Path, index: int) -> int | None:
    """1-based file line of the ``index``-th non-blank line (errors only: scans the file)."""
    try:
        with Path(path).open("r", encoding="latin-1") as fh:
            seen = -1
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    seen += 1
                    if seen == index:
                        return lineno
    except OSError:
        return None
    return None


def _raise_first_bad_line(
    path: Path, sep: str, min_fields: int, int_fields: int, fallback: Exception
) -> None:
    """Slow path after a fast parser failed: find and name the first offending line."""
    width = None
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(sep)
            if len(fields) < min_fields:
                raise DataError(
                    f"expected at least {min_fields} {sep!r}-separated fields, "
                    f"got {len(fields)}: {line[:60]!r}",
                    path,
                    lineno,
                )
            for f in fields[: min(int_fields, len(fields))]:
                if not _is_int(f.strip()):
                    raise DataError(f"{f[:40]!r} is not an integer id", path, lineno)
            if width is None:
                width = len(fields)
            elif len(fields) != width and int_fields > 2:
                raise DataError(f"{len(fields)} fields here, {width} on the first line", path, lineno)
    raise DataError(f"cannot parse ({fallback})", path)
