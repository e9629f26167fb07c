"""benchmarks/gpu_bench.py end to end on the CPU (``--smoke``): the GPU session runs this same code, so
it must work before a device is lent; and its pieces (windows spread over the epoch, the data's shape)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from benchmarks import gpu_bench
from tests.support.synthetic import write_ncf_files

ROOT = Path(__file__).resolve().parents[2]


def test_windows_are_spread_over_the_whole_epoch():
    assert gpu_bench.window_starts(1000, 10, 5) == [0, 247, 495, 742, 990]
    # When the windows cover the epoch, they are the epoch, consecutive.
    assert gpu_bench.window_starts(94, 30, 5) == [0, 19, 38, 57, 76]
    assert gpu_bench.window_starts(3, 1, 5) == [0, 1, 2]


def test_synthetic_data_has_ml20m_item_count_and_one_held_out_pair_per_user():
    data, history = gpu_bench.synthetic_data(20_000, seed=1)
    assert data.num_items == 26_744 and data.num_users == 138
    assert len(data.test) == data.num_users and len(data.train_users) == 20_000 - data.num_users
    keys = data.train_users.astype(np.int64) * data.num_items + data.train_items
    assert len(np.unique(keys)) == len(keys)
    # The history serving excludes is every known pair, as Interactions.history_csr makes it.
    indptr, indices = data.history_csr()
    assert np.array_equal(history["indptr"], indptr) and np.array_equal(history["indices"], indices)
    assert np.array_equal(history["popularity"], data.item_popularity())


def test_smoke_run_writes_every_figure(tmp_path):
    ml1m = tmp_path / "ml-1m"
    write_ncf_files(ml1m / "ml-1m")
    out = tmp_path / "out" / "gpu_bench.json"
    gpu_bench.main(
        [
            "--smoke",
            "--device=cpu",
            f"--ml1m={ml1m}",
            f"--out={out}",
            "--runs=nvidia_batch_tf32,default_bf16",
            "--budget-s=300",
        ]
    )
    result = json.loads(out.read_text())
    assert result["environment"]["torch"] and result["data"]["items"] == 26_744
    assert set(result["training"]) == {"nvidia_batch_tf32", "default_bf16"}
    for run in result["training"].values():
        assert "error" not in run, run
        assert run["samples_per_s"] > 0 and len(run["windows"]) >= 3
        assert run["windows"][-1]["first_step"] > run["windows"][0]["first_step"]  # not just the first steps
        slowest, fastest = run["slowest_window_samples_per_s"], run["fastest_window_samples_per_s"]
        assert slowest <= run["samples_per_s"] <= fastest
    assert result["vs_nvidia_a100"]["tf32_ratio"] is not None
    assert result["nvidia_a100_reference"]["tf32_samples_per_s"] == 22.59e6
    ml = result["ml1m"]
    assert "error" not in ml and ml["hr"] is not None and 0 <= ml["hr"] <= 1, ml
    top = result["top10"]
    assert top["recommender"]["users_per_s"] > 0 and top["device_batched"]["users_per_s"] > 0, top
    assert result["total_s"] < 300


def test_missing_ml1m_files_are_skipped_with_a_reason(tmp_path):
    assert "skipped" in gpu_bench.ml1m_check(None, "cpu", 1, 5.0)
    assert "not in" in gpu_bench.ml1m_check(tmp_path, "cpu", 1, 5.0)["skipped"]


def test_the_wrapper_leaves_a_json_reason_when_it_cannot_run(tmp_path):
    script = ROOT / "benchmarks" / "gpu_bench.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PYTHON": str(tmp_path / "no-python")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert json.loads((tmp_path / "gpu_bench.json").read_text())["error"].startswith("no python")
