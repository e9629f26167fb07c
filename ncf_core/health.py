"""Is the network still alive? Shares of subnormal weights and of ReLU units that never fire.

Why it matters: a ReLU unit that is negative for every input gets no data gradient, so nothing but weight
decay moves its weights; and a weight that decays into the subnormal range makes every x86 multiply that
touches it ~100x slower (an ML-20M epoch once went from ~4 to ~25 minutes that way, with 85% of the first
MLP layer's units dead and HR@10 at 0.34). Training checks this at every epoch's end and warns
(``warn_if_dying``); ``network_health`` is also what the regression tests and the scale benchmark read.

Dead units are counted on random (user, item) pairs, uniform over both catalogues: a unit that fires for
none of them is dead for practical purposes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from .models import NCF

log = logging.getLogger("ncf_core.health")

HEALTH_PAIRS = 4096  # random pairs through the tower; a unit firing for 1 in 4,096 pairs counts as alive
DEAD_UNITS_WARN = 0.5  # warn when at least this share of a layer's ReLU units never fires
SUBNORMAL_WARN = 0.01  # ... or this share of a tensor's values is subnormal


@dataclass(frozen=True)
class TensorHealth:
    """One weight tensor (an embedding table or an MLP layer's weight) and, for MLP layers, its units."""

    name: str
    subnormal: float  # share of its values that are subnormal (non-zero, below the smallest normal)
    zero: float  # share of exact zeros (where flush-to-zero puts would-be subnormals)
    max_abs: float
    dead_units: float | None = None  # MLP layers: share of ReLU units firing for none of the random pairs

    def as_dict(self) -> dict[str, float | str | None]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


_BITS = {torch.float32: (torch.int32, 0x7FFFFFFF, 0x00800000), torch.float64: (torch.int64, 2**63 - 1, 2**52)}


def _magnitude_bits(t: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``t``'s bits without the sign, and the smallest normal's: read as integers, since with
    denormals-are-zero on (``runtime.flush_denormals``) float comparisons see a subnormal as 0."""
    if t.dtype not in _BITS:
        return None
    int_type, mask, smallest_normal = _BITS[t.dtype]
    return t.detach().contiguous().view(int_type) & mask, smallest_normal


def subnormal_share(t: torch.Tensor) -> float:
    """Share of ``t``'s values that are subnormal in its dtype."""
    if not t.is_floating_point() or t.numel() == 0:
        return 0.0
    bits = _magnitude_bits(t)
    if bits is None:
        a = t.detach().abs()
        return float(((a > 0) & (a < torch.finfo(t.dtype).tiny)).float().mean())
    magnitude, smallest_normal = bits
    return float(((magnitude > 0) & (magnitude < smallest_normal)).float().mean())


def zero_share(t: torch.Tensor) -> float:
    """Share of ``t``'s values that are exactly ±0."""
    bits = _magnitude_bits(t)
    return float(((bits[0] == 0) if bits is not None else (t == 0)).float().mean()) if t.numel() else 0.0


@torch.no_grad()
def dead_unit_shares(model: NCF, pairs: int = HEALTH_PAIRS, seed: int = 0) -> list[float]:
    """Per MLP layer, the share of its ReLU units that fire for none of ``pairs`` random (user, item)."""
    c = model.config
    if not c.uses_mlp:
        return []
    device = model.predict_layer.weight.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    users = torch.randint(c.num_users, (pairs,), generator=gen).to(device)
    items = torch.randint(c.num_items, (pairs,), generator=gen).to(device)
    h = torch.cat([model.embed_user_mlp.weight[users], model.embed_item_mlp.weight[items]], 1)
    shares = []
    for layer in model.mlp_layers:
        h = F.relu(layer(h))
        shares.append(float((h <= 0).all(0).float().mean()))
    return shares


@torch.no_grad()
def network_health(model: NCF, pairs: int = HEALTH_PAIRS, seed: int = 0) -> list[TensorHealth]:
    """Every embedding table and MLP layer weight, with its subnormal, zero and dead-unit shares."""
    # (name, weight, share of its units dead or None)
    tensors: list[tuple[str, torch.Tensor, float | None]] = []
    for which, side in ((0, "user"), (1, "item")):
        for part, table in zip(("gmf", "mlp"), model.embeddings(which), strict=True):
            if table is not None:
                tensors.append((f"embed_{side}_{part}", table.weight, None))
    dead = dead_unit_shares(model, pairs, seed)
    layers = model.mlp_layers if model.config.uses_mlp else []
    tensors += [(f"mlp_layers.{k}", layer.weight, dead[k]) for k, layer in enumerate(layers)]
    tensors.append(("predict_layer", model.predict_layer.weight, None))
    return [
        TensorHealth(name, subnormal_share(t), zero_share(t), float(t.abs().max()) if t.numel() else 0.0, d)
        for name, t, d in tensors
    ]


def dying(health: list[TensorHealth]) -> list[TensorHealth]:
    """The tensors past a warning threshold (subnormal values or dead units)."""
    return [
        h
        for h in health
        if h.subnormal >= SUBNORMAL_WARN or (h.dead_units is not None and h.dead_units >= DEAD_UNITS_WARN)
    ]


def warn_if_dying(health: list[TensorHealth], epoch: int) -> list[TensorHealth]:
    """Log one WARNING naming the layers of ``health`` past a threshold (returns them); silent for a
    healthy network."""
    bad = dying(health)
    if bad:
        parts = [
            f"{h.name} ({h.subnormal:.0%} subnormal"
            + (f", {h.dead_units:.0%} of units never fire" if h.dead_units is not None else "")
            + ")"
            for h in bad
        ]
        log.warning(
            "after epoch %d the network is dying: %s; a lower lr, less weight decay or fewer epochs may help",
            epoch,
            "; ".join(parts),
        )
    return bad
