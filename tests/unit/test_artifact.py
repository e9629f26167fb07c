from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ncf_core import artifact
from ncf_core.errors import ArtifactError
from ncf_core.models import NCF, ModelConfig
from ncf_core.pipeline import train_to_artifact
from ncf_core.training import TrainConfig
from tests.support.synthetic import SMALL_DATA

CFG = TrainConfig(factor=8, num_layers=2, epochs=2, batch_size=512, lr=0.01, **SMALL_DATA)


@pytest.fixture(scope="module")
def saved(planted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "model"
    train_to_artifact(planted, CFG, out)
    return out


def copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "m"))


def test_round_trip_restores_the_same_network(saved, planted):
    art = artifact.load(saved)
    assert art.config == ModelConfig("neumf", planted.num_users, planted.num_items, 8, 2, 0.0)
    assert art.user_ids == planted.user_ids and art.item_ids == planted.item_ids
    assert art.item_popularity.sum() == 240 * 12
    assert set(art.metrics) >= {"hr", "ndcg", "val_hr", "val_ndcg", "best_epoch"}
    state = torch.load(saved / artifact.WEIGHTS_FILE, weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    u, i = torch.arange(10), torch.arange(10)
    assert torch.equal(art.model(u, i), artifact.load(saved).model(u, i))


def test_config_is_self_describing(saved):
    config = json.loads((saved / artifact.CONFIG_FILE).read_text())
    assert config["format_version"] == artifact.FORMAT_VERSION
    assert config["model"]["model"] == "neumf" and config["training"]["config"]["lr"] == CFG.lr
    assert set(config["files"]) == {"model.pt", "id_maps.json", "interactions.npz", "metrics.json"}


def test_corrupted_weights_are_refused(saved, tmp_path):
    m = copy(saved, tmp_path)
    data = bytearray((m / "model.pt").read_bytes())
    data[-100] ^= 0xFF
    (m / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupted"):
        artifact.load(m)


def test_missing_file_is_refused(saved, tmp_path):
    m = copy(saved, tmp_path)
    (m / "id_maps.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        artifact.load(m)


def rewrite_config(m: Path, change) -> None:
    config = json.loads((m / artifact.CONFIG_FILE).read_text())
    change(config)
    (m / artifact.CONFIG_FILE).write_text(json.dumps(config))


def test_shape_mismatch_is_refused(saved, tmp_path):
    m = copy(saved, tmp_path)
    rewrite_config(m, lambda c: c["model"].update(factor=16))
    with pytest.raises(ArtifactError, match="shape"):
        artifact.load(m)


def test_other_model_type_is_refused(saved, tmp_path):
    m = copy(saved, tmp_path)
    rewrite_config(m, lambda c: c["model"].update(model="gmf"))
    with pytest.raises(ArtifactError, match="do not fit a gmf network"):
        artifact.load(m)


def test_future_format_version_is_refused(saved, tmp_path):
    m = copy(saved, tmp_path)
    rewrite_config(m, lambda c: c.update(format_version=99))
    with pytest.raises(ArtifactError, match="format_version 99"):
        artifact.load(m)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not an ncf_core model directory"):
        artifact.load(tmp_path)
    (tmp_path / artifact.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifact.load(tmp_path)


def test_ddp_prefix_is_stripped_on_save():
    model = NCF(ModelConfig("gmf", 3, 4, factor=2))
    wrapped = {"module." + k: v for k, v in model.state_dict().items()}
    assert set(artifact.clean_state_dict(wrapped)) == set(model.state_dict())


def test_id_maps_must_match_model(tmp_path):
    model = NCF(ModelConfig("gmf", 3, 4, factor=2))
    with pytest.raises(ArtifactError, match="id maps"):
        artifact.save(
            tmp_path,
            model,
            user_ids=[1, 2],
            item_ids=[1, 2, 3, 4],
            history=(torch.zeros(4, dtype=torch.long).numpy(), torch.zeros(0).numpy()),
            item_popularity=torch.zeros(4).numpy(),
        )


def test_pretrained_neumf_from_artifacts(planted, tmp_path):
    gmf = train_to_artifact(planted, replace(CFG, model="gmf", epochs=6), tmp_path / "pre" / "gmf")
    mlp = train_to_artifact(planted, replace(CFG, model="mlp", epochs=6), tmp_path / "pre" / "mlp")
    cfg = replace(CFG, epochs=1, pretrain_dir=str(tmp_path / "pre"), lr=0.001)
    result = train_to_artifact(planted, cfg, tmp_path / "neumf")
    # One gentle epoch from the pre-trained halves keeps (at least roughly) what they learned.
    assert result.test.hr >= 0.9 * max(gmf.test.hr, mlp.test.hr) > 0.5
    assert artifact.load(tmp_path / "neumf").config.model == "neumf"
