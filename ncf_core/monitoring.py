"""The health of a recommender's traffic against a baseline: pure statistics (no AWS, no HTTP, no torch).

A ``Window`` collects what one period of traffic asked and answered, a request at a time: the users and
items each query named (against the ``Catalogue`` the model knows), the top-K lists and the scores it
returned, the records that could not be read. ``Window.summary`` turns that into figures:

- traffic: requests, records, request kinds, content types, error responses;
- cold start: the share of queried users the model does not know, and of the items requests named;
- output drift: each score distribution binned into ten bins of the baseline's deciles, and its
  population stability index against the baseline (``psi``);
- catalogue health, per kind of top-K list: coverage of the catalogue and the Gini coefficient of item
  exposure — both grow with the number of lists, so a window is compared with the baseline at the same
  number of lists (``GRID``) — and the share of returned slots taken by the catalogue's head (the 1 % most
  popular items in training): a recommender collapsing onto blockbusters drops coverage, raises Gini and
  the head's share.

``baseline_window`` runs the model on a sample of its own training users (the three request kinds the
endpoint serves) to give the reference figures; ``check`` compares a window's summary with the baseline's
under ``Thresholds`` and returns the ``Violation`` s. The SageMaker side (capture files, Model Monitor's
files and environment, CloudWatch) is ``ncf_sagemaker.monitor_job``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import ConfigError
from .ids import id_key

if TYPE_CHECKING:
    from .inference import Recommender

# What a query asks (protocol's TopItemsQuery, RecommendQuery, ScoreQuery) and what its answer holds.
TOP_ITEMS, RECOMMEND, SCORES = "top_items", "recommend", "scores"
KINDS = (TOP_ITEMS, RECOMMEND, SCORES)
LIST_KINDS = (TOP_ITEMS, RECOMMEND)  # answers that are top-K lists
SCORE_KINDS = (RECOMMEND, SCORES)  # answers that carry scores (the workshop's bare array has none)
BINS = 10
PSI_FLOOR = 1e-4  # an empty bin counts as this fraction (the log of 0 is not a number)
GRID = tuple(2**p for p in range(4, 13))  # 16 ... 4096 lists: where coverage and Gini are compared
HEAD_FRACTION = 0.01
SAMPLES_KEPT = 5
# The figure names of the score distributions (Model Monitor "features"), by answer kind.
SCORE_FEATURES = {RECOMMEND: "recommend_score", SCORES: "pair_score"}
SEED = 0


# --------------------------------------------------------------------------------------------- statistics
def quantile_edges(values: Sequence[float] | np.ndarray, bins: int = BINS) -> list[float]:
    """The interior edges of ``bins`` equal-frequency bins of ``values`` (ties merge bins)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return []
    edges = np.quantile(v, np.arange(1, bins) / bins)
    return [float(x) for x in np.unique(edges)]


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the ``len(edges) + 1`` bins the interior ``edges`` cut (a value on an edge
    goes to the bin above it)."""
    v = np.asarray(values, dtype=np.float64)
    return np.bincount(np.searchsorted(np.asarray(edges), v, side="right"), minlength=len(edges) + 1)


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of two histograms over the same bins: Σ (a − e) · ln(a / e) over the
    bins' fractions, each floored at ``PSI_FLOOR``. 0 is no change; > 0.25 is read as a major shift."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs two non-empty histograms over the same bins")
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def gini(counts: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal; → 1: all on one). Zeros count: pass one
    count per catalogue item, including the items never returned."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, float(x.sum()) if x.size else 0.0
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float((2.0 * np.sum(ranks * x)) / (n * total) - (n + 1.0) / n)


def exposure(lists: Sequence[Sequence], catalogue_size: int, head: frozenset = frozenset()) -> dict:
    """Coverage, Gini of exposure and the head's share of the slots of some top-K lists (canonical ids)."""
    counts = Counter(item for items in lists for item in items)
    slots = sum(counts.values())
    per_item = np.zeros(max(catalogue_size, len(counts)), dtype=np.float64)
    per_item[: len(counts)] = list(counts.values())
    return {
        "lists": len(lists),
        "slots": slots,
        "distinct_items": len(counts),
        "coverage": len(counts) / catalogue_size if catalogue_size else None,
        "gini": gini(per_item),
        "head_share": (sum(counts[i] for i in head if i in counts) / slots) if slots else None,
    }


