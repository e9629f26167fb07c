"""What a training job leaves in ``output/data``: per-epoch metrics, the final report, a learning curve.
The JSON ones are written with ``ncf_core.jsonio.write_json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("ncf_sagemaker.training.reports")

METRICS_FILE = "metrics.json"
REPORT_FILE = "evaluation.json"
CURVE_FILE = "learning_curve.png"


def write_learning_curve(path: Path, history: list[dict[str, Any]], best_epoch: int) -> bool:
    """Loss and HR/NDCG per epoch as a PNG; False (logged) if matplotlib is unavailable."""
    if not history:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no learning curve")
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_rank) = plt.subplots(1, 2, figsize=(10, 4))
    trained = [h for h in history if "loss" in h]  # epoch 0 (a pre-trained start) has no loss
    ax_loss.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], marker="o")
    ax_loss.set(title="training loss (BCE)", xlabel="epoch")
    for key, style in (("val_hr", "-o"), ("val_ndcg", "-s"), ("hr", "--o"), ("ndcg", "--s")):
        if key in history[0]:
            ax_rank.plot(epochs, [h[key] for h in history], style, label=key)
    ax_rank.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch {best_epoch}")
    ax_rank.set(title="HR@K / NDCG@K (val_: validation, else test)", xlabel="epoch")
    ax_rank.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True
