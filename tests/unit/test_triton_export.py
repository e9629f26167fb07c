"""``ncf_core.triton``: the exported repository's layout and configs, and its TorchScript networks checked
in-process against the network and ``Recommender`` (tests/serving/test_triton.py runs a real server)."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ncf_core import artifact as artifact_io
from ncf_core.inference import Recommender
from ncf_core.triton import PAIRS_MAX_BATCH, TOPK_MAX_BATCH, ExportError, export, write_packages
from ncf_launch.triton_deploy import read_package, read_repository
from tests.support.paths import ROOT
from tests.support.triton import random_artifact

K = 5
TORCH_TYPES = {"TYPE_INT64": torch.int64, "TYPE_FP32": torch.float32}


def parse_config(text: str) -> dict:
    """The fields of a config.pbtxt these tests check (the format ``ncf_core.triton.model_config`` writes)."""

    def tensors(kind: str) -> list[tuple[str, str, tuple[int, ...]]]:
        block = re.search(rf"^{kind} \[\n(.*?)^\]", text, re.S | re.M)
        assert block, f"no {kind} block"
        return [
            (name, dtype, tuple(int(d) for d in dims.split(",")))
            for name, dtype, dims in re.findall(
                r'name: "(\w+)"\n\s+data_type: (\w+)\n\s+dims: \[ ([-\d, ]+) \]', block.group(1)
            )
        ]

    steps = [
        (
            model,
            dict(re.findall(r'input_map \{ key: "(\w+)" value: "(\w+)" \}', body)),
            dict(re.findall(r'output_map \{ key: "(\w+)" value: "(\w+)" \}', body)),
        )
        for model, body in re.findall(r'model_name: "(\w+)"\n(.*?)\n    \}', text, re.S)
    ]
    return {
        "name": re.search(r'^name: "(\w+)"', text, re.M).group(1),
        "platform": (re.search(r'^platform: "(\w+)"', text, re.M) or [None, None])[1],
        "backend": (re.search(r'^backend: "(\w+)"', text, re.M) or [None, None])[1],
        "max_batch_size": int(re.search(r"^max_batch_size: (\d+)", text, re.M).group(1)),
        "input": tensors("input"),
        "output": tensors("output"),
        "dynamic_batching": "dynamic_batching {" in text,
        "kind": (re.search(r"kind: (\w+)", text) or [None, None])[1],
        "steps": steps,
    }


@pytest.fixture(scope="module")
def numeric(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("triton-numeric")
    art = random_artifact(root / "model")
    export(art, root / "repo", "ncf", K)
    return art, root / "repo"


def configs(repo: Path) -> dict[str, dict]:
    return {p.parent.name: parse_config(p.read_text()) for p in sorted(repo.glob("*/config.pbtxt"))}


def test_layout_backends_batching_and_int64_ids(numeric):
    _, repo = numeric
    cfg = configs(repo)
    assert set(cfg) == {
        "ncf",
        "ncf_users",
        "ncf_topk",
        "ncf_items",
        "ncf_scores",
        "ncf_pair_ids",
        "ncf_pairs",
    }
    for name, c in cfg.items():
        assert c["name"] == name and (repo / name / "1").is_dir()
        assert c["max_batch_size"] in (TOPK_MAX_BATCH, PAIRS_MAX_BATCH)
        if c["platform"] == "ensemble":
            assert not c["dynamic_batching"] and c["kind"] is None
            continue
        assert c["dynamic_batching"], name
        if c["platform"] == "pytorch_libtorch":
            assert c["kind"] == "KIND_AUTO"  # the GPU where there is one, else the CPU
            assert (repo / name / "1" / "model.pt").is_file()
        else:
            assert c["backend"] == "python" and c["kind"] == "KIND_CPU"
            assert (repo / name / "1" / "model.py").read_text() == (
                ROOT / "ncf_core" / "triton_model.py"
            ).read_text()
        # No int32 anywhere: ids and indices are int64.
        assert all(t[1] != "TYPE_INT32" for t in c["input"] + c["output"])
    assert [t[1] for t in cfg["ncf"]["input"]] == ["TYPE_INT64"]
    assert {t[0]: t[1:] for t in cfg["ncf"]["output"]} == {
        "ITEMS": ("TYPE_INT64", (K,)),
        "SCORES": ("TYPE_FP32", (K,)),
        "COUNT": ("TYPE_INT64", (1,)),
        "FALLBACK": ("TYPE_BOOL", (1,)),
    }
    users = np.load(repo / "ncf_users" / "1" / "user_ids.npy")
    assert users.dtype == np.int64 and users.tolist() == artifact_io.load(numeric[0]).user_ids


def test_ensembles_are_wired_consistently(numeric):
    """Every ensemble tensor has one type and shape across the ensemble and the steps that produce and
    consume it; every step input is an ensemble input or an earlier step's output (Triton checks the
    same at load: tests/serving/test_triton.py)."""
    _, repo = numeric
    cfg = configs(repo)
    for entry in ("ncf", "ncf_scores"):
        ens = cfg[entry]
        known = {name: (dtype, dims) for name, dtype, dims in ens["input"]}
        for model, in_map, out_map in ens["steps"]:
            step = cfg[model]
            assert step["max_batch_size"] >= ens["max_batch_size"]
            inputs = {n: (d, s) for n, d, s in step["input"]}
            outputs = {n: (d, s) for n, d, s in step["output"]}
            assert set(in_map) == set(inputs), model
            for key, tensor in in_map.items():
                assert known[tensor] == inputs[key], (model, key)
            for key, tensor in out_map.items():
                assert known.setdefault(tensor, outputs[key]) == outputs[key], (model, key)
        for name, dtype, dims in ens["output"]:
            assert known[name] == (dtype, dims), (entry, name)


@pytest.mark.parametrize("batch", [1, 5, TOPK_MAX_BATCH])
def test_config_shapes_and_types_are_what_the_networks_return(numeric, batch):
    _, repo = numeric
    for model in ("ncf_topk", "ncf_pairs"):
        c = configs(repo)[model]
        module = torch.jit.load(str(repo / model / "1" / "model.pt"))
        args = [torch.zeros((batch, *dims), dtype=TORCH_TYPES[dtype]) for _, dtype, dims in c["input"]]
        out = module(*args)
        out = out if isinstance(out, tuple) else (out,)
        assert len(out) == len(c["output"]), model
        for tensor, (name, dtype, dims) in zip(out, c["output"], strict=True):
            assert tensor.dtype == TORCH_TYPES[dtype], (model, name)
            assert tuple(tensor.shape) == (batch, *dims), (model, name)


def _check_networks(art_dir: Path, repo: Path, device: str = "cpu") -> None:
    art = artifact_io.load(art_dir)
    net = art.model.eval()
    rec = Recommender(art, backend="torch")
    topk = torch.jit.load(str(repo / "ncf_topk" / "1" / "model.pt"), map_location=device)
    pairs = torch.jit.load(str(repo / "ncf_pairs" / "1" / "model.pt"), map_location=device)
    n_users, n_items = art.config.num_users, art.config.num_items
    rng = np.random.default_rng(0)
    pop = art.item_popularity / art.item_popularity.max()
    for length in (1, 7, 300):  # any length in-process (Triton caps a request at max_batch_size)
        u = rng.integers(-1, n_users, length)
        i = rng.integers(0, n_items, length)
        got = pairs(torch.tensor(u)[:, None].to(device), torch.tensor(i)[:, None].to(device)).cpu()
        with torch.no_grad():
            want = torch.sigmoid(net(torch.tensor(np.maximum(u, 0)), torch.tensor(i))).numpy()
        want = np.where(u >= 0, want, pop[i])
        np.testing.assert_allclose(got.numpy()[:, 0], want, atol=1e-5, rtol=0)
    users = [0, 1, 2, n_users - 1, -1, 5]
    items, scores, counts = (t.cpu() for t in topk(torch.tensor(users)[:, None].to(device)))
    raw = [art.user_ids[u] if u >= 0 else "nobody" for u in users]
    for row, want in enumerate(rec.recommend_many(raw, k=K)):
        n = int(counts[row, 0])
        assert [art.item_ids[j] for j in items[row, :n].tolist()] == want.items, row
        np.testing.assert_allclose(scores[row, :n].numpy(), want.scores, atol=1e-5, rtol=0)
        assert (scores[row, n:] == 0).all() and (items[row, n:] == 0).all()
    assert int(counts[0, 0]) == 2  # user 0 has seen all items but two


@pytest.mark.parametrize("variant", ["gmf", "mlp", "neumf"])
def test_torchscript_matches_the_network_and_recommender(tmp_path, variant):
    art = random_artifact(tmp_path / "model", variant)
    export(art, tmp_path / "repo", "ncf", K)
    _check_networks(art, tmp_path / "repo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torchscript_on_cuda(numeric):
    _check_networks(*numeric, device="cuda")


def test_string_ids_travel_as_bytes(tmp_path):
    art = random_artifact(tmp_path / "model", string_ids=True)
    export(art, tmp_path / "repo", "shop", K)
    cfg = configs(tmp_path / "repo")
    assert cfg["shop"]["input"] == [("USER", "TYPE_STRING", (1,))]
    assert ("ITEMS", "TYPE_STRING", (K,)) in cfg["shop"]["output"]
    assert cfg["shop_scores"]["input"] == [("USER", "TYPE_STRING", (1,)), ("ITEM", "TYPE_STRING", (1,))]
    items = np.load(tmp_path / "repo" / "shop_items" / "1" / "item_ids.npy", allow_pickle=False)
    assert items.dtype.kind == "U" and items[0] == "i0"


def test_packages_hold_one_ensemble_and_its_steps(numeric, tmp_path):
    art, _ = numeric
    exported = export(art, tmp_path / "repo", "ncf", K)
    paths = write_packages(exported, tmp_path / "pkg")
    assert [p.name for p in paths] == ["ncf.tar.gz", "ncf_scores.tar.gz"]
    for path in paths:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            roots = sorted({n.split("/")[0] for n in names})
            configs_ = {
                n.split("/")[0]: tar.extractfile(n).read().decode() for n in names if n.endswith(".pbtxt")
            }
        # SageMaker's multi-model loader picks the archive's one `platform: "ensemble"` directory.
        ensembles = [r for r, text in configs_.items() if 'platform: "ensemble"' in text]
        assert ensembles == [path.name.removesuffix(".tar.gz")]
        steps = {m for m, _, _ in parse_config(configs_[ensembles[0]])["steps"]}
        assert set(roots) == steps | set(ensembles)
        # deploy.sh --server triton's own checks (run before any AWS call) accept what export writes.
        assert read_package(path)[0] == ensembles[0]
    assert read_repository(tmp_path / "repo", "ncf_scores")[0] == "ncf_scores"


def test_bad_name_and_k_are_refused(numeric, tmp_path):
    art, _ = numeric
    with pytest.raises(ExportError, match="--top-k"):
        export(art, tmp_path / "r", "ncf", 31)
    with pytest.raises(ExportError, match="--name"):
        export(art, tmp_path / "r", "a/b", K)


def test_cli_export(numeric, tmp_path):
    art, _ = numeric
    args = ["--model-dir", str(art), "--to", str(tmp_path / "repo"), "--name", "m1", "--top-k", "3"]
    proc = subprocess.run(
        [sys.executable, "-m", "ncf_core", "export", *args, "--packages", str(tmp_path / "pkg")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "repo" / "m1_topk" / "1" / "model.pt").is_file()
    assert (tmp_path / "pkg" / "m1.tar.gz").is_file() and (tmp_path / "pkg" / "m1_scores.tar.gz").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "ncf_core", "export", *args[:-1], "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--top-k must be between 1" in bad.stderr
