"""ncf_core: neural collaborative filtering (He et al., WWW'17) — data, models, training, evaluation,
artifacts and inference. Knows nothing of HTTP, Docker or AWS; the containers adapt to it."""

__version__ = "0.1.0"
