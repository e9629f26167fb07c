"""Export an artifact as an NVIDIA Triton model repository that SageMaker's Triton image serves as it is.

``python -m ncf_core export --model-dir DIR --to REPO [--name NAME] [--top-k K] [--packages DIR]`` writes::

    REPO/NAME/config.pbtxt              ensemble: raw user ids -> top-K raw item ids, scores, count, fallback
    REPO/NAME_users/{config.pbtxt,1/}   Python backend (numpy only): raw user ids -> indices (-1: unknown)
    REPO/NAME_topk/{config.pbtxt,1/model.pt}   pytorch_libtorch: user indices -> top-K item indices, scores
    REPO/NAME_items/{config.pbtxt,1/}   Python backend: item indices -> raw item ids
    REPO/NAME_scores/config.pbtxt       ensemble: raw (user, item) pairs -> scores, fallback
    REPO/NAME_pair_ids/{config.pbtxt,1/}   Python backend: raw pairs -> indices (unknown item: a 400)
    REPO/NAME_pairs/{config.pbtxt,1/model.pt}  pytorch_libtorch: (user, item) indices -> scores

and, with ``--packages DIR``, ``DIR/NAME.tar.gz`` and ``DIR/NAME_scores.tar.gz``: one ensemble and the
models it runs each, the unit a SageMaker multi-model endpoint loads (``TargetModel=NAME.tar.gz``).

Why this shape (docs/triton.md has the sources):

- SageMaker starts Triton with ``--model-control-mode=explicit`` and loads ONE model: the single-model
  endpoint's ``SAGEMAKER_TRITON_DEFAULT_MODEL_NAME``, or on a multi-model endpoint the archive's
  ``platform: "ensemble"`` directory. Triton loads an ensemble's steps with it (and SageMaker unloads them
  with it); models a Python model calls through BLS are not loaded. So each entry is an ensemble, and all
  the work is in its steps — no BLS.
- The network is TorchScript (``pytorch_libtorch``): the backend runs it on CPU and GPU instances of the
  Triton image, and the in-process check needs only torch. Both network models precompute each side's
  embedding and first-layer projection (the split ``NCF.user_side``/``item_side`` serves with), take
  int64 indices, have ``max_batch_size`` with dynamic batching, and a ``KIND_AUTO`` instance group (the
  GPU where there is one, else the CPU).
- The cold-start fallback is index arithmetic, so it lives in the network models: user index -1 gets the
  most popular items (top-K) or the item's normalised popularity (pairs), exactly as ``Recommender`` does.
  The Python steps only map raw ids (int64, or BYTES for string-id catalogues) to indices and back; the
  Triton image has numpy but no torch, and they import nothing else.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import artifact as artifact_io
from .config import DEFAULT_TOP_K
from .errors import NcfError
from .models import NCF

log = logging.getLogger("ncf_core.triton")

DEFAULT_NAME = "ncf"
# Rows (users, or pairs) one request to a network model may carry; dynamic batching fills up to these.
TOPK_MAX_BATCH = 64
PAIRS_MAX_BATCH = 4096
# Users scored at once inside the top-K model: bounds its (users x items x width) intermediate.
TOPK_CHUNK = 16
QUEUE_DELAY_US = 500
PYTHON_MODEL = Path(__file__).with_name("triton_model.py")


class ExportError(NcfError):
    """The artifact cannot be exported as asked (bad name or K)."""


# --------------------------------------------------------------------------------------------- networks
class _Network(nn.Module):
    """The network's precomputed sides and upper layers; ``head`` is ``NCF.head``'s maths op for op."""

    __constants__ = ("use_gmf", "use_mlp")  # TorchScript compiles only the branches the variant uses

    def __init__(self, model: NCF, popularity: np.ndarray):
        super().__init__()
        config = model.config
        self.use_gmf = config.uses_gmf
        self.use_mlp = config.uses_mlp
        model = model.cpu().eval()
        empty = torch.zeros(0, 0)
        with torch.no_grad():
            user_gmf, user_proj = model.user_side()
            item_gmf, item_proj = model.item_side()
            weight = model.predict_layer.weight.detach().clone()
            f = config.factor
            self.register_buffer("user_gmf", empty if user_gmf is None else user_gmf.clone())
            self.register_buffer("item_gmf", empty if item_gmf is None else item_gmf.clone())
            self.register_buffer("user_proj", empty if user_proj is None else user_proj.clone())
            self.register_buffer("item_proj", empty if item_proj is None else item_proj.clone())
            self.register_buffer("w_gmf", weight[:, :f].clone() if self.use_gmf else empty)
            self.register_buffer("w_mlp", weight[:, -f:].clone() if self.use_mlp else empty)
            self.register_buffer("bias", model.predict_layer.bias.detach().clone())
            self.layers = nn.ModuleList()
            if self.use_mlp:
                for layer in model.mlp_layers[1:]:
                    copy = nn.Linear(layer.in_features, layer.out_features)
                    copy.load_state_dict(layer.state_dict())
                    self.layers.append(copy)
        pop = popularity.astype(np.float64)
        score = pop / pop.max() if pop.max() > 0 else pop
        # Recommender's fallback: normalised popularity, and the items in stable order of it.
        self.register_buffer("popularity", torch.from_numpy(score.astype(np.float32)))
        self.register_buffer(
            "popular", torch.from_numpy(np.argsort(-popularity, kind="stable").astype(np.int64))
        )
        self.requires_grad_(False)

    def head(self, ug: torch.Tensor, ig: torch.Tensor, up: torch.Tensor, ip: torch.Tensor) -> torch.Tensor:
        """Logits from gathered (or broadcast) side rows, as ``NCF.head`` computes them."""
        if self.use_mlp:
            h = torch.relu(up + ip)
            for layer in self.layers:
                h = torch.relu(layer(h))
            if self.use_gmf:
                return (F.linear(ug * ig, self.w_gmf, self.bias) + F.linear(h, self.w_mlp)).squeeze(-1)
            return F.linear(h, self.w_mlp, self.bias).squeeze(-1)
        return F.linear(ug * ig, self.w_gmf, self.bias).squeeze(-1)

    def _rows(self, table: torch.Tensor, index: torch.Tensor, used: bool) -> torch.Tensor:
        return table[index] if used else table


class PairScores(_Network):
    """``(USER__0, ITEM__1)`` int64 ``[B, 1]`` → ``SCORE__0`` float32 ``[B, 1]``: P(interaction) of each pair;
    user -1 (unknown) gets the item's normalised popularity, as ``Recommender.score_pairs``."""

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        u = user.reshape(-1)
        i = item.reshape(-1)
        known = u >= 0
        us = torch.clamp(u, min=0)
        logits = self.head(
            self._rows(self.user_gmf, us, self.use_gmf),
            self._rows(self.item_gmf, i, self.use_gmf),
            self._rows(self.user_proj, us, self.use_mlp),
            self._rows(self.item_proj, i, self.use_mlp),
        )
        score = torch.where(known, torch.sigmoid(logits), self.popularity[i])
        return score.reshape(-1, 1)


