"""The training loop: per-epoch vectorised negative sampling, large batches, validation-picked epoch,
checkpoint/resume that reproduces an uninterrupted run, and optional data-parallel training.

Reproducibility: everything random in epoch ``e`` (negatives, shuffling, dropout) comes from generators
seeded by ``(seed, e)``, so a run resumed from a checkpoint (even one written mid-epoch on SIGTERM) replays
exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .config import TrainConfig  # declared with the other settings; imported from here too
from .data import Interactions
from .errors import CheckpointError, ConfigError, DataError
from .evaluation import Metrics, evaluate
from .health import TensorHealth, network_health, warn_if_dying
from .lazy_adam import LazyAdam
from .models import NCF, ModelConfig
from .runtime import cpu_has_bf16, flush_denormals, pick_device, tune_allocator
from .sampling import PositiveSet, sample_negatives

log = logging.getLogger("ncf_core.training")

CHECKPOINT_GLOB = "ncf-ckpt-*.pt"
_CHECKPOINT_RE = re.compile(r"ncf-ckpt-(\d+)-(\d+)\.pt$")
KEEP_CHECKPOINTS = 2
# A long epoch logs a progress line at most this often, so CloudWatch shows life before the epoch ends.
# Its names avoid the substrings the metric regexes look for (``epoch=``, ``loss=``, `` hr=``...).
PROGRESS_INTERVAL_S = 30.0
MIN_TOTAL_STEPS = 100  # below this, warn that the batch is too large for the data
MAX_STEP_DECAY = 0.1  # weight decay never shrinks a weight by more than this share in one step
# Data-parallel ranks agree on a stop request (an all-reduce read back on the host: on CUDA a wait for the
# device) every this many steps, not every step. One process checks its flag every step (no device read).
STOP_CHECK_STEPS = 16


@dataclass
class Distributed:
    """Data-parallel placement; the default is a single process."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class EpochReport:
    """One epoch's figures; epoch 0 is the pre-trained starting point (evaluated, not trained: no loss)."""

    epoch: int
    loss: float | None
    train_s: float
    eval_s: float
    val: Metrics | None
    test: Metrics | None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"epoch": self.epoch}
        if self.loss is not None:
            d["loss"] = round(self.loss, 6)
        d |= {"train_s": round(self.train_s, 3), "eval_s": round(self.eval_s, 3)}
        if self.val is not None:
            d |= {"val_hr": round(self.val.hr, 6), "val_ndcg": round(self.val.ndcg, 6)}
        if self.test is not None:
            d |= {"hr": round(self.test.hr, 6), "ndcg": round(self.test.ndcg, 6)}
        return d

    def log_line(self) -> str:
        """Stable ``name=value;`` form that SageMaker metric_definitions regexes scrape."""
        return " ".join(f"{k}={v};" for k, v in self.as_dict().items())


@dataclass
class TrainResult:
    model: NCF
    best_epoch: int
    val: Metrics | None
    test: Metrics | None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False  # interrupted (stop request) before finishing

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {"best_epoch": self.best_epoch, "epochs_run": len(self.history)}
        if self.val is not None:
            d |= self.val.as_dict("val_")
        if self.test is not None:
            d |= self.test.as_dict()
        return d


