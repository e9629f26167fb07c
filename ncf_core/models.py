"""GMF, MLP and NeuMF (He et al. 2017) as one module with a switch, so every variant shares one contract.

Sizes follow the paper: ``factor`` is the predictive factor (GMF embedding size and last MLP layer); the MLP
tower has ``num_layers`` layers halving from ``factor * 2**num_layers`` inputs, so its embeddings are
``factor * 2**(num_layers-1)`` wide.

Speed: the first MLP layer acts on ``concat(user_emb, item_emb)``, which equals
``W_u @ user_emb + W_i @ item_emb``. Each side is therefore projected once per *entity* (a table of
users/items) instead of once per *sample* whenever the batch is larger than the entity count — the same
maths and the same ``state_dict``, 3-4x fewer FLOPs on large batches, and at serving time the item side is
computed once at load.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig, check_network
from .errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in the artifact."""

    model: str
    num_users: int
    num_items: int
    factor: int = 32
    num_layers: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_network(self.model, self.factor, self.num_layers, self.dropout)  # TrainConfig's own check
        if self.num_users < 1 or self.num_items < 1:
            raise ConfigError("num_users and num_items must be positive")

    @classmethod
    def for_training(cls, config: TrainConfig, num_users: int, num_items: int) -> ModelConfig:
        """The network ``config`` trains on data with these many users and items."""
        return cls(config.model, num_users, num_items, config.factor, config.num_layers, config.dropout)

    @property
    def uses_gmf(self) -> bool:
        return self.model in ("gmf", "neumf")

    @property
    def uses_mlp(self) -> bool:
        return self.model in ("mlp", "neumf")

    @property
    def mlp_embedding_dim(self) -> int:
        return self.factor * 2 ** (self.num_layers - 1)

    def to_dict(self) -> dict:
        return asdict(self)


# A side (user or item) of the network: (GMF embedding or None, first-MLP-layer projection or None).
Side = tuple[torch.Tensor | None, torch.Tensor | None]
# Ids drawn per table row above which a side projects its whole table instead of the distinct ids: uniform
# draws then touch 1 - e^-3 = 95% of the rows anyway. Below it, the distinct ids are the cheaper set: an
# ML-20M step draws 32k of 26.7k items but touches ~70% of them, and projecting only those made its
# epoch 1.10x faster than projecting the whole table (benchmarks/scale_bench.py, 150 steps each).
WHOLE_TABLE_DRAWS = 3


def dedup_on(idx: torch.Tensor) -> bool:
    """Whether ``side`` projects the rows of the distinct ids (``torch.unique``) or each sample's rows.
    Not on CUDA: unique's output size is read back on the host, a wait for every queued kernel, and a
    GPU projects a sample's rows as fast as it finds the distinct ones."""
    return not idx.is_cuda


# (side, table: 0 GMF / 1 MLP, distinct ids) -> those rows of that table.
RowFetch = Callable[[int, int, torch.Tensor], torch.Tensor]