class TopK(_Network):
    """``USER__0`` int64 ``[B, 1]`` → ``ITEM__0`` int64 ``[B, K]``, ``SCORE__1`` float32 ``[B, K]``,
    ``COUNT__2`` int64 ``[B, 1]``: each user's best K items over the catalogue, seen items excluded (so
    only the first COUNT are answers; the rest are padding, item 0 with score 0). User -1 (unknown) gets
    the K most popular items with their normalised popularity, as ``Recommender.recommend_many``."""

    __constants__ = ("use_gmf", "use_mlp", "k", "chunk")

    def __init__(self, model: NCF, popularity: np.ndarray, indptr: np.ndarray, indices: np.ndarray, k: int):
        super().__init__(model, popularity)
        self.k = k
        self.chunk = TOPK_CHUNK
        self.register_buffer("indptr", torch.from_numpy(np.asarray(indptr, np.int64)))
        self.register_buffer("history", torch.from_numpy(np.asarray(indices, np.int32)))

    def forward(self, user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u = user.reshape(-1)
        known = u >= 0
        us = torch.clamp(u, min=0)
        items = torch.empty(u.shape[0], self.k, dtype=torch.long, device=u.device)
        scores = torch.empty(u.shape[0], self.k, dtype=torch.float32, device=u.device)
        counts = torch.empty(u.shape[0], dtype=torch.long, device=u.device)
        for start in range(0, u.shape[0], self.chunk):
            rows = us[start : start + self.chunk]
            logits = self.head(
                self.user_gmf[rows].unsqueeze(1) if self.use_gmf else self.user_gmf,
                self.item_gmf.unsqueeze(0) if self.use_gmf else self.item_gmf,
                self.user_proj[rows].unsqueeze(1) if self.use_mlp else self.user_proj,
                self.item_proj.unsqueeze(0) if self.use_mlp else self.item_proj,
            )
            # Seen items: the rows' CSR slices, flattened, set to -inf.
            lo = self.indptr[rows]
            lengths = self.indptr[rows + 1] - lo
            total = int(lengths.sum())
            if total > 0:
                owner = torch.repeat_interleave(torch.arange(rows.shape[0], device=u.device), lengths)
                first = torch.cumsum(lengths, 0) - lengths
                offset = torch.arange(total, device=u.device) - first[owner] + lo[owner]
                logits[owner, self.history[offset].long()] = float("-inf")
            # Stable sort: ties keep the lower index first, as Recommender's top_k does.
            best, order = torch.sort(logits, dim=1, descending=True, stable=True)
            best = best[:, : self.k]
            order = order[:, : self.k]
            finite = torch.isfinite(best)
            items[start : start + self.chunk] = torch.where(finite, order, torch.zeros_like(order))
            scores[start : start + self.chunk] = torch.where(
                finite, torch.sigmoid(best), torch.zeros_like(best)
            )
            counts[start : start + self.chunk] = finite.sum(1)
        popular = self.popular[: self.k]
        unknown = ~known
        items = torch.where(unknown.unsqueeze(1), popular.unsqueeze(0), items)
        scores = torch.where(unknown.unsqueeze(1), self.popularity[popular].unsqueeze(0), scores)
        counts = torch.where(unknown, torch.full_like(counts, self.k), counts)
        return items, scores, counts.reshape(-1, 1)


def script_pairs(art: artifact_io.Artifact) -> torch.jit.ScriptModule:
    return torch.jit.script(PairScores(art.model, art.item_popularity))


def script_topk(art: artifact_io.Artifact, k: int) -> torch.jit.ScriptModule:
    return torch.jit.script(TopK(art.model, art.item_popularity, art.history_indptr, art.history_indices, k))


# --------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's TYPE_*
    dims: tuple[int, ...]


def _tensors(kind: str, tensors: list[Tensor]) -> str:
    items = [
        f'  {{\n    name: "{t.name}"\n    data_type: {t.dtype}\n    dims: [ {", ".join(map(str, t.dims))} ]'
        + "\n  }"
        for t in tensors
    ]
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def model_config(
    name: str,
    max_batch_size: int,
    inputs: list[Tensor],
    outputs: list[Tensor],
    *,
    platform: str | None = None,
    backend: str | None = None,
    kind: str = "KIND_AUTO",
    parameters: dict[str, str] | None = None,
    steps: list[tuple[str, dict[str, str], dict[str, str]]] | None = None,
) -> str:
    """A ``config.pbtxt``. ``steps`` (model, {its input: ensemble tensor}, {its output: ensemble tensor})
    make it an ensemble (no instance group or batcher of its own: its steps have them)."""
    text = f'name: "{name}"\n'
    text += f'platform: "{platform}"\n' if platform else f'backend: "{backend}"\n'
    text += f"max_batch_size: {max_batch_size}\n"
    text += _tensors("input", inputs) + _tensors("output", outputs)
    if steps is None:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
        text += f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
    else:
        text += "ensemble_scheduling {\n  step [\n"
        rendered = []
        for model, in_map, out_map in steps:
            body = f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
            for key, value in in_map.items():
                body += f'      input_map {{ key: "{key}" value: "{value}" }}\n'
            for key, value in out_map.items():
                body += f'      output_map {{ key: "{key}" value: "{value}" }}\n'
            rendered.append(body + "    }")
        text += ",\n".join(rendered) + "\n  ]\n}\n"
    for key, value in (parameters or {}).items():
        text += f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    return text


def _id_type(ids: list) -> str:
    return "TYPE_INT64" if all(type(x) is int for x in ids) else "TYPE_STRING"


def _save_ids(path: Path, ids: list) -> None:
    """Raw ids by index as a plain .npy (int64, or unicode for string ids): numpy loads it without pickle."""
    array = (
        np.asarray(ids, dtype=np.int64) if all(type(x) is int for x in ids) else np.asarray(ids, dtype=str)
    )
    np.save(path, array, allow_pickle=False)


# --------------------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class Exported:
    repository: Path
    name: str
    k: int
    models: dict[str, list[str]]  # entry ensemble -> the models of its package (itself first)


def export(
    model_dir: str | Path, to: str | Path, name: str = DEFAULT_NAME, k: int = DEFAULT_TOP_K
) -> Exported:
    """Write the Triton model repository for the artifact at ``model_dir`` into ``to`` (created; the
    seven model directories are replaced if present, anything else there is left alone)."""
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ExportError(f"--name must be letters, digits, '_' or '-', got {name!r}")
    art = artifact_io.load(model_dir)
    n_items = art.config.num_items
    if not 1 <= k <= n_items:
        raise ExportError(f"--top-k must be between 1 and the model's {n_items} items, got {k}")
    repo = Path(to)
    users, topk, items = f"{name}_users", f"{name}_topk", f"{name}_items"
    scores, pair_ids, pairs = f"{name}_scores", f"{name}_pair_ids", f"{name}_pairs"
    user_t, item_t = _id_type(art.user_ids), _id_type(art.item_ids)
    for model in (name, users, topk, items, scores, pair_ids, pairs):
        shutil.rmtree(repo / model, ignore_errors=True)
        (repo / model / "1").mkdir(parents=True)  # an ensemble's version directory stays empty

    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated; it is still what the pytorch_libtorch backend runs
        # (docs/triton.md).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(script_topk(art, k), str(repo / topk / "1" / "model.pt"))
        torch.jit.save(script_pairs(art), str(repo / pairs / "1" / "model.pt"))
    for model, role in ((users, "users"), (items, "items"), (pair_ids, "pairs")):
        shutil.copyfile(PYTHON_MODEL, repo / model / "1" / "model.py")
        if role in ("users", "pairs"):
            _save_ids(repo / model / "1" / "user_ids.npy", art.user_ids)
        if role in ("items", "pairs"):
            _save_ids(repo / model / "1" / "item_ids.npy", art.item_ids)

    configs = {
        topk: model_config(
            topk,
            TOPK_MAX_BATCH,
            [Tensor("USER__0", "TYPE_INT64", (1,))],
            [
                Tensor("ITEM__0", "TYPE_INT64", (k,)),
                Tensor("SCORE__1", "TYPE_FP32", (k,)),
                Tensor("COUNT__2", "TYPE_INT64", (1,)),
            ],
            platform="pytorch_libtorch",
        ),
        pairs: model_config(
            pairs,
            PAIRS_MAX_BATCH,
            [Tensor("USER__0", "TYPE_INT64", (1,)), Tensor("ITEM__1", "TYPE_INT64", (1,))],
            [Tensor("SCORE__0", "TYPE_FP32", (1,))],
            platform="pytorch_libtorch",
        ),
        users: model_config(
            users,
            TOPK_MAX_BATCH,
            [Tensor("USER", user_t, (1,))],
            [Tensor("USER_INDEX", "TYPE_INT64", (1,)), Tensor("FALLBACK", "TYPE_BOOL", (1,))],
            backend="python",
            kind="KIND_CPU",
            parameters={"role": "users"},
        ),
        items: model_config(
            items,
            TOPK_MAX_BATCH,
            [Tensor("ITEM_INDEX", "TYPE_INT64", (k,)), Tensor("COUNT", "TYPE_INT64", (1,))],
            [Tensor("ITEMS", item_t, (k,))],
            backend="python",
            kind="KIND_CPU",
            parameters={"role": "items"},
        ),
        pair_ids: model_config(
            pair_ids,
            PAIRS_MAX_BATCH,
            [Tensor("USER", user_t, (1,)), Tensor("ITEM", item_t, (1,))],
            [
                Tensor("USER_INDEX", "TYPE_INT64", (1,)),
                Tensor("ITEM_INDEX", "TYPE_INT64", (1,)),
                Tensor("FALLBACK", "TYPE_BOOL", (1,)),
            ],
            backend="python",
            kind="KIND_CPU",
            parameters={"role": "pairs"},
        ),
        name: model_config(
            name,
            TOPK_MAX_BATCH,
            [Tensor("USER", user_t, (1,))],
            [
                Tensor("ITEMS", item_t, (k,)),
                Tensor("SCORES", "TYPE_FP32", (k,)),
                Tensor("COUNT", "TYPE_INT64", (1,)),
                Tensor("FALLBACK", "TYPE_BOOL", (1,)),
            ],
            platform="ensemble",
            steps=[
                (users, {"USER": "USER"}, {"USER_INDEX": "user_index", "FALLBACK": "FALLBACK"}),
                (
                    topk,
                    {"USER__0": "user_index"},
                    {"ITEM__0": "item_index", "SCORE__1": "SCORES", "COUNT__2": "COUNT"},
                ),
                (items, {"ITEM_INDEX": "item_index", "COUNT": "COUNT"}, {"ITEMS": "ITEMS"}),
            ],
        ),
        scores: model_config(
            scores,
            PAIRS_MAX_BATCH,
            [Tensor("USER", user_t, (1,)), Tensor("ITEM", item_t, (1,))],
            [Tensor("SCORE", "TYPE_FP32", (1,)), Tensor("FALLBACK", "TYPE_BOOL", (1,))],
            platform="ensemble",
            steps=[
                (
                    pair_ids,
                    {"USER": "USER", "ITEM": "ITEM"},
                    {"USER_INDEX": "user_index", "ITEM_INDEX": "item_index", "FALLBACK": "FALLBACK"},
                ),
                (pairs, {"USER__0": "user_index", "ITEM__1": "item_index"}, {"SCORE__0": "SCORE"}),
            ],
        ),
    }
    for model, text in configs.items():
        (repo / model / "config.pbtxt").write_text(text)
    log.info("exported %s (K=%d) to %s", name, k, repo)
    return Exported(repo, name, k, {name: [name, users, topk, items], scores: [scores, pair_ids, pairs]})


def write_packages(exported: Exported, out: str | Path) -> list[Path]:
    """One ``<entry>.tar.gz`` per entry ensemble, holding it and the models it runs at the archive's root:
    what a SageMaker multi-model endpoint extracts and loads (it loads the archive's ensemble)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry, models in exported.models.items():
        path = out / f"{entry}.tar.gz"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for model in models:
                tar.add(exported.repository / model, arcname=model)
        path.write_bytes(buffer.getvalue())
        written.append(path)
    return written
