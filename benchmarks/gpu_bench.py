"""One GPU session's figures, in one JSON file: training samples/s at ML-20M's shape, an ML-1M accuracy
check and all-items top-10 users/s, beside NVIDIA's A100 reference.

    python -m benchmarks.gpu_bench --out gpu_bench.json             # the GPU run (benchmarks/gpu_bench.sh)
    python -m benchmarks.gpu_bench --smoke --out /tmp/smoke.json    # same code path on a CPU, in seconds

(from the repository root). The phases, each under its own time cap, inside one budget (``--budget-s``,
default 420 s, so that the whole run stays under 8 minutes with start-up); the JSON is rewritten after each
phase, so a run killed late still leaves the phases it finished:

1. ``environment``: GPU, driver, torch and CUDA versions.
2. ``data``: the ML-20M-shaped synthetic set of ``benchmarks.scale_bench`` (138,493 users, 26,744 items,
   20M distinct interactions, generated in memory), one random interaction per user held out.
3. ``training``: samples/s (positives and their negatives, as NVIDIA counts them: their epoch's samples are
   its positives × (1 + negatives)), for the precisions ``tf32`` (NVIDIA's "TF32" figure), ``bf16``
   (against their mixed-precision figure) and plain ``fp32``, at NVIDIA's batch (2^20 samples, 4 negatives
   a positive, factor 64: the same embedding widths as theirs) and at this project's defaults. Never from
   the first steps alone: each run times ``WINDOWS`` windows of consecutive steps spread evenly over one
   epoch (the whole epoch when it fits the caps), after warm-up steps, with the device synchronised around
   each window; the slowest window's rate is reported beside the mean. ``host_syncs_per_step`` counts the
   waits for the device (``torch.cuda.set_sync_debug_mode``) in a few steps: 0 is the goal.
4. ``ml1m``: NeuMF with the default hyperparameters on the NCF paper's ML-1M files (``--ml1m DIR`` or
   ``$NCF_DATA_DIR/ml-1m``), HR@10 / NDCG@10 of the kept epoch beside the CPU figures of README.md;
   skipped, with the reason in the JSON, when the files are not there.
5. ``top10``: all-items top-10 (seen items excluded) for users of the 20M model: through ``Recommender``
   (the serving path: scores on the device, top-k on the host) and as one batched device computation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# NVIDIA DeepLearningExamples, PyTorch NCF (README, "Training performance: NVIDIA DGX A100 (8x A100 40GB)",
# PyTorch 21.04 NGC container): ML-20M, one A100, batch 2^20, samples/s averaged over an entire epoch,
# counting each epoch's positives × (1 + 4 negatives).
NVIDIA_A100 = {
    "source": "NVIDIA DeepLearningExamples PyTorch/Recommendation/NCF README (DGX A100, 1 GPU, 21.04 NGC)",
    "dataset": "ML-20M",
    "batch_size": 1 << 20,
    "negatives_per_positive": 4,
    "factors": 64,
    "mlp_layers": [256, 256, 128, 64],
    "tf32_samples_per_s": 22.59e6,
    "amp_samples_per_s": 34.08e6,
    "samples_counted": "positives and negatives",
}
# README.md's ML-1M figures (CPU, fp32, 3 seeds, the default hyperparameters).
ML1M_CPU_REFERENCE = {"hr": 0.7054, "ndcg": 0.4267, "source": "README.md, fp32 mean of 3 seeds, 2-core CPU"}

WINDOWS = 5  # timed windows spread over the epoch
WARMUP_STEPS = 3
SYNC_PROBE_STEPS = 3


@dataclass(frozen=True)
class Plan:
    """Sizes and caps of one run: ``full`` for the GPU, ``smoke`` for a CPU test of the same code."""

    pairs: int
    nvidia_batch: int
    max_steps: int  # timed steps per training run, at most
    run_s: float  # timed seconds per training run, about
    run_setup_s: float  # a training run's untimed seconds (trainer, warm-up, sync probe), about
    ml1m_epochs: int
    ml1m_s: float
    top10_users: int  # through Recommender
    top10_device_users: int  # batched on the device
    top10_batch: int  # users a batch on the device (256 x 26,744 pairs: ~7 GB of activations in fp32)
    top10_s: float


FULL = Plan(20_000_000, 1 << 20, 600, 30.0, 10.0, 8, 75.0, 20_000, 138_493, 256, 20.0)
SMOKE = Plan(20_000, 4096, 5, 2.0, 1.0, 1, 20.0, 16, 32, 8, 5.0)


# --------------------------------------------------------------------------------------------- helpers
class Budget:
    """The run's time budget: ``left()`` seconds remain; phases take ``min(cap, left - reserve)``."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def command_output(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment(device: Any) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "cudnn": torch.backends.cudnn.version(),
        }
        smi = command_output(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ]
        )
        env["nvidia_smi"] = smi
        if smi:
            env["driver"] = smi.split(",")[1].strip()
    return env


