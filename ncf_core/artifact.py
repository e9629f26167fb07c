"""The model artifact: a self-describing directory that rebuilds the exact network or refuses to load.

Layout (``FORMAT_VERSION`` 1)::

    ncf_config.json   format + version, ModelConfig, training settings, metrics, file sha256s
    model.pt          plain state_dict (no ``module.`` prefix), loaded with ``weights_only=True``
    id_maps.json      {"users": [raw ids by index], "items": [...]}
    interactions.npz  user history as CSR (indptr, indices) and item popularity (cold-start fallback)
    metrics.json      the metrics the kept epoch reached (for humans and CI)

Loading verifies the format version and the checksum of every file above (a file without one in
``ncf_config.json`` is refused: the config cannot opt a file out), every tensor's shape and that its values
are finite, that the id maps hold distinct integer or string ids, and that the history is a well-formed
CSR over the model's items; it uses a strict ``load_state_dict`` and never hands back a partly or randomly
initialised model.
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
CHECKSUMMED_FILES = (WEIGHTS_FILE, ID_MAPS_FILE, INTERACTIONS_FILE, METRICS_FILE)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


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
        "files": {name: _sha256(out / name) for name in CHECKSUMMED_FILES},
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


def _verify_checksums(root: Path, config: dict[str, Any]) -> None:
    """Every file the artifact needs has a sha256 in the config, and every listed file matches its own."""
    config_path = root / CONFIG_FILE
    files = config.get("files")
    if not isinstance(files, dict):
        got = "missing" if files is None else f"a {type(files).__name__}"
        raise ArtifactError(
            f"{config_path}: 'files' must be an object mapping file names to sha256 digests, got {got}"
        )
    for name in CHECKSUMMED_FILES:
        if name not in files:
            raise ArtifactError(
                f"{config_path} has no sha256 for {name} in 'files': every artifact file must be checksummed"
            )
    for name, digest in files.items():
        if Path(name).name != name or name in (".", ".."):
            raise ArtifactError(f"{config_path}: 'files' entry {name!r} is not a file name in the artifact")
        if not isinstance(digest, str):
            raise ArtifactError(f"{config_path}: the sha256 of {name} in 'files' is not a string: {digest!r}")
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing")
        if _sha256(path) != digest:
            raise ArtifactError(f"{path} is corrupted: its sha256 does not match {CONFIG_FILE}")


def _check_state(path: Path, state: dict, expected: dict[str, torch.Tensor], model_name: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"{path}: weights do not fit a {model_name} network: missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ArtifactError(
                f"{path}: weight {name} has shape {tuple(state[name].shape)}, "
                f"config needs {tuple(tensor.shape)}"
            )
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ArtifactError(
                f"{path}: weight {name} holds {bad} NaN or infinite value(s) of {tensor.numel()}"
            )


def _check_ids(path: Path, kind: str, ids: Any) -> None:
    """A list of distinct raw ids, each a string or a 64-bit integer (no bool, float, null or nesting)."""
    if not isinstance(ids, list):
        raise ArtifactError(f"{path}: '{kind}' must be a list of ids, not {type(ids).__name__}")
    ints = [x for x in ids if type(x) is int]
    if len(ints) + sum(type(x) is str for x in ids) != len(ids):
        bad = next(x for x in ids if type(x) not in (int, str))
        raise ArtifactError(
            f"{path}: '{kind}' holds the id {bad!r} ({type(bad).__name__}); ids must be integers or strings"
        )
    if ints and (min(ints) < _INT64_MIN or max(ints) > _INT64_MAX):
        bad = next(x for x in ints if not _INT64_MIN <= x <= _INT64_MAX)
        raise ArtifactError(f"{path}: '{kind}' holds the id {bad}, outside the 64-bit integer range")
    if len(set(ids)) != len(ids):
        seen: set = set()
        dup = next(x for x in ids if x in seen or seen.add(x))
        raise ArtifactError(f"{path}: '{kind}' holds the id {dup!r} more than once; raw ids must be distinct")


def _check_history(
    path: Path, indptr: np.ndarray, indices: np.ndarray, popularity: np.ndarray, config: ModelConfig
) -> None:
    """The history is a CSR over the model's users and items, and popularity a count per item."""
    for name, array in (
        ("history_indptr", indptr),
        ("history_indices", indices),
        ("item_popularity", popularity),
    ):
        if array.dtype.kind not in "iu":
            raise ArtifactError(f"{path}: {name} has dtype {array.dtype}, not an integer type")
    if (
        indptr.shape != (config.num_users + 1,)
        or indices.ndim != 1
        or popularity.shape != (config.num_items,)
        or int(indptr[-1]) != len(indices)
        or (len(indices) and int(indices.max()) >= config.num_items)
    ):
        raise ArtifactError(f"{path} does not match the model's user/item counts")
    if int(indptr[0]) != 0:
        raise ArtifactError(f"{path}: history_indptr starts at {int(indptr[0])}, not 0")
    drops = np.diff(indptr.astype(np.int64)) < 0
    if drops.any():
        user = int(np.argmax(drops))
        raise ArtifactError(f"{path}: history_indptr decreases at user index {user} (it must not decrease)")
    if len(indices) and int(indices.min()) < 0:
        raise ArtifactError(f"{path}: history_indices holds negative item index {int(indices.min())}")
    if len(popularity) and int(popularity.min()) < 0:
        item = int(np.argmin(popularity))
        raise ArtifactError(
            f"{path}: item_popularity is negative ({int(popularity[item])}) at item index {item}"
        )


def load(model_dir: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Load and verify an artifact; raises ArtifactError with the reason on any mismatch."""
    root = Path(model_dir)
    config = read_config(root)
    _verify_checksums(root, config)
    try:
        model_config = ModelConfig(**config["model"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"invalid model section in {root / CONFIG_FILE}: {exc}") from None
    weights = root / WEIGHTS_FILE
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for broken files
        raise ArtifactError(f"cannot read weights {weights}: {exc}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ArtifactError(f"{weights} does not hold a state_dict")
    state = clean_state_dict(state)
    model = NCF(model_config)
    _check_state(weights, state, model.state_dict(), model_config.model)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()

    id_path = root / ID_MAPS_FILE
    try:
        id_maps = json.loads(id_path.read_text())
        user_ids, item_ids = id_maps["users"], id_maps["items"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"cannot read id maps {id_path}: {exc}") from None
    _check_ids(id_path, "users", user_ids)
    _check_ids(id_path, "items", item_ids)
    if len(user_ids) != model_config.num_users or len(item_ids) != model_config.num_items:
        raise ArtifactError(
            f"id maps hold {len(user_ids)} users / {len(item_ids)} items, the model "
            f"{model_config.num_users} / {model_config.num_items}"
        )
    history_path = root / INTERACTIONS_FILE
    try:
        with np.load(history_path, allow_pickle=False) as npz:
            indptr = npz["history_indptr"]
            indices = npz["history_indices"]
            popularity = npz["item_popularity"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot read {history_path}: {exc}") from None
    _check_history(history_path, indptr, indices, popularity, model_config)
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