def grid_point(lists: int, ceiling: int | None = None) -> int | None:
    """The largest ``GRID`` size ≤ ``lists`` (and ≤ ``ceiling``), or None below the grid."""
    points = [n for n in GRID if n <= lists and (ceiling is None or n <= ceiling)]
    return points[-1] if points else None


def describe(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0}
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std_dev": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "sum": float(values.sum()),
        "quantiles": dict(
            zip(("p10", "p50", "p90"), np.quantile(values, [0.1, 0.5, 0.9]).tolist(), strict=True)
        ),
    }


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --------------------------------------------------------------------------------------------- catalogue
class IdSet:
    """The raw ids a model knows, read as ``ncf_core.inference.IdMap`` reads a request's ids
    (``ncf_core.ids.id_key``)."""

    def __init__(self, ids: Iterable):
        self.ids = list(ids)
        self.numeric = all(type(x) is int for x in self.ids)
        self._set = frozenset(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def canonical(self, raw: object) -> object | None:
        """``raw`` as the model spells it, or None when the model does not know it."""
        if (type(raw) is int or type(raw) is str) and raw in self._set:
            return raw
        key = id_key(raw, self.numeric)
        try:
            return key if key in self._set else None
        except TypeError:  # unhashable (list, dict)
            return None

    def unknown(self, raws: Sequence) -> int:
        """How many of ``raws`` the model does not know."""
        known, missing = self._set, 0
        for x in raws:
            try:
                if x in known:
                    continue
            except TypeError:  # unhashable: never an id
                pass
            missing += self.canonical(x) is None
        return missing


@dataclass
class Catalogue:
    """What the model knows: its users, its items and its head (the most popular items in training)."""

    users: IdSet
    items: IdSet
    head: frozenset

    @classmethod
    def build(
        cls, users: Sequence, items: Sequence, popularity: Sequence[int], head_fraction: float = HEAD_FRACTION
    ) -> Catalogue:
        order = np.argsort(-np.asarray(popularity, dtype=np.float64), kind="stable")
        size = max(1, math.ceil(head_fraction * len(items))) if len(items) else 0
        return cls(IdSet(users), IdSet(items), frozenset(items[int(i)] for i in order[:size]))

    def to_dict(self) -> dict:
        head = sorted(self.head, key=lambda x: (isinstance(x, str), x))
        return {"users": self.users.ids, "items": self.items.ids, "head_items": head}

    @classmethod
    def from_dict(cls, doc: Mapping) -> Catalogue:
        try:
            users, items, head = doc["users"], doc["items"], doc["head_items"]
        except (KeyError, TypeError):
            raise ConfigError("the baseline's catalogue needs 'users', 'items' and 'head_items'") from None
        if not all(isinstance(x, list) for x in (users, items, head)) or not items:
            raise ConfigError("the baseline's catalogue lists no items (or is not lists of ids)")
        item_set = IdSet(items)
        return cls(IdSet(users), item_set, frozenset(item_set.canonical(x) for x in head) - {None})


# --------------------------------------------------------------------------------------------- a window
class Window:
    """What one period of traffic asked and answered, fed a capture record at a time."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue
        self.requests = 0
        self.records = 0
        self.kinds: Counter = Counter()
        self.content_types: Counter = Counter()
        self.response_types: Counter = Counter()
        self.variants: Counter = Counter()
        self.error_responses = 0
        self.rejected_requests = 0
        self.without_output = 0
        self.users = self.unknown_users = 0
        self.items = self.unknown_items = 0
        self.answers = self.fallback_answers = 0
        self.scores: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_KINDS}
        self.lists: dict[str, list[list]] = {k: [] for k in LIST_KINDS}
        self.unreadable = 0
        self.samples: list[dict] = []

    # ---- what a capture record brings
    def request(self, content_type: str, records: int, batch: bool, variant: str | None = None) -> None:
        self.requests += 1
        self.records += records
        self.content_types[content_type or "(none)"] += 1
        if batch:
            self.kinds["batch"] += 1
        if variant is not None:
            self.variants[variant] += 1

    def query(self, kind: str, users: Sequence, items: Sequence = ()) -> None:
        """One query's ids: its distinct users, and every item it names (pairs, candidates)."""
        self.kinds[kind] += 1
        distinct = list(dict.fromkeys(u if isinstance(u, (int, str)) else repr(u) for u in users))
        self.users += len(distinct)
        self.unknown_users += self.catalogue.users.unknown(distinct)
        self.items += len(items)
        self.unknown_items += self.catalogue.items.unknown(items)

    def answer(
        self, kind: str, items: Sequence | None = None, scores: Sequence[float] | None = None, fallback=None
    ) -> None:
        """One answer: a top-K list (``items``; raw ids as returned), its scores, its fallback flag(s)."""
        if items is not None and kind in self.lists:
            canonical = self.catalogue.items.canonical
            self.lists[kind].append([c for c in map(canonical, items) if c is not None])
        if scores is not None and kind in self.scores and len(scores):
            self.scores[kind].append(np.asarray(scores, dtype=np.float64))
        if fallback is not None:
            flags = [fallback] if isinstance(fallback, bool) else list(fallback)
            self.answers += len(flags)
            self.fallback_answers += sum(1 for f in flags if f is True)

    def response_type(self, content_type: str) -> None:
        self.response_types[content_type or "(none)"] += 1

    def error_response(self) -> None:
        self.error_responses += 1

    def rejected(self) -> None:
        """A request the endpoint's wire format refuses (the client got a 4xx)."""
        self.rejected_requests += 1

    def no_output(self) -> None:
        self.without_output += 1

    def unreadable_record(self, where: str, reason: str, text: str = "") -> None:
        self.unreadable += 1
        if len(self.samples) < SAMPLES_KEPT:
            self.samples.append({"where": where, "reason": reason[:300], "text": text[:200]})

    # ---- figures
    def summary(self, reference: Mapping | None = None) -> dict:
        """The window's figures; with ``reference`` (the baseline's summary) scores are binned with the
        baseline's edges and coverage/Gini are taken at a grid size the baseline has; without, the edges
        are this window's deciles and coverage/Gini are given at every grid size (a baseline)."""
        cat = self.catalogue
        traffic = {
            "requests": self.requests,
            "records": self.records,
            "request_kinds": dict(sorted(self.kinds.items())),
            "content_types": dict(sorted(self.content_types.items())),
            "response_content_types": dict(sorted(self.response_types.items())),
            "variants": dict(sorted(self.variants.items())),
            "error_responses": self.error_responses,
            "error_share": share(self.error_responses, self.requests),
            "rejected_requests": self.rejected_requests,
            "requests_without_output": self.without_output,
        }
        cold = {
            "users": self.users,
            "unknown_users": self.unknown_users,
            "unknown_user_share": share(self.unknown_users, self.users),
            "items": self.items,
            "unknown_items": self.unknown_items,
            "unknown_item_share": share(self.unknown_items, self.items),
            "answers": self.answers,
            "fallback_answers": self.fallback_answers,
            "fallback_share": share(self.fallback_answers, self.answers),
        }
        scores = {}
        for kind in SCORE_KINDS:
            values = np.concatenate(self.scores[kind]) if self.scores[kind] else np.zeros(0)
            stats = describe(values)
            ref_bins = ((reference or {}).get("scores", {}).get(kind) or {}).get("bins")
            edges = ref_bins["edges"] if ref_bins else quantile_edges(values)
            if values.size:
                counts = histogram(values, edges)
                stats["bins"] = {"edges": edges, "counts": counts.tolist()}
                if ref_bins and sum(ref_bins["counts"]):
                    stats["psi"] = psi(ref_bins["counts"], counts)
            scores[kind] = stats
        catalogue = {}
        rng = np.random.default_rng(SEED)
        for kind in LIST_KINDS:
            lists = self.lists[kind]
            stats = exposure(lists, len(cat.items), cat.head)
            ref_curve = ((reference or {}).get("catalogue", {}).get(kind) or {}).get("curve")
            if reference is None:
                stats["curve"] = {
                    str(n): _at(exposure(lists[:n], len(cat.items), cat.head))
                    for n in GRID
                    if n <= len(lists)
                }
            elif ref_curve:
                n = grid_point(len(lists), max(int(x) for x in ref_curve))
                if n is not None:
                    chosen = rng.choice(len(lists), size=n, replace=False) if n < len(lists) else range(n)
                    stats["at"] = {"lists": n, **_at(exposure([lists[i] for i in chosen], len(cat.items)))}
            catalogue[kind] = stats
        records = self.requests + self.unreadable
        unreadable = {
            "records": self.unreadable,
            "share": share(self.unreadable, records),
            "samples": list(self.samples),
        }
        return {
            "traffic": traffic,
            "cold_start": cold,
            "scores": scores,
            "catalogue": catalogue,
            "unreadable": unreadable,
        }


def _at(figures: dict) -> dict:
    return {"coverage": figures["coverage"], "gini": figures["gini"]}


# --------------------------------------------------------------------------------------------- baseline
def baseline_window(
    recommender: Recommender,
    users: int = 2000,
    k: int = 10,
    candidates: int = 100,
    pairs_per_user: int = 20,
    head_fraction: float = HEAD_FRACTION,
    seed: int = SEED,
) -> Window:
    """The model's own answers for a sample of its training users, for each request kind the endpoint
    serves: top-``k`` over all items without the user's history (``recommend``), the top ``k`` of
    ``candidates`` items drawn at random (the workshop's request, ``top_items``), and scores of
    ``pairs_per_user`` of those candidates (``scores``)."""
    art = recommender.artifact
    catalogue = Catalogue.build(art.user_ids, art.item_ids, art.item_popularity, head_fraction)
    window = Window(catalogue)
    rng = np.random.default_rng(seed)
    n_users, n_items = len(art.user_ids), len(art.item_ids)
    k = min(k, n_items)
    candidates = min(candidates, n_items)
    pairs_per_user = min(pairs_per_user, candidates)
    chosen = rng.choice(n_users, size=min(users, n_users), replace=False)
    sample = [art.user_ids[int(u)] for u in chosen]
    for rec in recommender.recommend_many(sample, k):
        window.request("application/json", 1, False)
        window.query(RECOMMEND, [rec.user])
        window.answer(RECOMMEND, rec.items, rec.scores, rec.fallback)
    for user in sample:
        items = [art.item_ids[int(i)] for i in rng.choice(n_items, size=candidates, replace=False)]
        top = recommender.top_items([user] * candidates, items, k)
        window.request("application/json", 1, False)
        window.query(TOP_ITEMS, [user], items)
        window.answer(TOP_ITEMS, top.items, None, top.fallback)
        pair_items = items[:pairs_per_user]
        scored = recommender.score_pairs([user] * len(pair_items), pair_items)
        window.request("application/json", 1, False)
        window.query(SCORES, [user], pair_items)
        window.answer(SCORES, None, scored.scores, scored.fallback)
    return window


# --------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Thresholds:
    """When a window's figure is a violation (constraints.json's ``monitoring_config.recommender``)."""

    max_unknown_user_share: float = 0.10  # absolute: the baseline's own users are all known
    max_unknown_item_share: float = 0.01  # absolute: every unknown item costs the client a 400
    max_score_psi: float = 0.2  # PSI of each score distribution against the baseline's
    max_coverage_drop: float = 0.3  # relative: coverage below (1 − this) × the baseline's
    max_gini_increase: float = 0.1  # absolute, on the Gini of exposure
    max_head_share_increase: float = 0.1  # absolute, on the share of slots the head takes
    max_unreadable_share: float = 0.01  # capture records that could not be read
    max_error_share: float = 0.05  # captured responses that are errors
    min_scores: int = 200  # fewer scores of a kind: no PSI check for that kind
    min_lists: int = 32  # fewer top-K lists of a kind: no coverage / concentration check

    _RANGES: ClassVar[dict[str, tuple]] = {
        "max_unknown_user_share": (0.0, 1.0),
        "max_unknown_item_share": (0.0, 1.0),
        "max_score_psi": (0.0, 100.0),
        "max_coverage_drop": (0.0, 1.0),
        "max_gini_increase": (0.0, 1.0),
        "max_head_share_increase": (0.0, 1.0),
        "max_unreadable_share": (0.0, 1.0),
        "max_error_share": (0.0, 1.0),
        "min_scores": (1, 10**9),
        "min_lists": (GRID[0], 10**9),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low, high = self._RANGES[f.name]
            integral = isinstance(low, int) and isinstance(high, int)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (integral and not isinstance(value, int))
            ):
                kind = "an integer" if integral else "a number"
                raise ConfigError(f"threshold {f.name} must be {kind} in [{low}, {high}], got {value!r}")
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"threshold {f.name} is {value!r}: it must lie in [{low}, {high}]")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> Thresholds:
        doc = dict(doc or {})
        unknown = sorted(set(doc) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown threshold(s) {unknown}; known: {sorted(f.name for f in fields(cls))}")
        return cls(**doc)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Violation:
    feature_name: str
    constraint_check_type: str
    description: str


def check(baseline: Mapping, current: Mapping, limits: Thresholds) -> list[Violation]:
    """The violations of a window's summary (``current``) against the baseline's summary."""
    out: list[Violation] = []

    def add(feature: str, check_type: str, description: str) -> None:
        out.append(Violation(feature, check_type, description))

    unread, traffic, cold = current["unreadable"], current["traffic"], current["cold_start"]
    if unread["share"] is not None and unread["share"] > limits.max_unreadable_share:
        add("capture_record", "data_quality_check",
            f"{unread['records']} capture records could not be read ({unread['share']:.1%} of the "
            f"window's records; max_unreadable_share {limits.max_unreadable_share:.1%})")  # fmt: skip
    if traffic["error_share"] is not None and traffic["error_share"] > limits.max_error_share:
        add("endpointOutput", "error_response_check",
            f"{traffic['error_responses']} of {traffic['requests']} captured responses are errors "
            f"({traffic['error_share']:.1%}; max_error_share {limits.max_error_share:.1%})")  # fmt: skip
    for name, what, limit in (
        ("user", "users", limits.max_unknown_user_share),
        ("item", "items", limits.max_unknown_item_share),
    ):
        value = cold[f"unknown_{name}_share"]
        if value is not None and value > limit:
            add(name, "cold_start_check",
                f"{cold[f'unknown_{what}']} of {cold[what]} {what} in requests are unknown to the model "
                f"({value:.1%}; max_unknown_{name}_share {limit:.1%})")  # fmt: skip
    for kind in SCORE_KINDS:
        now, base = current["scores"][kind], baseline["scores"][kind]
        value = now.get("psi")
        if value is not None and now["count"] >= limits.min_scores and value > limits.max_score_psi:
            add(SCORE_FEATURES[kind], "baseline_drift_check",
                f"{SCORE_FEATURES[kind]} drifted: PSI {value:.3f} over {now['count']} scores (max_score_psi "
                f"{limits.max_score_psi}); mean {now['mean']:.3f}, "
                f"baseline {base.get('mean', math.nan):.3f}")  # fmt: skip
    for kind in LIST_KINDS:
        now, base = current["catalogue"][kind], baseline["catalogue"][kind]
        if now["lists"] < limits.min_lists:
            continue
        at = now.get("at")
        ref = base.get("curve", {}).get(str(at["lists"])) if at else None
        if ref and ref["coverage"] and at["coverage"] < ref["coverage"] * (1 - limits.max_coverage_drop):
            add(f"{kind}_items", "catalogue_coverage_check",
                f"{kind} lists cover {at['coverage']:.1%} of the catalogue over {at['lists']} lists, "
                f"baseline {ref['coverage']:.1%} "
                f"(max_coverage_drop {limits.max_coverage_drop:.0%})")  # fmt: skip
        if ref and at["gini"] > ref["gini"] + limits.max_gini_increase:
            add(f"{kind}_items", "popularity_concentration_check",
                f"{kind} exposure Gini {at['gini']:.3f} over {at['lists']} lists, baseline "
                f"{ref['gini']:.3f} (max_gini_increase {limits.max_gini_increase})")  # fmt: skip
        head, ref_head = now["head_share"], base.get("head_share")
        if head is not None and ref_head is not None and head > ref_head + limits.max_head_share_increase:
            add(f"{kind}_items", "popularity_concentration_check",
                f"the catalogue's head (its most popular items in training) takes {head:.1%} of {kind} "
                f"slots, baseline {ref_head:.1%} (max_head_share_increase "
                f"{limits.max_head_share_increase:.0%})")  # fmt: skip
    return out
