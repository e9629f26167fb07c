"""The optional ``gmf`` and ``mlp`` channels: pre-trained halves for a NeuMF job (the paper's pre-training).

Point each channel at an earlier job's ``model.tar.gz`` (its S3 URI as the channel's source) or at an
unpacked artifact directory. Channels are read-only input, so archives are unpacked to a private temporary
directory, never next to them.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ncf_core import artifact
from ncf_core.config import check_pretraining
from ncf_core.errors import ConfigError, DataError

from .. import contract
from ..archives import extract_tar

log = logging.getLogger("ncf_sagemaker.training.pretrained")


def prepare(model: str) -> Path | None:
    """A directory holding ``gmf/`` and ``mlp/`` artifacts (``pretrain_dir``'s layout: a part per channel,
    named as it) when both channels are given, else None."""
    given = {name: contract.channel_dir(name) for name in contract.PRETRAIN_CHANNELS}
    given = {name: path for name, path in given.items() if path.is_dir()}
    if not given:
        return None
    missing = [name for name in contract.PRETRAIN_CHANNELS if name not in given]
    if missing:
        raise ConfigError(
            f"pre-training needs both the {' and '.join(contract.PRETRAIN_CHANNELS)} channels; "
            f"{', '.join(missing)} is missing"
        )
    check_pretraining(model)  # before anything is unpacked
    root = Path(tempfile.mkdtemp(prefix="ncf-pretrain-"))
    for name, channel in given.items():
        _place_artifact(channel, root / name)
        log.info("pre-trained %s from channel %s", name, channel)
    return root


def _place_artifact(channel: Path, dest: Path) -> None:
    if (channel / artifact.CONFIG_FILE).is_file():
        dest.symlink_to(channel.resolve(), target_is_directory=True)
        return
    archives = sorted(channel.glob("*.tar.gz"))
    if len(archives) != 1:
        raise DataError(
            f"expected an artifact ({artifact.CONFIG_FILE} ...) or exactly one model.tar.gz, "
            f"found {len(archives)} archive(s)",
            channel,
        )
    extract_tar(archives[0], dest)
    if not (dest / artifact.CONFIG_FILE).is_file():
        raise DataError(f"{archives[0].name} holds no {artifact.CONFIG_FILE} at its top level", channel)