class NCF(nn.Module):
    """GMF, MLP or NeuMF scorer; ``forward`` returns logits (apply sigmoid for probabilities)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        if c.uses_gmf:
            self.embed_user_gmf = nn.Embedding(c.num_users, c.factor)
            self.embed_item_gmf = nn.Embedding(c.num_items, c.factor)
        if c.uses_mlp:
            dim = c.mlp_embedding_dim
            self.embed_user_mlp = nn.Embedding(c.num_users, dim)
            self.embed_item_mlp = nn.Embedding(c.num_items, dim)
            sizes = [c.factor * 2 ** (c.num_layers - k) for k in range(c.num_layers + 1)]
            self.mlp_layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        predict_in = c.factor * (int(c.uses_gmf) + int(c.uses_mlp))
        self.predict_layer = nn.Linear(predict_in, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: N(0, 0.01) embeddings, Xavier MLP, Kaiming for the output."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.01)
        if self.config.uses_mlp:
            for layer in self.mlp_layers:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.kaiming_uniform_(self.predict_layer.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict_layer.bias)

    def mlp_parameters(self) -> list[nn.Parameter]:
        """The MLP part (its embeddings and tower): it takes its own weight decay, since at GMF's it
        overfits on ML-1M (validation peaks at epoch 9 of 12) where GMF does not."""
        if not self.config.uses_mlp:
            return []
        return [self.embed_user_mlp.weight, self.embed_item_mlp.weight, *self.mlp_layers.parameters()]

    # ------------------------------------------------------------------ sides and head
    def embeddings(self, which: int) -> tuple[nn.Embedding | None, nn.Embedding | None]:
        """The (GMF, MLP) embedding tables of the user side (0) or the item side (1); None where unused."""
        names = ("embed_user_gmf", "embed_user_mlp") if which == 0 else ("embed_item_gmf", "embed_item_mlp")
        return getattr(self, names[0], None), getattr(self, names[1], None)

    def side_from_rows(
        self,
        gmf_rows: torch.Tensor | None,
        mlp_rows: torch.Tensor | None,
        index: torch.Tensor | None,
        which: int,
    ) -> Side:
        """A side from embedding rows and, per sample, the row it uses (None: one sample per row).

        The first MLP layer is applied to the rows, so an entity that occurs many times in a batch is
        projected once; the trainer passes the rows of a batch's distinct ids (their gradient is then
        all a row-sparse optimiser needs).
        """
        # Gathers go through ``embedding``: its backward (a dense scatter-add) was ~10x faster on CPU
        # than advanced indexing's (``index_put_`` with accumulate) at 32k samples a step.
        g = p = None
        if gmf_rows is not None:
            g = gmf_rows if index is None else F.embedding(index, gmf_rows)
        if mlp_rows is not None:
            first = self.mlp_layers[0]
            dim = self.config.mlp_embedding_dim
            w = first.weight[:, :dim] if which == 0 else first.weight[:, dim:]
            p = F.linear(mlp_rows, w, first.bias if which == 1 else None)
            if index is not None:
                p = F.embedding(index, p)
        return g, p

    def side(self, idx: torch.Tensor | None, which: int, fetch_rows: RowFetch | None = None) -> Side:
        """The user (0) or item (1) side for ids ``idx`` of any shape (all of them if None).

        ``fetch_rows(which, table, ids)`` returns the rows ``ids`` (distinct) of table 0 (GMF) or 1 (MLP)
        of that side; the default gathers them from the embedding weights, the trainer passes one that
        hands out leaves for row-sparse updates. Ids repeat (a positive and its negatives share a user), so
        the rows of the distinct ids are fetched and projected once.
        """
        tables = [None if e is None else e.weight for e in self.embeddings(which)]
        if idx is None:
            return self.side_from_rows(*tables, None, which)
        mlp = tables[1]
        if fetch_rows is None and (mlp is None or idx.numel() > WHOLE_TABLE_DRAWS * mlp.shape[0]):
            return self.side_from_rows(*tables, idx, which)  # nothing to project, or the whole table
        if fetch_rows is None and not dedup_on(idx):
            rows = [None if t is None else F.embedding(idx, t) for t in tables]
            return self.side_from_rows(*rows, None, which)  # each sample's rows, projected per sample
        distinct, index = torch.unique(idx, return_inverse=True)
        fetch = fetch_rows or (lambda _which, k, ids: F.embedding(ids, tables[k]))
        rows = [None if t is None else fetch(which, k, distinct) for k, t in enumerate(tables)]
        return self.side_from_rows(*rows, index, which)

    def user_side(self, users: torch.Tensor | None = None) -> Side:
        """User half of the network for ``users`` (all users if None)."""
        return self.side(users, 0)

    def item_side(self, items: torch.Tensor | None = None) -> Side:
        """Item half (first-layer bias included) for ``items`` (all items if None)."""
        return self.side(items, 1)

    def head(self, user: Side, item: Side) -> torch.Tensor:
        """Logits from a user side and an item side; broadcasts (one user against many items).

        The output layer is applied to the GMF and MLP parts apart (its weight split, no concatenation)
        and the ReLUs work in place: evaluation scores millions of pairs through here, and at ML-20M's
        13.8M test pairs the concatenation and the fresh ReLU outputs were a fifth of the time.
        """
        c = self.config
        weight, bias = self.predict_layer.weight, self.predict_layer.bias
        logits = None
        if c.uses_gmf:
            logits = F.linear(user[0] * item[0], weight[:, : c.factor], bias)
        if c.uses_mlp:
            h = F.relu(user[1] + item[1], inplace=True)
            for layer in self.mlp_layers[1:]:
                if self.training and c.dropout > 0:
                    h = F.dropout(h, c.dropout, training=True)
                h = F.relu(layer(h), inplace=True)
            if self.training and c.dropout > 0:
                h = F.dropout(h, c.dropout, training=True)
            mlp = F.linear(h, weight[:, -c.factor :], None if logits is not None else bias)
            logits = mlp if logits is None else logits + mlp
        assert logits is not None
        return logits.squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of the pairs; ``users`` broadcasts against ``items`` (``[P]`` against ``[G, P]`` scores
        each user's column of G items, and computes each user's side once)."""
        return self.head(self.user_side(users), self.item_side(items))


def neumf_from_pretrained(gmf: NCF, mlp: NCF, alpha: float = 0.5, dropout: float | None = None) -> NCF:
    """NeuMF initialised from trained GMF and MLP (the paper's pre-training, alpha weighs the two)."""
    g, m = gmf.config, mlp.config
    if g.model != "gmf" or m.model != "mlp":
        raise ConfigError(f"pre-training needs a GMF and an MLP model, got {g.model} and {m.model}")
    if (g.num_users, g.num_items) != (m.num_users, m.num_items):
        raise ConfigError("pre-trained GMF and MLP were trained on different user/item sets")
    if g.factor != m.factor:
        raise ConfigError(f"pre-trained GMF factor {g.factor} differs from MLP factor {m.factor}")
    config = ModelConfig(
        "neumf", g.num_users, g.num_items, g.factor, m.num_layers, m.dropout if dropout is None else dropout
    )
    model = NCF(config)
    with torch.no_grad():
        model.embed_user_gmf.weight.copy_(gmf.embed_user_gmf.weight)
        model.embed_item_gmf.weight.copy_(gmf.embed_item_gmf.weight)
        model.embed_user_mlp.weight.copy_(mlp.embed_user_mlp.weight)
        model.embed_item_mlp.weight.copy_(mlp.embed_item_mlp.weight)
        for dst, src in zip(model.mlp_layers, mlp.mlp_layers, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        model.predict_layer.weight.copy_(
            torch.cat([alpha * gmf.predict_layer.weight, (1 - alpha) * mlp.predict_layer.weight], dim=1)
        )
        model.predict_layer.bias.copy_(alpha * gmf.predict_layer.bias + (1 - alpha) * mlp.predict_layer.bias)
    return model
