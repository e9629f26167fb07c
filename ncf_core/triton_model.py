"""Triton Python-backend model that maps the catalogue's raw ids to indices and back (numpy only).

``ncf_core.triton.export`` copies this file as ``<model>/1/model.py`` of three models; the ``role``
parameter of each one's ``config.pbtxt`` says which mapping it does, next to the id tables export wrote
beside it (``user_ids.npy`` / ``item_ids.npy``: raw ids by index, int64 or unicode):

- ``users``: ``USER`` (raw) → ``USER_INDEX`` (-1 for a user the model does not know) and ``FALLBACK``;
- ``items``: ``ITEM_INDEX`` ``[K]`` and ``COUNT`` → ``ITEMS`` (raw; positions past COUNT are padding:
  0, or the empty string for string ids);
- ``pairs``: ``USER``, ``ITEM`` (raw) → ``USER_INDEX`` (-1 unknown), ``ITEM_INDEX``, ``FALLBACK``; an item
  the model does not know fails the request with ``unknown item id ...`` (a 400), as ``Recommender`` does.

It runs in the Triton image's Python, which has numpy and nothing else of ours: it imports numpy and
``triton_python_backend_utils`` only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class IdTable:
    """Raw id ↔ index over a sorted copy of the raw ids (searchsorted: no per-id Python loop)."""

    def __init__(self, path: Path):
        self.raw = np.load(path, allow_pickle=False)
        self.numeric = self.raw.dtype.kind == "i"
        self.order = np.argsort(self.raw, kind="stable")
        self.sorted = self.raw[self.order]

    def indices(self, values: np.ndarray) -> np.ndarray:
        """Index of each raw id, -1 where unknown."""
        flat = values.reshape(-1)
        if self.numeric:
            keys = flat.astype(np.int64)
        else:
            keys = np.asarray(
                [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat], dtype=str
            )
        out = np.full(flat.shape[0], -1, dtype=np.int64)
        if len(self.sorted) == 0 or flat.shape[0] == 0:
            return out.reshape(values.shape)
        pos = np.searchsorted(self.sorted, keys)
        pos = np.minimum(pos, len(self.sorted) - 1)
        hit = self.sorted[pos] == keys
        out[hit] = self.order[pos[hit]]
        return out.reshape(values.shape)

    def raw_ids(self, indices: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Raw ids of ``indices`` ``[B, K]``; positions at or past each row's ``count`` are padding."""
        out = self.raw[indices]
        pad = np.arange(indices.shape[1])[None, :] >= count.reshape(-1, 1)
        if self.numeric:
            out = np.where(pad, 0, out).astype(np.int64)
        else:
            out = np.where(pad, "", out)
            out = np.asarray([s.encode("utf-8") for s in out.reshape(-1)], dtype=object).reshape(out.shape)
        return out


def _input(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def _error(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.role = config["parameters"]["role"]["string_value"]
        here = Path(args["model_repository"]) / args["model_version"]
        self.users = IdTable(here / "user_ids.npy") if self.role in ("users", "pairs") else None
        self.items = IdTable(here / "item_ids.npy") if self.role in ("items", "pairs") else None

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(str(exc))))
        return responses

    def _one(self, request):
        tensor = pb_utils.Tensor
        if self.role == "users":
            index = self.users.indices(_input(request, "USER"))
            return pb_utils.InferenceResponse([tensor("USER_INDEX", index), tensor("FALLBACK", index < 0)])
        if self.role == "items":
            items = self.items.raw_ids(_input(request, "ITEM_INDEX"), _input(request, "COUNT"))
            return pb_utils.InferenceResponse([tensor("ITEMS", items)])
        raw_items = _input(request, "ITEM")
        item = self.items.indices(raw_items)
        if (item < 0).any():
            bad = raw_items.reshape(-1)[int(np.argmax(item.reshape(-1) < 0))]
            bad = bad.decode("utf-8", "replace") if isinstance(bad, bytes) else bad.item()
            raise ValueError(f"unknown item id {bad!r}")
        user = self.users.indices(_input(request, "USER"))
        return pb_utils.InferenceResponse(
            [tensor("USER_INDEX", user), tensor("ITEM_INDEX", item), tensor("FALLBACK", user < 0)]
        )
