"""The CUDA hot loop reads nothing back from the device per step.

A read of a device tensor on the host (``.item()``, ``bool()``/``float()``/``int()`` of a tensor, or an op
whose output size depends on the data: ``nonzero``, ``unique``, boolean-mask indexing, ``bincount``...)
makes the host wait for every queued kernel, so the GPU idles while the next step is prepared. There is
no GPU here, and ``torch.cuda.set_sync_debug_mode`` works only on one; instead the trainer runs on the CPU
in its CUDA configuration (complement sampling, dense embedding updates, no id deduplication) under a
dispatch mode that records every aten op that would make such a read on CUDA. The count must not grow
with the number of steps: an epoch of many steps reads no more than an epoch of few.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ncf_core import models
from ncf_core.training import Trainer

from .test_training import FAST

# Ops that read a value (or a data-dependent size) back to the host when their inputs are on CUDA.
SYNCING = {
    "_local_scalar_dense",  # .item(), bool(t), float(t), int(t), `if t:`
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
    "equal",
    "is_nonzero",
    "repeat_interleave",  # without output_size its length is read back
}


class SyncRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in SYNCING:
            self.calls[name] += 1
        elif name in ("index", "index_put", "index_put_") and _has_bool_index(args):
            self.calls[f"{name}(bool mask)"] += 1
        return func(*args, **kwargs)


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or ())


def epoch_reads(planted, batch_size: int, cuda_config: bool, monkeypatch) -> tuple[int, Counter[str]]:
    """(steps, host reads) of one training epoch."""
    config = replace(FAST, batch_size=batch_size, embedding_updates="dense", precision="fp32", device="cpu")
    trainer = Trainer(planted, config)
    if cuda_config:
        trainer.negative_sampling = "complement"
        monkeypatch.setattr(models, "dedup_on", lambda idx: False)
    recorder = SyncRecorder()
    with recorder:
        assert trainer._train_epoch(1)
    monkeypatch.undo()
    return trainer.steps_per_epoch(), recorder.calls


def test_the_cuda_hot_loop_reads_nothing_back_per_step(planted, monkeypatch):
    few_steps, few = epoch_reads(planted, 2048, True, monkeypatch)
    many_steps, many = epoch_reads(planted, 256, True, monkeypatch)
    assert many_steps >= 4 * few_steps
    # One read an epoch: the loss sum, once, after the last step.
    assert many == few == Counter({"_local_scalar_dense": 1}), (few, many)


def test_the_recorder_sees_the_rejection_samplers_reads(planted, monkeypatch):
    """The CPU configuration (rejection sampling, deduplicated ids) reads back every step: the recorder
    sees those reads, so the test above would see them too."""
    steps, calls = epoch_reads(planted, 256, False, monkeypatch)
    assert calls["nonzero"] >= steps and calls["_unique2"] + calls["unique_dim"] + calls["_unique"] >= steps


def test_complement_sampling_trains_as_well(planted, monkeypatch):
    """The CUDA configuration, run on the CPU, learns the planted structure like the CPU's."""
    monkeypatch.setattr(models, "dedup_on", lambda idx: False)
    config = replace(FAST, embedding_updates="dense", device="cpu")
    trainer = Trainer(planted, config)
    trainer.negative_sampling = "complement"
    result = trainer.fit()
    assert result.test.hr > 0.6, result.history


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_tf32_is_fp32_on_a_cpu(planted, precision):
    trainer = Trainer(planted, replace(FAST, precision=precision, device="cpu"))
    assert trainer.amp_dtype is None and trainer.negative_sampling == "rejection"