# --------------------------------------------------------------------------------------------- data
def generate_arrays(pairs: int, seed: int, directory: str) -> str:
    """Draw the synthetic set (``benchmarks.scale_bench``'s generator, in memory: no CSV), hold one random
    interaction per user out as the test split, and save the arrays (and the users' history as CSR, which
    serving excludes) to ``directory/data.npz``. Numpy only: it runs in a process of its own, beside the
    ML-1M phase on the device."""
    from benchmarks.scale_bench import draw_pairs

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    user, item, num_users, num_items = draw_pairs(rng, pairs)
    keys = np.sort(user.astype(np.int64) * num_items + item)  # distinct: by user, then item
    del user, item
    user, item = keys // num_items, keys % num_items
    counts = np.bincount(user, minlength=num_users)
    indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    pick = indptr[:-1] + (rng.random(num_users) * counts).astype(np.int64)
    keep = np.ones(len(user), bool)
    keep[pick] = False
    path = Path(directory) / "data.npz"
    np.savez(
        path,
        shape=np.asarray([num_users, num_items]),
        train_users=user[keep],
        train_items=item[keep],
        test_users=user[pick],
        test_items=item[pick],
        indptr=indptr,
        indices=item.astype(np.int32),
        popularity=np.bincount(item, minlength=num_items).astype(np.int64),
        generate_s=np.asarray(time.perf_counter() - t0),
    )
    return str(path)


def load_arrays(path: str, pairs: int, seed: int) -> tuple[Any, dict[str, np.ndarray], float]:
    """(Interactions, history {indptr, indices, popularity}, generation seconds) from ``generate_arrays``.
    The test split has no negatives: nothing here evaluates on it (the Trainer only requires one)."""
    from ncf_core.data import EvalSplit, Interactions

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    num_users, num_items = (int(x) for x in arrays["shape"])
    test = EvalSplit(arrays["test_users"], arrays["test_items"], np.zeros((num_users, 0), np.int64))
    data = Interactions(
        num_users,
        num_items,
        arrays["train_users"],
        arrays["train_items"],
        test,
        user_ids=list(range(num_users)),
        item_ids=list(range(num_items)),
        source=f"synthetic ML-20M shape, {pairs} pairs, seed {seed}",
    )
    history = {k: arrays[k] for k in ("indptr", "indices", "popularity")}
    return data, history, float(arrays["generate_s"])


