"""The model artifact: a self-describing directory that rebuilds the exact network or refuses to load.

Layout (``FORMAT_VERSION`` 1)::

    ncf_config.json   format + version, ModelConfig, training settings, metrics, file sha256s
    model.pt          plain state_dict (no ``module.`` prefix), loaded with ``weights_only=True``
    id_maps.json      {"users": [raw ids by index], "items": [...]}
    interactions.npz  user history as CSR (indptr, indices) and item popularity (cold-start fallback)
    metrics.json      the metrics the kept epoch reached (for humans and CI)

Loading verifies every checksum, the format version, the id-map sizes and every tensor shape, and uses a
strict ``load_state_dict``: it never hands back a partly or randomly initialised model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import ArtifactError
from .jsonio import write_json
from .models import NCF, ModelConfig

log = logging.getLogger("ncf_core.artifact")

FORMAT_NAME = "ncf-artifact"
FORMAT_VERSION = 1
CONFIG_FILE = "ncf_config.json"
WEIGHTS_FILE = "model.pt"
ID_MAPS_FILE = "id_maps.json"
INTERACTIONS_FILE = "interactions.npz"
METRICS_FILE = "metrics.json"
DDP_PREFIX = "module."


@dataclass
class Artifact:
    model: NCF
    user_ids: list
    item_ids: list
    history_indptr: np.ndarray  # (num_users + 1,) int64
    history_indices: np.ndarray  # int32 item indices, sorted per user
    item_popularity: np.ndarray  # (num_items,) int64
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies without the ``module.`` prefix DistributedDataParallel adds."""
    return {
        (k[len(DDP_PREFIX) :] if k.startswith(DDP_PREFIX) else k): v.detach().to("cpu").clone()
        for k, v in state.items()
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(
    model_dir: str | Path,
    model: NCF,
    *,
    user_ids: list,
    item_ids: list,
    history: tuple[np.ndarray, np.ndarray],
    item_popularity: np.ndarray,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact into ``model_dir`` (created if needed); the config goes last, atomically."""
    cfg = model.config
    if len(user_ids) != cfg.num_users or len(item_ids) != cfg.num_items:
        raise ArtifactError(
            f"id maps ({len(user_ids)} users, {len(item_ids)} items) do not match the model "
            f"({cfg.num_users} users, {cfg.num_items} items)"
        )
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(clean_state_dict(model.state_dict()), out / WEIGHTS_FILE)
    (out / ID_MAPS_FILE).write_text(json.dumps({"users": list(user_ids), "items": list(item_ids)}))
    indptr, indices = history
    np.savez(
        out / INTERACTIONS_FILE,
        history_indptr=np.asarray(indptr, np.int64),
        history_indices=np.asarray(indices, np.int32),
        item_popularity=np.asarray(item_popularity, np.int64),
    )
    metrics = dict(metrics or {})
    write_json(out / METRICS_FILE, metrics)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ncf_core_version": __version__,
        "model": cfg.to_dict(),
        "training": dict(training or {}),
        "metrics": metrics,
        "files": {
            name: _sha256(out / name)
            for name in (WEIGHTS_FILE, ID_MAPS_FILE, INTERACTIONS_FILE, METRICS_FILE)
        },
    }
    write_json(out / CONFIG_FILE, config)
    log.info("saved %s artifact (%d users, %d items) to %s", cfg.model, cfg.num_users, cfg.num_items, out)
    return out


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} not found: {model_dir} is not an ncf_core model directory")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{path} is not an {FORMAT_NAME} config")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {version!r}; "
            f"this ncf_core {__version__} reads version {FORMAT_VERSION}"
        )
    return config


def is_artifact(model_dir: str | Path) -> bool:
    return (Path(model_dir) / CONFIG_FILE).is_file()


def load(model_dir: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Load and verify an artifact; raises ArtifactError with the reason on any mismatch."""
    root = Path(model_dir)
    config = read_config(root)
    for name, digest in config.get("files", {}).items():
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing")
        if _sha256(path) != digest:
            raise ArtifactError(f"{path} is corrupted: its sha256 does not match {CONFIG_FILE}")
    try:
        model_config = ModelConfig(**config["model"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"invalid model section in {root / CONFIG_FILE}: {exc}") from None
    try:
        state = torch.load(root / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for broken files
        raise ArtifactError(f"cannot read weights {root / WEIGHTS_FILE}: {exc}") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{root / WEIGHTS_FILE} does not hold a state_dict")
    state = clean_state_dict(state)
    model = NCF(model_config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"weights do not fit a {model_config.model} network: missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ArtifactError(
                f"weight {name} has shape {tuple(state[name].shape)}, config needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.to(device).eval()

    try:
        id_maps = json.loads((root / ID_MAPS_FILE).read_text())
        user_ids, item_ids = id_maps["users"], id_maps["items"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"cannot read id maps {root / ID_MAPS_FILE}: {exc}") from None
    if len(user_ids) != model_config.num_users or len(item_ids) != model_config.num_items:
        raise ArtifactError(
            f"id maps hold {len(user_ids)} users / {len(item_ids)} items, the model "
            f"{model_config.num_users} / {model_config.num_items}"
        )
    try:
        with np.load(root / INTERACTIONS_FILE, allow_pickle=False) as npz:
            indptr = npz["history_indptr"]
            indices = npz["history_indices"]
            popularity = npz["item_popularity"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot read {root / INTERACTIONS_FILE}: {exc}") from None
    if (
        indptr.shape != (model_config.num_users + 1,)
        or popularity.shape != (model_config.num_items,)
        or int(indptr[-1]) != len(indices)
        or (len(indices) and int(indices.max()) >= model_config.num_items)
    ):
        raise ArtifactError(f"{root / INTERACTIONS_FILE} does not match the model's user/item counts")
    return Artifact(
        model=model,
        user_ids=user_ids,
        item_ids=item_ids,
        history_indptr=indptr,
        history_indices=indices,
        item_popularity=popularity,
        metrics=config.get("metrics", {}),
        training=config.get("training", {}),
    )
