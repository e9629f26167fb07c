from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ncf_core import artifact
from ncf_core.errors import ArtifactError
from ncf_core.jobs import train_to_artifact
from ncf_core.models import NCF, ModelConfig
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


def rewrite_file(m: Path, name: str, content: bytes) -> None:
    """Replace one artifact file and record its new checksum, as a careless or hostile edit would."""
    (m / name).write_bytes(content)
    rewrite_config(m, lambda c: c["files"].update({name: hashlib.sha256(content).hexdigest()}))


@pytest.mark.parametrize("name", artifact.CHECKSUMMED_FILES)
def test_every_needed_file_must_have_a_checksum(saved, tmp_path, name):
    m = copy(saved, tmp_path)
    data = bytearray((m / "model.pt").read_bytes())
    data[-100] ^= 0xFF  # with the model.pt entry gone, nothing else would notice
    (m / "model.pt").write_bytes(bytes(data))
    rewrite_config(m, lambda c: c["files"].pop(name))
    with pytest.raises(ArtifactError, match=re.escape(f"has no sha256 for {name} in 'files'")) as err:
        artifact.load(m)
    assert str(m / artifact.CONFIG_FILE) in str(err.value)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["model.pt"], "'files' must be an object mapping file names to sha256 digests, got a list"),
        (None, "'files' must be an object mapping file names to sha256 digests, got missing"),
        ("digest-of-everything", "got a str"),
    ],
)
def test_files_section_must_be_an_object(saved, tmp_path, files, message):
    m = copy(saved, tmp_path)
    rewrite_config(m, lambda c: c.update(files=files))
    with pytest.raises(ArtifactError, match=re.escape(message)):
        artifact.load(m)


@pytest.mark.parametrize("digest", [None, 123, ["abc"]])
def test_digest_must_be_a_string(saved, tmp_path, digest):
    m = copy(saved, tmp_path)
    rewrite_config(m, lambda c: c["files"].update({"model.pt": digest}))
    with pytest.raises(ArtifactError, match=re.escape("the sha256 of model.pt in 'files' is not a string")):
        artifact.load(m)


def test_files_entries_must_name_files_inside_the_artifact(saved, tmp_path):
    m = copy(saved, tmp_path)
    rewrite_config(m, lambda c: c["files"].update({"../outside.txt": "0" * 64}))
    with pytest.raises(ArtifactError, match="is not a file name in the artifact"):
        artifact.load(m)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(saved, tmp_path, bad):
    m = copy(saved, tmp_path)
    state = torch.load(m / "model.pt", weights_only=True)
    name = sorted(k for k, v in state.items() if v.is_floating_point())[-1]
    state[name].view(-1)[3] = bad
    buf = io.BytesIO()
    torch.save(state, buf)
    rewrite_file(m, "model.pt", buf.getvalue())
    with pytest.raises(ArtifactError, match=re.escape(f"weight {name} holds 1 NaN or infinite value")) as err:
        artifact.load(m)
    assert str(m / "model.pt") in str(err.value)


def rewrite_id_maps(m: Path, change) -> None:
    maps = json.loads((m / "id_maps.json").read_text())
    change(maps)
    rewrite_file(m, "id_maps.json", json.dumps(maps).encode())


@pytest.mark.parametrize("kind", ["users", "items"])
def test_duplicate_raw_ids_are_refused(saved, tmp_path, kind):
    m = copy(saved, tmp_path)
    maps = json.loads((m / "id_maps.json").read_text())
    dup = maps[kind][0]
    rewrite_id_maps(m, lambda d: d[kind].__setitem__(5, dup))
    with pytest.raises(
        ArtifactError, match=re.escape(f"'{kind}' holds the id {dup!r} more than once")
    ) as err:
        artifact.load(m)
    assert str(m / "id_maps.json") in str(err.value)


@pytest.mark.parametrize("bad", [1.5, 3.0, True, None, [1], {"id": 1}, 2**64])
@pytest.mark.parametrize("kind", ["users", "items"])
def test_ids_must_be_integers_or_strings(saved, tmp_path, kind, bad):
    m = copy(saved, tmp_path)
    rewrite_id_maps(m, lambda d: d[kind].__setitem__(2, bad))
    with pytest.raises(ArtifactError, match=re.escape(f"id_maps.json: '{kind}' holds the id")):
        artifact.load(m)


def test_id_map_must_be_a_list(saved, tmp_path):
    m = copy(saved, tmp_path)
    rewrite_id_maps(m, lambda d: d.update(items={str(i): i for i in range(len(d["items"]))}))
    with pytest.raises(ArtifactError, match="'items' must be a list of ids, not dict"):
        artifact.load(m)


def _break_indptr_order(h: dict) -> None:
    h["history_indptr"][5], h["history_indptr"][6] = h["history_indptr"][6], h["history_indptr"][5]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h["history_indices"].__setitem__(7, -1), "history_indices holds negative item index -1"),
        (lambda h: h["history_indptr"].__setitem__(0, 1), "history_indptr starts at 1, not 0"),
        (_break_indptr_order, "history_indptr decreases at user index 5"),
        (
            lambda h: h["item_popularity"].__setitem__(3, -2),
            "item_popularity is negative (-2) at item index 3",
        ),
        (
            lambda h: h.update(history_indices=h["history_indices"].astype(np.float32)),
            "history_indices has dtype float32",
        ),
        (
            lambda h: h.update(history_indptr=h["history_indptr"].astype(np.float64)),
            "history_indptr has dtype float64",
        ),
        (
            lambda h: h.update(item_popularity=h["item_popularity"].astype(bool)),
            "item_popularity has dtype bool",
        ),
    ],
)
def test_malformed_history_is_refused(saved, tmp_path, change, message):
    m = copy(saved, tmp_path)
    with np.load(m / "interactions.npz") as npz:
        history = {k: npz[k].copy() for k in npz.files}
    assert history["history_indptr"][6] > history["history_indptr"][5]  # the swap below breaks the order
    change(history)
    buf = io.BytesIO()
    np.savez(buf, **history)
    rewrite_file(m, "interactions.npz", buf.getvalue())
    with pytest.raises(ArtifactError, match=re.escape(message)) as err:
        artifact.load(m)
    assert str(m / "interactions.npz") in str(err.value)


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