def synthetic_data(pairs: int, seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    """``generate_arrays`` then ``load_arrays``, in this process."""
    with tempfile.TemporaryDirectory(prefix="ncf-gpu-bench-") as tmp:
        data, history, _ = load_arrays(generate_arrays(pairs, seed, tmp), pairs, seed)
    return data, history


# --------------------------------------------------------------------------------------------- training
def window_starts(steps: int, length: int, windows: int) -> list[int]:
    """Starts of ``windows`` windows of ``length`` steps spread evenly over ``steps`` steps: the first at
    0, the last ending at the epoch's end; consecutive (the whole epoch) when they cover it."""
    if windows * length >= steps:
        length = math.ceil(steps / windows)
        return [k * length for k in range(windows) if k * length < steps]
    if windows == 1:
        return [0]
    return [k * (steps - length) // (windows - 1) for k in range(windows)]


def count_host_syncs(trainer: Any, epoch: int, order: Any, steps: int) -> float | None:
    """Waits for the device in ``SYNC_PROBE_STEPS`` steps, from torch's sync debug mode (CUDA only)."""
    import torch

    if trainer.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for step in range(SYNC_PROBE_STEPS):
                trainer.train_step(epoch, step, steps, order)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return round(len(syncs) / SYNC_PROBE_STEPS, 2)


def measure_training(
    data: Any, config: Any, max_steps: int, run_s: float, windows: int = WINDOWS
) -> tuple[dict[str, Any], Any]:
    """samples/s of ``config`` on ``data`` over windows spread over one epoch (module docstring)."""
    import torch

    from ncf_core.training import Trainer

    t0 = time.perf_counter()
    quiet = logging.getLogger("ncf_core.training")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "only N optimiser steps in all": an epoch's worth is all we run
    try:
        trainer = Trainer(data, config)
    finally:
        quiet.setLevel(level)
    device = trainer.device
    steps = trainer.steps_per_epoch()
    setup_s = time.perf_counter() - t0
    order = trainer.epoch_order(1)
    # Warm-up (kernels, allocator, autotuning), then the step time that sizes the windows.
    sync(device)
    for step in range(WARMUP_STEPS - 1):
        trainer.train_step(1, step, steps, order)
    sync(device)
    t = time.perf_counter()
    trainer.train_step(1, WARMUP_STEPS - 1, steps, order)
    sync(device)
    step_s = time.perf_counter() - t
    syncs = count_host_syncs(trainer, 1, order, steps)
    length = max(1, min(max_steps // windows, int(run_s / windows / max(step_s, 1e-6))))
    starts = window_starts(steps, length, windows)
    if windows * length >= steps:
        length = math.ceil(steps / windows)
    results = []
    last_loss = None
    for start in starts:
        stop = min(start + length, steps)
        samples = 0
        sync(device)
        t = time.perf_counter()
        for step in range(start, stop):
            last_loss, n = trainer.train_step(1, step, steps, order)
            samples += n
        sync(device)
        seconds = time.perf_counter() - t
        results.append(
            {
                "first_step": start,
                "steps": stop - start,
                "samples": samples,
                "seconds": round(seconds, 4),
                "samples_per_s": round(samples / seconds),
            }
        )
    total_samples = sum(w["samples"] for w in results)
    total_s = sum(w["seconds"] for w in results)
    rates = [w["samples_per_s"] for w in results]
    samples_per_epoch = int(trainer.users.shape[0]) * (1 + config.num_neg)
    out = {
        "precision": config.precision,
        "batch_size": config.batch_size,
        "num_neg": config.num_neg,
        "factor": config.factor,
        "num_layers": config.num_layers,
        "dropout": config.dropout,
        "embedding_updates": "lazy" if any(trainer.lazy_sides) else "dense",
        "negative_sampling": trainer.negative_sampling,
        "steps_per_epoch": steps,
        "samples_per_epoch": samples_per_epoch,
        "whole_epoch": sum(w["steps"] for w in results) >= steps,
        "setup_s": round(setup_s, 2),
        "warmup_step_s": round(step_s, 4),
        "host_syncs_per_step": syncs,
        "timed_steps": sum(w["steps"] for w in results),
        "timed_s": round(total_s, 3),
        "samples_per_s": round(total_samples / total_s),
        "slowest_window_samples_per_s": min(rates),
        "fastest_window_samples_per_s": max(rates),
        "epoch_s_estimate": round(samples_per_epoch / (total_samples / total_s), 2),
        "final_loss": None if last_loss is None else round(float(last_loss), 5),
        "windows": results,
    }
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    return out, trainer


def training_runs(plan: Plan, device: str) -> list[tuple[str, Any]]:
    """(name, TrainConfig) in the order they run (the most wanted first: the budget may cut the last)."""
    from ncf_core.training import TrainConfig

    nvidia = TrainConfig(
        device=device,
        epochs=1,
        batch_size=plan.nvidia_batch,
        num_neg=4,
        factor=64,
        num_layers=2,  # MLP embeddings 128 wide, 256 -> 128 -> 64 (NVIDIA: 256 -> 256 -> 128 -> 64)
        dropout=0.5,
        lr=0.0045,
    )
    default = TrainConfig(device=device, epochs=1)
    return [
        ("nvidia_batch_tf32", replace(nvidia, precision="tf32")),
        ("nvidia_batch_bf16", replace(nvidia, precision="bf16")),
        ("default_bf16", replace(default, precision="bf16")),
        ("default_tf32", replace(default, precision="tf32")),
        ("nvidia_batch_fp32", replace(nvidia, precision="fp32")),
    ]


# --------------------------------------------------------------------------------------------- ML-1M
def ml1m_files(directory: Path) -> dict[str, Path] | None:
    """The NCF paper's ML-1M files in ``directory`` (train: the derived pairs, else the paper's own)."""
    train = directory / "derived" / "ml-1m.train.pairs.tsv"
    if not train.is_file():
        train = directory / "ml-1m.train.rating"
    files = {
        "train": train,
        "test": directory / "ml-1m.test.rating",
        "negative": directory / "ml-1m.test.negative",
    }
    return files if all(p.is_file() for p in files.values()) else None


def ml1m_check(directory: Path | None, device: str, epochs: int, cap_s: float) -> dict[str, Any]:
    from ncf_core import data as ncf_data
    from ncf_core.training import TrainConfig, train

    if directory is None:
        return {"skipped": "no ML-1M directory (--ml1m DIR or $NCF_DATA_DIR/ml-1m)"}
    files = ml1m_files(directory)
    if files is None:
        return {"skipped": f"the NCF ML-1M files are not in {directory}"}
    t0 = time.perf_counter()
    data = ncf_data.load_ncf(files["train"], files["test"], files["negative"])
    ncf_data.add_validation(data, seed=42, chronological=False)
    load_s = time.perf_counter() - t0
    config = TrainConfig(device=device, epochs=epochs, seed=42)  # the defaults: precision auto
    deadline = time.perf_counter() + cap_s
    t0 = time.perf_counter()
    result = train(data, config, should_stop=lambda: time.perf_counter() > deadline)
    total_s = time.perf_counter() - t0
    epochs_run = [h for h in result.history if "loss" in h]
    return {
        "directory": str(directory),
        "users": data.num_users,
        "items": data.num_items,
        "train_pairs": len(data.train_users),
        "epochs": epochs,
        "precision": config.precision,
        "stopped_at_time_cap": result.stopped,
        "load_s": round(load_s, 2),
        "total_s": round(total_s, 2),
        "train_s_per_epoch": round(sum(h["train_s"] for h in epochs_run) / max(len(epochs_run), 1), 3),
        "eval_s_per_epoch": round(sum(h["eval_s"] for h in epochs_run) / max(len(epochs_run), 1), 3),
        "best_epoch": result.best_epoch,
        "hr": None if result.test is None else round(result.test.hr, 4),
        "ndcg": None if result.test is None else round(result.test.ndcg, 4),
        "history": result.history,
        "cpu_reference": ML1M_CPU_REFERENCE,
    }


# --------------------------------------------------------------------------------------------- top-10
def device_topk(
    model: Any, history: tuple[np.ndarray, np.ndarray], users: np.ndarray, k: int, batch: int, cap_s: float
) -> dict[str, Any]:
    """All-items top-``k`` with seen items (``history``: CSR indptr, indices) excluded, ``batch`` users at a
    time, on the model's device: users/s of the computation alone (the host gets the k ids per user)."""
    import torch

    device = next(model.parameters()).device
    indptr, indices = history
    with torch.inference_mode():
        user_side = model.user_side()
        item_side = model.item_side()
        done = 0
        sync(device)
        t0 = time.perf_counter()
        for start in range(0, len(users), batch):
            chunk = users[start : start + batch]
            lo, hi = indptr[chunk], indptr[chunk + 1]
            rows = np.repeat(np.arange(len(chunk)), hi - lo)
            cols = indices[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])]
            u = torch.from_numpy(chunk).to(device)
            us = tuple(None if t is None else t[u][:, None] for t in user_side)
            its = tuple(None if t is None else t[None] for t in item_side)
            logits = model.head(us, its).float()
            seen = (torch.from_numpy(rows).to(device), torch.from_numpy(cols.astype(np.int64)).to(device))
            logits[seen] = -math.inf
            top = torch.topk(logits, k, dim=1).indices.cpu()
            done += len(chunk)
            if time.perf_counter() - t0 > cap_s:
                break
        sync(device)
        seconds = time.perf_counter() - t0
    assert top.shape[1] == k
    return {"users": done, "batch": batch, "seconds": round(seconds, 3), "users_per_s": round(done / seconds)}


def top10(
    model: Any, history: dict[str, np.ndarray], device: str, plan: Plan, cap_s: float
) -> dict[str, Any]:
    import torch

    from ncf_core.artifact import Artifact
    from ncf_core.inference import Recommender

    # As a server scores: fp32 matmuls (the training runs above left TF32 on or off).
    torch.backends.cuda.matmul.allow_tf32 = False
    num_users, num_items = model.config.num_users, model.config.num_items
    out: dict[str, Any] = {"k": 10, "items": num_items, "exclude_seen": True, "matmul": "fp32"}
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    art = Artifact(
        model.cpu(),
        list(range(num_users)),
        list(range(num_items)),
        history["indptr"],
        history["indices"],
        history["popularity"],
    )
    rec = Recommender(art, device=device)
    out["recommender_build_s"] = round(time.perf_counter() - t0, 2)
    out["backend"] = rec.backend
    users = rng.choice(num_users, min(plan.top10_users, num_users), replace=False)
    raw = rec.users.raw(users)
    rec.recommend_many(raw[:128], 10)  # warm-up
    done, t0 = 0, time.perf_counter()
    chunk = 1024
    for start in range(0, len(raw), chunk):
        rec.recommend_many(raw[start : start + chunk], 10)
        done += len(raw[start : start + chunk])
        if time.perf_counter() - t0 > cap_s / 2:
            break
    seconds = time.perf_counter() - t0
    out["recommender"] = {"users": done, "seconds": round(seconds, 3), "users_per_s": round(done / seconds)}
    model = rec.model
    csr = (history["indptr"], history["indices"])
    users = rng.permutation(num_users)[: plan.top10_device_users]
    device_topk(model, csr, users[: plan.top10_batch], 10, plan.top10_batch, cap_s)  # warm-up
    out["device_batched"] = device_topk(model, csr, users, 10, plan.top10_batch, cap_s / 2)
    return out


# --------------------------------------------------------------------------------------------- the run
def write(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(path)


def phase(result: dict[str, Any], name: str, out: Path, fn: Any, *args: Any) -> Any:
    """Run one phase: its output (or its error) goes into ``result[name]``, then the JSON is rewritten."""
    t0 = time.perf_counter()
    value = None
    try:
        value = fn(*args)
        result[name] = value
    except Exception as exc:  # one phase failing must not lose the others' figures
        result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    result["phase_s"][name] = round(time.perf_counter() - t0, 2)
    write(out, result)
    print(f"gpu_bench: {name} done in {result['phase_s'][name]} s", file=sys.stderr, flush=True)
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ncf_core import runtime

    runtime.flush_denormals()
    import torch

    from ncf_core.training import pick_device

    plan = SMOKE if args.smoke else FULL
    if args.pairs:
        plan = replace(plan, pairs=args.pairs)
    budget = Budget(args.budget_s)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "gpu_bench",
        "smoke": args.smoke,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": args.budget_s,
        "plan": plan.__dict__,
        "nvidia_a100_reference": NVIDIA_A100,
        "phase_s": {},
    }
    tmp = tempfile.TemporaryDirectory(prefix="ncf-gpu-bench-")
    # The synthetic set is drawn on the host (numpy, about a minute at 20M) while ML-1M trains on the device.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    generating = pool.submit(generate_arrays, plan.pairs, args.seed, tmp.name)
    loaded = None
    try:
        dev = pick_device(args.device)
        device = str(dev)
        phase(result, "environment", out, environment, dev)
        if dev.type != "cuda" and not args.smoke:
            result["warning"] = "no CUDA device: these are CPU figures"
        data_dir = Path(os.environ.get("NCF_DATA_DIR", ROOT.parent / "shared" / "data"))
        ml1m_dir = args.ml1m or data_dir / "ml-1m"
        ml1m_dir = ml1m_dir if ml1m_dir.is_dir() else None
        ml1m_cap = max(5.0, min(plan.ml1m_s, budget.left() / 4))
        phase(result, "ml1m", out, ml1m_check, ml1m_dir, device, plan.ml1m_epochs, ml1m_cap)
        # Waits at most until a third of the budget is left (a TimeoutError lands in the JSON).
        wait_s = max(1.0, budget.left() - args.budget_s / 3)
        loaded = phase(
            result, "data", out, lambda: load_arrays(generating.result(wait_s), plan.pairs, args.seed)
        )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    data = history = None
    if loaded is not None:
        data, history, generate_s = loaded
        result["data"] = {
            "users": data.num_users,
            "items": data.num_items,
            "train_pairs": len(data.train_users),
            "generate_s": round(generate_s, 1),
            "source": data.source,
        }
        write(out, result)
    tmp.cleanup()
    # Training gets what the top-10 phase leaves, the runs in order of interest: when time is short, the
    # last ones are skipped.
    reserve = 2 * plan.top10_s + 15.0
    result["training"] = {}
    model = None
    runs = [r for r in training_runs(plan, device) if not args.runs or r[0] in args.runs.split(",")]
    for name, config in runs:
        if data is None:
            break
        per_run = min(plan.run_s, budget.left() - reserve - plan.run_setup_s)
        if per_run < min(2.0, plan.run_s):
            result["training"][name] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
            continue
        t0 = time.perf_counter()
        try:
            figures, trainer = measure_training(data, config, plan.max_steps, per_run)
            result["training"][name] = figures
            if name == "default_bf16" or model is None:
                model = trainer.model  # top-10 is served from the default network
            del trainer
        except Exception as exc:
            result["training"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        result["phase_s"][f"training.{name}"] = round(time.perf_counter() - t0, 2)
        write(out, result)
        print(f"gpu_bench: training {name} done", file=sys.stderr, flush=True)
    ref = NVIDIA_A100
    tr = result["training"]
    result["vs_nvidia_a100"] = {
        "tf32_ratio": _ratio(tr.get("nvidia_batch_tf32"), ref["tf32_samples_per_s"]),
        "bf16_vs_amp_ratio": _ratio(tr.get("nvidia_batch_bf16"), ref["amp_samples_per_s"]),
        "note": "ours over NVIDIA's A100 figure at their batch; their model has one more 256-wide MLP layer",
    }
    write(out, result)
    if model is not None and history is not None:
        top_cap = max(2.0, min(2 * plan.top10_s, budget.left() - 5.0))
        phase(result, "top10", out, top10, model, history, device, plan, top_cap)
    else:
        result["top10"] = {"skipped": "no trained 20M model"}
    result["total_s"] = round(budget.elapsed(), 1)
    write(out, result)
    return result


def _ratio(run: dict[str, Any] | None, reference: float) -> float | None:
    if not run or "samples_per_s" not in run:
        return None
    return round(run["samples_per_s"] / reference, 3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_bench.json")
    parser.add_argument("--smoke", action="store_true", help="small sizes and caps: the code path in seconds")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--ml1m", type=Path, default=None, help="directory of the NCF ML-1M files")
    parser.add_argument("--pairs", type=int, default=None, help="interactions of the synthetic set")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run's time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=None, help="comma-separated training runs to do (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps({k: result.get(k) for k in ("vs_nvidia_a100", "total_s")}), flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