class RateMeter:
    """Samples per second since the start (``average``) and lately (``recent``: each interval's rate,
    exponentially averaged with weight ``RECENT_WEIGHT``: a change of rate shows within an interval or two).
    """

    RECENT_WEIGHT = 0.5

    def __init__(self, start_s: float, start_samples: int = 0):
        self.start_s, self.start_samples = start_s, start_samples
        self.last_s, self.last_samples = start_s, start_samples
        self.average = self.recent = 0.0

    def update(self, samples: int, now_s: float) -> None:
        if now_s <= self.last_s:
            return
        interval = (samples - self.last_samples) / (now_s - self.last_s)
        first = self.last_s == self.start_s
        self.recent = (
            interval if first else self.RECENT_WEIGHT * interval + (1 - self.RECENT_WEIGHT) * self.recent
        )
        self.average = (samples - self.start_samples) / (now_s - self.start_s)
        self.last_s, self.last_samples = now_s, samples


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training step (None: fp32).

    ``auto`` is bf16 where the hardware computes it: a CUDA device that supports it (NVIDIA's NCF: 34.1M
    against 22.6M samples/s on an A100 with AMP), or a CPU with AMX or AVX512-BF16 (ML-1M epochs 1.45x
    faster on an AMD EPYC with AVX512-BF16, the same HR@10 / NDCG@10 over 3 seeds: docs/benchmarks.md,
    Precision); fp32 elsewhere, where bf16 would be emulated. ``fp16`` needs CUDA (and a gradient scaler,
    which the trainer adds).

    ``fp32`` and ``tf32`` both train in fp32 (None): ``fp32`` with IEEE fp32 matmuls on CUDA too (torch's
    default), ``tf32`` with CUDA matmuls on the TF32 tensor cores (fp32 range, 10-bit mantissa inputs,
    fp32 accumulation), which is what NVIDIA's "TF32" NCF figure measures; the trainer sets
    ``torch.backends.cuda.matmul.allow_tf32`` accordingly. On a CPU ``tf32`` is plain fp32.
    """
    cuda = device.type == "cuda"
    if name in ("fp32", "tf32"):
        return None
    if name == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision=bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16")
        return torch.bfloat16
    if name == "fp16":
        if not cuda:
            raise ConfigError("precision=fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        return torch.float16
    if cuda:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63 - 1)


class Trainer:
    """Owns model, optimiser and data tensors for one training run."""

    def __init__(
        self,
        data: Interactions,
        config: TrainConfig,
        *,
        checkpoint_dir: str | Path | None = None,
        dist: Distributed | None = None,
        initial_model: NCF | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_epoch: Callable[[EpochReport], None] | None = None,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
    ):
        config.validate()
        if data.test is None or len(data.test) == 0:  # data.load refuses this already; other callers too
            raise DataError(
                "no test users: the data holds no held-out interaction to evaluate on", data.source or None
            )
        tune_allocator()
        flush_denormals()
        self.data = data
        self.config = config
        self.dist = dist or Distributed()
        self.device = pick_device(config.device)
        self.amp_dtype = pick_precision(config.precision, self.device)
        if self.device.type == "cuda" and self.amp_dtype is None:
            # tf32: fp32 tensors, matmuls on the TF32 tensor cores; fp32: full-precision matmuls (both are
            # process-wide settings of torch: they hold for evaluation in this process too).
            torch.backends.cuda.matmul.allow_tf32 = config.precision == "tf32"
            torch.backends.cudnn.allow_tf32 = config.precision == "tf32"
        # On CUDA the hot loop reads nothing back from the device (a read makes the host wait for every
        # queued kernel): negatives come from the fixed-shape complement sampler (ncf_core.sampling). The
        # CPU keeps the rejection sampler, whose draws (and so results) are those of earlier releases.
        self.negative_sampling = "complement" if self.device.type == "cuda" else "rejection"
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.should_stop = should_stop or (lambda: False)
        self.on_epoch = on_epoch
        self.progress_interval_s = progress_interval_s

        torch.manual_seed(config.seed)
        model = initial_model or NCF(ModelConfig.for_training(config, data.num_users, data.num_items))
        if (model.config.num_users, model.config.num_items) != (data.num_users, data.num_items):
            raise ConfigError("initial model was built for other user/item counts than the data")
        if initial_model is None:
            # The output bias starts at the log-odds of a positive among a step's samples (1 in 1 + num_neg):
            # from 0, the first steps push every logit down, and Adam's steps of ~lr a weight killed the
            # MLP units with a positive path to the output while the embeddings (N(0, 0.01)) were small.
            with torch.no_grad():
                model.predict_layer.bias.fill_(-math.log(config.num_neg))
        self.model = model.to(self.device)
        # A pre-trained start is itself a candidate for the kept model: fine-tuning can only be kept if it
        # beats the start on validation (on ML-1M the plain GMF+MLP combination is already strong).
        self.starts_pretrained = initial_model is not None
        self.lazy_sides = self._lazy_sides()  # refused under DDP before a process group is touched
        self.net: torch.nn.Module = self.model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        users = torch.from_numpy(data.train_users).to(self.device)
        items = torch.from_numpy(data.train_items).to(self.device)
        # Negatives exclude all training positives of the user (never val/test: that would leak them).
        self.positives = PositiveSet(users, items, data.num_users, data.num_items)
        # Each rank trains on its own slice of the positives and samples its own negatives. Slices are
        # padded by wrapping around (as DistributedSampler does) so every rank runs the same step count.
        world = self.dist.world_size
        shard = torch.arange(self.dist.rank, math.ceil(len(users) / world) * world, world, device=self.device)
        shard = shard % len(users)
        self.users, self.items = users[shard], items[shard]

        # Embedding tables are updated lazily (only the rows a step used) or densely, by AdamW either way.
        # Fused AdamW: one pass over each tensor instead of ~10 (dense embedding updates at ML-20M's 165k
        # users and items: 296 ms of a 685 ms step unfused, ~46 ms fused). Weight decay is decoupled from
        # Adam's normalisation: L2 added to the gradient, as Adam(weight_decay=) does, moves a weight with
        # no data gradient (a dead ReLU unit's, a row the data no longer pulls) by ~lr a step whatever the
        # decay, which drove dead units' weights to zero and on into subnormals, and collapsed ML-20M's
        # item embeddings (README, "Scale"). ``step_decay`` spreads each decay over an epoch's steps.
        self.lazy = self._lazy_adam() if any(self.lazy_sides) else None
        lazy_tables = {id(t) for t in self.lazy.tables} if self.lazy is not None else set()
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for p in self.model.parameters():
            if id(p) not in lazy_tables:
                groups.setdefault(self.step_decay(p), []).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
            lr=config.lr,
            fused=self.device.type in ("cpu", "cuda"),
        )

        if self.amp_dtype == torch.float16 and self.lazy is not None:
            raise ConfigError("precision=fp16 with lazy embedding updates is not supported: use bf16 or fp32")
        # fp16's small range needs the loss scaled up for the backward pass (bf16 has fp32's range).
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self._warn_if_few_steps()
        self.epochs_done = 0
        self.step_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_val: Metrics | None = None
        self.best_test: Metrics | None = None
        self.epoch_loss_sum = 0.0
        self.epoch_samples = 0
        self.epoch_train_s = 0.0
        # (samples done, perf_counter) at the epoch's start and after each tenth of its steps: the rates of
        # its first and last tenth (benchmarks/scale_bench.py) show a slowdown an average would hide.
        self.epoch_marks: list[tuple[int, float]] = []
        self.health: list[TensorHealth] = []  # the network's at the last epoch's end (ncf_core.health)

    def _warn_if_few_steps(self) -> None:
        """The defaults are tuned for ML-1M (6M samples an epoch, README "Results"); on small data the same
        batch leaves so few optimiser steps that the model barely moves."""
        steps = self.steps_per_epoch() * self.config.epochs
        if steps >= MIN_TOTAL_STEPS or not self.dist.is_main:
            return
        samples = self.users.shape[0] * (1 + self.config.num_neg) * self.dist.world_size
        suggested = max(256, 2 ** int(math.log2(max(samples // 50, 1))))
        log.warning(
            "only %d optimiser steps in all (%d epochs at batch_size %d on %d samples an epoch): "
            "too few to learn much; use a smaller batch_size (e.g. %d) or more epochs",
            steps,
            self.config.epochs,
            self.config.batch_size,
            samples,
            suggested,
        )

    def _lazy_sides(self) -> tuple[bool, bool]:
        """Whether the user side's and the item side's tables are updated lazily (``embedding_updates``).

        ``auto``: a side whose tables have more rows than a batch has samples, since a step then touches a
        small part of them (ML-20M's 138k users: ~5k distinct a step); a smaller table is mostly touched
        anyway (ML-20M's 26.7k items: ~70%), and there dense fused Adam is the faster (and exact) update.
        On CUDA ``auto`` is dense: a lazy step needs the batch's distinct ids (``torch.unique``, whose
        output size the host must read back: a wait for the device every step), and a GPU's fused Adam
        sweeps ML-20M's tables in well under a millisecond.
        """
        mode = self.config.embedding_updates
        if self.dist.world_size > 1:
            if mode == "lazy":
                raise ConfigError("embedding_updates=lazy needs one process; use dense (or auto) with DDP")
            return False, False
        if mode == "auto":
            if self.device.type == "cuda":
                return False, False
            big = self.config.batch_size
            return self.data.num_users > big, self.data.num_items > big
        return (True, True) if mode == "lazy" else (False, False)

    def decay_of(self, param: torch.Tensor) -> float:
        """The weight decay of ``param`` per epoch: ``mlp_weight_decay`` for the MLP part, else
        ``weight_decay``."""
        if any(param is p for p in self.model.mlp_parameters()):
            return self.config.mlp_weight_decay
        return self.config.weight_decay

    def step_decay(self, param: torch.Tensor) -> float:
        """AdamW's weight decay for ``param``: its decay per epoch over the epoch's steps, so that a step
        multiplies it by ``1 - lr × decay / steps_per_epoch``. A decay per step would regularise 8x more
        at an 8x smaller batch, or on data 20x larger, for the same epochs: per epoch it does not. On an
        epoch of very few steps a step would shrink weights by most of their size (or flip their sign past
        ``lr × decay``): no step shrinks them by more than ``MAX_STEP_DECAY``."""
        return min(self.decay_of(param) / self.steps_per_epoch(), MAX_STEP_DECAY / self.config.lr)

    def _lazy_adam(self) -> LazyAdam:
        """LazyAdam over the lazily updated tables; ``lazy_slots`` maps (side, table) to its index there."""
        tables = []
        self.lazy_slots: dict[tuple[int, int], int] = {}
        for which in (0, 1):
            for k, e in enumerate(self.model.embeddings(which)):
                if self.lazy_sides[which] and e is not None:
                    self.lazy_slots[which, k] = len(tables)
                    tables.append(e.weight)
        return LazyAdam(tables, lr=self.config.lr, weight_decay=[self.step_decay(t) for t in tables])

    # ------------------------------------------------------------------ epoch data
    def positives_per_step(self) -> int:
        """Each step trains on this many positives, each followed by ``num_neg`` negatives of its user."""
        return max(1, math.ceil(self.config.batch_size / (1 + self.config.num_neg)))

    def steps_per_epoch(self) -> int:
        return math.ceil(self.users.shape[0] / self.positives_per_step())

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The order in which ``epoch`` visits this rank's positives."""
        gen = torch.Generator(device=self.device).manual_seed(
            _epoch_seed(self.config.seed, epoch, self.dist.rank)
        )
        return torch.randperm(self.users.shape[0], generator=gen, device=self.device)

    def step_batch(
        self, epoch: int, step: int, order: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Users, items and labels of one step: its positives, then ``num_neg`` fresh negatives for each.

        Negatives are drawn for the step alone, from a generator seeded by (seed, epoch, rank, step): no
        epoch of samples is ever held (ML-20M: 100M of them, 2.8 GB as tensors), a resumed run draws exactly
        what the uninterrupted one did, and a positive's negatives share its user, whose side of the
        network is then computed once for all of them.
        """
        per = self.positives_per_step()
        pos = order[step * per : (step + 1) * per]
        pos_users, pos_items = self.users[pos], self.items[pos]
        gen = torch.Generator(device=self.device).manual_seed(
            _epoch_seed(self.config.seed, epoch, self.dist.rank) ^ (step * 0x9E3779B1 + 1)
        )
        neg_users = pos_users.repeat(self.config.num_neg)
        neg_items = sample_negatives(neg_users, self.positives, gen, method=self.negative_sampling)
        labels = torch.zeros(pos.shape[0] * (1 + self.config.num_neg), device=self.device)
        labels[: pos.shape[0]] = 1.0
        return torch.cat([pos_users, neg_users]), torch.cat([pos_items, neg_items]), labels

    def _forward(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits of a step's samples, and for lazy updates the (distinct ids, gathered rows) of each
        lazily updated table.

        A step holds its positives' users once and then ``num_neg`` times again in the same order, so the
        network sees ``users`` as ``[P]`` against ``items`` as ``[1 + num_neg, P]``: each sample's user side
        is a broadcast, not a gather, and its gradient a sum over the group instead of a scatter (a tenth
        of an ML-1M step).
        """
        groups = 1 + self.config.num_neg
        users, items = users[: users.shape[0] // groups], items.view(groups, -1)
        if self.lazy is None:
            return self.net(users, items).reshape(-1), []
        lazy, slot = self.lazy, self.lazy_slots
        used: list[Any] = [None] * len(lazy.tables)  # in LazyAdam's order, whatever order sides come in

        def fetch(which: int, table: int, ids: torch.Tensor) -> torch.Tensor:
            k = slot[which, table]
            used[k] = (ids, lazy.gather(k, ids))
            return used[k][1]

        user_side = self.model.side(users, 0, fetch if self.lazy_sides[0] else None)
        item_side = self.model.side(items, 1, fetch if self.lazy_sides[1] else None)
        return self.model.head(user_side, item_side).reshape(-1), used

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        cfg = self.config
        stopped = False
        if self.starts_pretrained and not self.history and self.epochs_done == 0 and self.step_in_epoch == 0:
            report = self._record_epoch(0, None, 0.0)
            if self.on_epoch is not None and self.dist.is_main:
                self.on_epoch(report)
        while self.epochs_done < cfg.epochs:
            epoch = self.epochs_done + 1
            if not self._train_epoch(epoch):
                stopped = True
                break
            report = self._end_epoch(epoch)
            if self.on_epoch is not None and self.dist.is_main:
                self.on_epoch(report)
            patience_hit = bool(
                cfg.patience and self.best_val is not None and epoch - self.best_epoch >= cfg.patience
            )
            if self._any_rank(patience_hit):
                log.info("no validation gain for %d epochs, stopping early", cfg.patience)
                break
            if self.epochs_done < cfg.epochs and self._stop_requested():
                stopped = True
                break
        return self.result(stopped)

    def _set_lr(self, epoch: int, step: int, steps: int) -> None:
        """Linear warm-up, then linear decay over the whole run: a function of the global step only (so
        resume-safe)."""
        cfg = self.config
        if cfg.lr_decay == 1.0 and not cfg.warmup_steps:
            return
        done = (epoch - 1) * steps + step
        progress = done / max(cfg.epochs * steps - 1, 1)
        lr = cfg.lr * (1.0 - (1.0 - cfg.lr_decay) * min(progress, 1.0))
        warmup = min(cfg.warmup_steps, cfg.epochs * steps // 5)  # never more than a fifth of the run
        if done < warmup:
            lr *= (done + 1) / (warmup + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.lazy is not None:
            self.lazy.lr = lr

    def _any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (ranks must agree on when to stop)."""
        if self.dist.world_size == 1:
            return flag
        import torch.distributed as torch_dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _stop_check_due(self) -> bool:
        """Whether this step checks for a stop request: every step in one process, every
        ``STOP_CHECK_STEPS`` steps (the same steps on every rank) in a data-parallel run."""
        return self.dist.world_size == 1 or self.step_in_epoch % STOP_CHECK_STEPS == 0

    def _stop_requested(self) -> bool:
        return self._any_rank(self.should_stop())

    def _train_epoch(self, epoch: int) -> bool:
        """Run the remaining steps of ``epoch``; False if a stop was requested (checkpoint saved)."""
        cfg = self.config
        t0 = time.perf_counter()
        order = self.epoch_order(epoch)
        if self.step_in_epoch == 0:
            torch.manual_seed(_epoch_seed(cfg.seed, epoch, self.dist.rank) ^ 0x5EED)  # dropout stream
            self.epoch_loss_sum, self.epoch_samples, self.epoch_train_s = 0.0, 0, 0.0
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        steps = self.steps_per_epoch()
        total = len(order) * (1 + cfg.num_neg)
        started_at, started_with = time.perf_counter(), self.epoch_samples
        next_progress = started_at + self.progress_interval_s
        meter = RateMeter(started_at, started_with)
        tenths = {steps * k // 10 for k in range(1, 11)}  # the steps that end each tenth of the epoch
        if self.step_in_epoch == 0:
            self.epoch_marks = [(0, started_at)]
        for step in range(self.step_in_epoch, steps):
            loss, samples = self.train_step(epoch, step, steps, order)
            loss_sum += loss.double() * samples
            self.epoch_samples += samples
            self.step_in_epoch = step + 1
            now = time.perf_counter()
            if self.step_in_epoch in tenths:
                self.epoch_marks.append((self.epoch_samples, now))
            if self.dist.is_main and now >= next_progress and self.step_in_epoch < steps:
                next_progress = now + self.progress_interval_s
                meter.update(self.epoch_samples, now)
                self._log_progress(epoch, total, meter)
            if self.step_in_epoch < steps and self._stop_check_due() and self._stop_requested():
                self.epoch_loss_sum += float(loss_sum)
                self.epoch_train_s += time.perf_counter() - t0
                log.info("stop requested in epoch %d at step %d/%d", epoch, self.step_in_epoch, steps)
                self.save_checkpoint()
                return False
        self.epoch_loss_sum += float(loss_sum)
        self.epoch_train_s += time.perf_counter() - t0
        return True

    def train_step(self, epoch: int, step: int, steps: int, order: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One optimiser step (``step`` of the ``steps`` of ``epoch``, positives in ``order``): its mean loss
        (a device tensor, not read back) and its sample count (positives and negatives)."""
        users, items, labels = self.step_batch(epoch, step, order)
        self._set_lr(epoch, step, steps)
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            logits, used_rows = self._forward(users, items)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.lazy is not None:
            self.lazy.step(used_rows)
        return loss.detach(), int(labels.shape[0])

    def _log_progress(self, epoch: int, total: int, meter: RateMeter) -> None:
        """One ``progress: epoch_number=...; epoch_samples_done=...; ...; eta_s=...;`` line (this rank's
        samples; the names stay clear of the metric regexes). ``eta_s`` divides by the recent rate: the
        epoch's average would hide a slowdown for minutes."""
        done = self.epoch_samples
        eta = (total - done) / meter.recent if meter.recent > 0 else float("inf")
        log.info(
            "progress: epoch_number=%d; epoch_samples_done=%d; epoch_samples=%d; samples_per_s=%.0f; "
            "recent_samples_per_s=%.0f; eta_s=%.0f;",
            epoch,
            done,
            total,
            meter.average,
            meter.recent,
            eta,
        )

    def _end_epoch(self, epoch: int) -> EpochReport:
        if self.lazy is not None:
            self.lazy.settle()  # rows the last steps did not use pay their decay before evaluation
        loss = self.epoch_loss_sum / max(self.epoch_samples, 1)
        report = self._record_epoch(epoch, loss, self.epoch_train_s)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} in epoch {epoch}; lower the learning rate")
        if self.dist.is_main:
            self.health = network_health(self.model)
            warn_if_dying(self.health, epoch)
        self.epochs_done, self.step_in_epoch = epoch, 0
        self.save_checkpoint()
        return report

    def _record_epoch(self, epoch: int, loss: float | None, train_s: float) -> EpochReport:
        """Evaluate the current weights, log and remember them if validation says they are the best."""
        cfg = self.config
        t0 = time.perf_counter()
        val = test = None
        if self.dist.is_main:
            if self.data.val is not None and len(self.data.val):
                val = evaluate(self.model, self.data.val, cfg.top_k, self.device)
            if self.data.test is not None and len(self.data.test):
                test = evaluate(self.model, self.data.test, cfg.top_k, self.device)
        eval_s = time.perf_counter() - t0
        report = EpochReport(epoch, loss, train_s, eval_s, val, test)
        if self.dist.is_main:
            log.info("%s", report.log_line())
        self.history.append(report.as_dict())
        # Keep the epoch with the best validation NDCG (then HR); without validation, the last one.
        score = (val.ndcg, val.hr) if val is not None else (epoch, 0.0)
        if self.best_state is None or score > self.best_score:
            self.best_score = score
            self.best_epoch = epoch
            self.best_val, self.best_test = val, test
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return report

    def result(self, stopped: bool = False) -> TrainResult:
        model = copy.deepcopy(self.model)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        model.eval()
        return TrainResult(model, self.best_epoch, self.best_val, self.best_test, list(self.history), stopped)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint atomically (``.tmp``, then rename) and keep the newest ``KEEP_CHECKPOINTS``.

        A failed write (a full disk, most often) removes its partial ``.tmp``, leaves the earlier
        checkpoints as they were and raises CheckpointError naming the file and the cause.
        """
        if self.checkpoint_dir is None or not self.dist.is_main:
            return None
        state = {
            "train_config": self.config.fingerprint(),
            "data": self._data_fingerprint(),
            "epochs_done": self.epochs_done,
            "step_in_epoch": self.step_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "embedding_optimizer": None if self.lazy is None else self.lazy.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
            "best": {
                "score": list(self.best_score) if isinstance(self.best_score, tuple) else None,
                "epoch": self.best_epoch,
                "state": self.best_state,
                "val": None if self.best_val is None else asdict(self.best_val),
                "test": None if self.best_test is None else asdict(self.best_test),
            },
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_samples": self.epoch_samples,
            "epoch_train_s": self.epoch_train_s,
        }
        name = f"ncf-ckpt-{self.epochs_done:04d}-{self.step_in_epoch:07d}.pt"
        path = self.checkpoint_dir / name
        tmp = self.checkpoint_dir / (name + ".tmp")
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp)
            tmp.replace(path)
        except Exception as exc:  # OSError, or the RuntimeError torch's zip writer raises on a full disk
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise CheckpointError(_checkpoint_failure(path, exc)) from exc
        for old in list_checkpoints(self.checkpoint_dir)[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        log.info("checkpoint %s", path)
        return path

    def _data_fingerprint(self) -> dict[str, int]:
        d = self.data
        return {
            "num_users": d.num_users,
            "num_items": d.num_items,
            "train_pairs": len(d.train_users),
            "train_checksum": int((d.train_users.astype(np.int64) * 31 + d.train_items).sum() % (2**61 - 1)),
        }

    def resume(self) -> bool:
        """Restore the newest readable checkpoint; False if there is none.

        Distributed: rank 0 reads it and sends it to every rank, so all replicas (and their optimiser
        moments) restart identical wherever the files are.
        """
        state = self._read_checkpoint() if self.dist.is_main else None
        if self.dist.world_size > 1:
            import torch.distributed as torch_dist

            box = [state]
            torch_dist.broadcast_object_list(box, src=0)
            state = box[0]
        if state is None:
            return False
        self._restore(state)
        return True

    def _read_checkpoint(self) -> dict[str, Any] | None:
        if self.checkpoint_dir is None:
            return None
        for path in reversed(list_checkpoints(self.checkpoint_dir)):
            try:
                state = torch.load(path, map_location=self.device, weights_only=False)
            except Exception as exc:  # a half-written file from a killed run: try the previous one
                log.warning("skipping unreadable checkpoint %s: %s", path, exc)
                continue
            if state.get("train_config") != self.config.fingerprint():
                raise ConfigError(
                    f"checkpoint {path} was written with different settings {state.get('train_config')}; "
                    "use the same hyperparameters or another checkpoint directory"
                )
            if state.get("data") != self._data_fingerprint():
                raise ConfigError(f"checkpoint {path} was written for different training data")
            if (state.get("embedding_optimizer") is None) != (self.lazy is None):
                written, now = ("dense", "lazy") if self.lazy is not None else ("lazy", "dense")
                raise ConfigError(
                    f"checkpoint {path} was written with {written} embedding updates and this run makes "
                    f"{now} ones (embedding_updates=auto decides by the number of processes); set "
                    f"embedding_updates={written} to resume it"
                )
            log.info("resuming from %s", path)
            return state
        return None

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lazy is not None:
            self.lazy.load_state_dict(state["embedding_optimizer"])
        if self.dist.is_main:  # other ranks keep their own dropout stream
            torch.set_rng_state(state["torch_rng"].cpu())
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.epochs_done = state["epochs_done"]
        self.step_in_epoch = state["step_in_epoch"]
        self.history = state["history"]
        best = state["best"]
        self.best_score = tuple(best["score"]) if best["score"] is not None else -math.inf
        self.best_epoch = best["epoch"]
        self.best_state = best["state"]
        self.best_val = Metrics(**best["val"]) if best["val"] else None
        self.best_test = Metrics(**best["test"]) if best["test"] else None
        self.epoch_loss_sum = state["epoch_loss_sum"]
        self.epoch_samples = state["epoch_samples"]
        self.epoch_train_s = state["epoch_train_s"]
        log.info("resumed: %d epochs done, step %d of the next", self.epochs_done, self.step_in_epoch)


def _checkpoint_failure(path: Path, exc: Exception) -> str:
    """'cannot write checkpoint PATH: CAUSE; N MiB free there; the previous checkpoint X is kept'."""
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})"
    else:
        cause = f"{type(exc).__name__}: {exc}"
    parts = [f"cannot write checkpoint {path}: {cause}"]
    with contextlib.suppress(OSError):
        parts.append(f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on its file system")
    with contextlib.suppress(OSError):
        earlier = list_checkpoints(path.parent)
        parts.append(
            f"the previous checkpoint {earlier[-1].name} is kept" if earlier else "no earlier checkpoint"
        )
    return "; ".join(parts)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints oldest first."""
    found = []
    for path in Path(directory).glob(CHECKPOINT_GLOB):
        m = _CHECKPOINT_RE.search(path.name)
        if m:
            found.append(((int(m.group(1)), int(m.group(2))), path))
    return [p for _, p in sorted(found)]


def train(
    data: Interactions,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    **kwargs: Any,
) -> TrainResult:
    """Train (resuming from ``checkpoint_dir`` when it holds a checkpoint) and return the kept model."""
    trainer = Trainer(data, config, checkpoint_dir=checkpoint_dir, **kwargs)
    if resume:
        trainer.resume()
    return trainer.fit()
