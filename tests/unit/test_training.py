from __future__ import annotations

import copy
import errno
import itertools
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ncf_core.data import EvalSplit
from ncf_core.errors import CheckpointError, ConfigError, DataError
from ncf_core.evaluation import evaluate, evaluate_scores
from ncf_core.training import Distributed, TrainConfig, Trainer, list_checkpoints, train
from tests.support.synthetic import SMALL_DATA

FAST = TrainConfig(
    model="neumf", factor=8, num_layers=2, epochs=6, batch_size=512, lr=0.01, seed=3, **SMALL_DATA
)


def popularity_hr(data, k: int = 10) -> float:
    pop = np.bincount(data.train_items, minlength=data.num_items).astype(float)
    return evaluate_scores(pop[data.test.items], pop[data.test.negatives], k).hr


@pytest.mark.parametrize("updates", ["dense", "lazy"])
@pytest.mark.parametrize("model", ["gmf", "mlp", "neumf"])
def test_every_variant_learns_the_planted_structure(planted, model, updates):
    result = train(planted, replace(FAST, model=model, epochs=8, embedding_updates=updates))
    random_hr = 10 / 100
    assert result.test.hr > 0.6, result.history
    assert result.test.hr > popularity_hr(planted) + 0.3
    assert result.test.hr > random_hr + 0.4
    assert result.best_epoch >= 1 and len(result.history) == 8


def test_kept_epoch_is_chosen_on_validation_not_test(planted):
    result = train(planted, FAST)
    val_ndcg = [h["val_ndcg"] for h in result.history]
    assert result.best_epoch == int(np.argmax(val_ndcg)) + 1
    # The returned model is the kept epoch's: its test metrics are what the summary reports.
    again = evaluate(result.model, planted.test, 10)
    assert again.hr == pytest.approx(result.test.hr) and again.ndcg == pytest.approx(result.test.ndcg)


def test_pretrained_start_is_kept_when_fine_tuning_only_hurts(planted):
    start = train(planted, replace(FAST, epochs=6)).model
    start_val = evaluate(start, planted.val, 10)
    # A learning rate this high wrecks the model in one epoch: the start must win on validation.
    result = train(planted, replace(FAST, epochs=2, lr=5.0), initial_model=copy.deepcopy(start))
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert "loss" not in result.history[0] and result.history[0]["val_ndcg"] == pytest.approx(start_val.ndcg)
    assert result.history[1]["val_ndcg"] < start_val.ndcg
    assert result.best_epoch == 0
    for k, v in start.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k]), k


def test_fine_tuning_that_helps_replaces_the_pretrained_start(planted):
    start = train(planted, replace(FAST, epochs=1, lr=0.003)).model  # under-trained
    result = train(planted, replace(FAST, epochs=3), initial_model=copy.deepcopy(start))
    assert result.history[0]["epoch"] == 0 and result.best_epoch >= 1
    assert result.val.ndcg > result.history[0]["val_ndcg"]


def test_a_batch_too_large_for_the_data_is_warned_about(planted, caplog):
    with caplog.at_level("WARNING", logger="ncf_core.training"):
        Trainer(planted, FAST)
        assert not caplog.records
        Trainer(planted, replace(FAST, batch_size=32768, epochs=8))  # ML-1M's batch, 12k samples
    (record,) = caplog.records
    assert "too few to learn much; use a smaller batch_size (e.g. 256)" in record.getMessage()


def epoch_samples(trainer: Trainer, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    order = trainer.epoch_order(epoch)
    batches = [trainer.step_batch(epoch, step, order) for step in range(trainer.steps_per_epoch())]
    return tuple(torch.cat(parts) for parts in zip(*batches, strict=True))


def test_an_epoch_visits_each_positive_once_with_fresh_negatives_of_its_user(planted):
    trainer = Trainer(planted, FAST)
    positives = set(zip(planted.train_users.tolist(), planted.train_items.tolist(), strict=True))
    per = trainer.positives_per_step()
    for epoch in (1, 2):
        users, items, labels = epoch_samples(trainer, epoch)
        pos = labels == 1
        assert sorted(zip(users[pos].tolist(), items[pos].tolist(), strict=True)) == sorted(positives)
        assert int((~pos).sum()) == FAST.num_neg * len(planted.train_users)
        pairs = zip(users[~pos].tolist(), items[~pos].tolist(), strict=True)
        assert not any(p in positives for p in pairs)
        # Within a step, each positive is followed by num_neg negatives of the same user.
        step_users, _, step_labels = trainer.step_batch(epoch, 0, trainer.epoch_order(epoch))
        assert int(step_labels.sum()) == per
        assert torch.equal(step_users[per:], step_users[:per].repeat(FAST.num_neg))
    a = epoch_samples(trainer, 1)[1]
    b = epoch_samples(trainer, 2)[1]
    assert not torch.equal(a, b)  # re-sampled every epoch


def test_auto_embedding_updates_are_lazy_for_a_side_whose_tables_outnumber_a_batch(planted):
    users, items = planted.num_users, planted.num_items  # 240 and 120
    assert Trainer(planted, replace(FAST, batch_size=users)).lazy is None
    mixed = Trainer(planted, replace(FAST, batch_size=users - 1))
    assert mixed.lazy_sides == (True, False) and len(mixed.lazy.tables) == 2  # the user GMF and MLP tables
    both = Trainer(planted, replace(FAST, batch_size=items - 1))
    assert both.lazy_sides == (True, True) and len(both.lazy.tables) == 4
    assert len(Trainer(planted, replace(FAST, model="gmf", embedding_updates="lazy")).lazy.tables) == 2
    # Data-parallel training keeps dense updates (DDP all-reduces dense gradients only).
    with pytest.raises(ConfigError, match="embedding_updates=lazy needs one process"):
        Trainer(planted, replace(FAST, embedding_updates="lazy"), dist=Distributed(rank=0, world_size=2))


@pytest.mark.parametrize("updates", ["dense", "lazy"])
def test_the_mlp_part_takes_mlp_weight_decay_and_the_gmf_part_weight_decay(planted, updates):
    """A strong decay on one part shrinks that part's tables and leaves the other part's as without it."""
    norms = {}
    for name, decays in {"none": (0.0, 0.0), "mlp": (0.0, 400.0), "gmf": (400.0, 0.0)}.items():
        cfg = replace(FAST, epochs=2, embedding_updates=updates)
        cfg = replace(cfg, weight_decay=decays[0], mlp_weight_decay=decays[1])
        model = Trainer(planted, cfg).fit().model
        tables = ("embed_item_gmf", "embed_item_mlp")
        norms[name] = {t: getattr(model, t).weight.norm().item() for t in tables}
    assert norms["mlp"]["embed_item_mlp"] < 0.5 * norms["none"]["embed_item_mlp"], norms
    assert norms["mlp"]["embed_item_gmf"] > 0.8 * norms["none"]["embed_item_gmf"], norms
    assert norms["gmf"]["embed_item_gmf"] < 0.5 * norms["none"]["embed_item_gmf"], norms
    assert norms["gmf"]["embed_item_mlp"] > 0.8 * norms["none"]["embed_item_mlp"], norms


def test_lazy_users_with_dense_items_learn_the_planted_structure(planted):
    result = train(planted, replace(FAST, epochs=8, batch_size=200))  # auto: 240 users > 200, 120 items
    assert result.test.hr > 0.6, result.history


def test_a_checkpoint_of_the_other_embedding_updates_is_refused(planted, tmp_path: Path, monkeypatch):
    Trainer(planted, FAST, checkpoint_dir=tmp_path).save_checkpoint()  # auto: dense on this data
    monkeypatch.setattr(Trainer, "_lazy_sides", lambda self: (True, True))  # as auto with one process fewer
    with pytest.raises(ConfigError, match=r"written with dense embedding updates .* embedding_updates=dense"):
        Trainer(planted, FAST, checkpoint_dir=tmp_path).resume()


def test_same_seed_same_model(planted):
    a = train(planted, replace(FAST, epochs=2))
    b = train(planted, replace(FAST, epochs=2))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def strip_timing(history):
    return [{k: v for k, v in h.items() if not k.endswith("_s")} for h in history]


@pytest.mark.parametrize(
    ("stop_after_calls", "pretrained", "updates"),
    # mid-epoch 1, mid-epoch 2 (dense and lazy embedding updates); from a pre-trained start (epoch 0)
    [(3, False, "dense"), (30, False, "dense"), (30, False, "lazy"), (3, True, "dense")],
)
def test_interrupted_run_resumes_to_the_same_result(
    planted, tmp_path: Path, stop_after_calls: int, pretrained: bool, updates: str
):
    # The dropout RNG, the lr schedule and the lazy optimiser's moments must all resume.
    cfg = replace(FAST, epochs=3, dropout=0.2, lr_decay=0.1, embedding_updates=updates)
    start = train(planted, replace(FAST, epochs=1, lr=0.003)).model if pretrained else None

    def run(**kwargs):  # every run starts from its own copy of the same pre-trained weights
        return train(planted, cfg, initial_model=copy.deepcopy(start), **kwargs)

    full = run(checkpoint_dir=tmp_path / "full")
    assert [h["epoch"] for h in full.history] == ([0, 1, 2, 3] if pretrained else [1, 2, 3])

    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= stop_after_calls

    ckpt = tmp_path / "ckpt"
    first = run(checkpoint_dir=ckpt, should_stop=stop)
    assert first.stopped and list_checkpoints(ckpt)
    resumed = run(checkpoint_dir=ckpt)
    assert not resumed.stopped
    assert strip_timing(resumed.history) == strip_timing(full.history)
    assert resumed.best_epoch == full.best_epoch
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_only_the_newest_checkpoints_are_kept(planted, tmp_path: Path):
    train(planted, replace(FAST, epochs=4), checkpoint_dir=tmp_path)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ncf-ckpt-0003-0000000.pt", "ncf-ckpt-0004-0000000.pt"]


def test_unreadable_newest_checkpoint_falls_back_to_previous(planted, tmp_path: Path):
    train(planted, replace(FAST, epochs=2), checkpoint_dir=tmp_path)
    list_checkpoints(tmp_path)[-1].write_bytes(b"truncated")
    trainer = Trainer(planted, replace(FAST, epochs=2), checkpoint_dir=tmp_path)
    assert trainer.resume() and trainer.epochs_done == 1


def fail_checkpoint_writes(monkeypatch, exc: Exception, after: int = 0) -> None:
    """``torch.save`` writes the first ``after`` checkpoints, then half a file before raising ``exc``."""
    real, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= after:
            return real(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"half a checkpoint")
        raise exc

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device (ENOSPC)"),
        (  # what torch's zip writer raises when the disk fills up
            RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed"),
            "RuntimeError: PytorchStreamWriter failed writing file data/3: file write failed",
        ),
    ],
)
def test_failed_checkpoint_write_keeps_the_previous_one(planted, tmp_path: Path, monkeypatch, exc, cause):
    fail_checkpoint_writes(monkeypatch, exc, after=1)
    with pytest.raises(CheckpointError) as err:
        train(planted, replace(FAST, epochs=3), checkpoint_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(f"cannot write checkpoint {tmp_path / 'ncf-ckpt-0002-0000000.pt'}: {cause}; ")
    assert "MiB free on its file system" in message
    assert message.endswith("the previous checkpoint ncf-ckpt-0001-0000000.pt is kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ncf-ckpt-0001-0000000.pt"]  # no .tmp left
    monkeypatch.undo()
    trainer = Trainer(planted, replace(FAST, epochs=3), checkpoint_dir=tmp_path)
    assert trainer.resume() and trainer.epochs_done == 1


def test_resume_with_other_settings_is_refused(planted, tmp_path: Path):
    train(planted, replace(FAST, epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="different settings"):
        train(planted, replace(FAST, epochs=2, lr=0.5), checkpoint_dir=tmp_path)


@pytest.mark.parametrize(
    "test", [None, EvalSplit(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 99), np.int64))]
)
def test_data_without_test_users_is_refused(planted, test):
    with pytest.raises(
        DataError, match="no test users: the data holds no held-out interaction to evaluate on"
    ):
        Trainer(replace(planted, test=test), FAST)


def test_epoch_log_lines_are_scrapable(planted, caplog):
    caplog.set_level("INFO", logger="ncf_core.training")
    train(planted, replace(FAST, epochs=1))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch="))
    for name in ("epoch", "loss", "train_s", "eval_s", "val_hr", "val_ndcg", "hr", "ndcg"):
        assert re.search(rf"(?:^| ){name}=([0-9.e+-]+);", line), (name, line)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("lr", float("nan")),
        ("epochs", 0),
        ("batch_size", 0),
        ("num_neg", 0),
        ("model", "x"),
        ("device", "tpu"),
    ],
)
def test_invalid_training_config(field, value):
    with pytest.raises(ConfigError):
        replace(FAST, **{field: value}).validate()


def test_cuda_requested_without_cuda_is_a_clear_error(planted):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Trainer(planted, replace(FAST, device="cuda"))


def test_long_epochs_log_progress_lines_the_metric_regexes_do_not_read(planted, caplog):
    import json

    from tests.support.paths import ROOT

    config = replace(FAST, epochs=1, batch_size=64)
    with caplog.at_level("INFO", logger="ncf_core.training"):
        Trainer(planted, config, progress_interval_s=0.0).fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    steps = -(-len(planted.train_users) * (1 + config.num_neg) // config.batch_size)
    assert 1 <= len(lines) <= steps  # at most one per step even with a zero interval
    fields = dict(re.findall(r"(\w+)=([0-9.inf]+);", lines[-1]))
    names = "epoch_number epoch_samples_done epoch_samples samples_per_s recent_samples_per_s eta_s"
    assert set(fields) == set(names.split())
    assert int(fields["epoch_samples_done"]) < int(fields["epoch_samples"])
    definitions = json.loads((ROOT / "scripts" / "metric_definitions.json").read_text())["MetricDefinitions"]
    for line in lines:
        assert not any(re.search(d["Regex"], line) for d in definitions), line
    with caplog.at_level("INFO", logger="ncf_core.training"):
        caplog.clear()
        Trainer(planted, config).fit()  # the default interval: a short epoch logs no progress at all
    assert not [r for r in caplog.records if r.getMessage().startswith("progress:")]


@pytest.mark.parametrize("updates", ["dense", "lazy"])
def test_weight_decay_does_not_drive_a_silent_unit_to_zero(planted, updates):
    """The collapse at ML-20M scale: L2 added to Adam's gradient moved a weight with no data gradient (a
    dead ReLU unit's) by ~lr a step whatever the decay, so dead units' weights went to zero and on into
    subnormals. Decoupled decay shrinks them by ``lr × decay / steps_per_epoch`` a step, and no faster."""
    cfg = replace(FAST, epochs=2, embedding_updates=updates, mlp_weight_decay=1.0, warmup_steps=0)
    trainer = Trainer(planted, cfg)
    layer = trainer.model.mlp_layers[1]
    with torch.no_grad():
        layer.bias[0] = -1e4  # unit 0 never fires: its incoming weights get no data gradient
    before = layer.weight[0].detach().clone()
    trainer.fit()
    steps = trainer.steps_per_epoch()
    shrink = (1 - cfg.lr * cfg.mlp_weight_decay / steps) ** (steps * cfg.epochs)  # a constant lr in FAST
    assert torch.allclose(layer.weight[0], before * shrink, rtol=1e-4, atol=0)
    assert layer.weight[0].abs().min() > 1e-6


@pytest.mark.parametrize("updates", ["dense", "lazy"])
def test_a_row_no_step_uses_decays_alike_whichever_way_its_table_is_updated(planted, updates):
    """Every row decays by ``1 - lr × decay / steps_per_epoch`` a step, the user rows of a lazily updated
    table too (paid when used, and before every evaluation)."""
    cfg = replace(FAST, epochs=2, embedding_updates=updates, weight_decay=5.0, mlp_weight_decay=10.0)
    cfg = replace(cfg, warmup_steps=0)  # a constant lr
    unused = 7
    keep = planted.train_users != unused
    data = replace(planted, train_users=planted.train_users[keep], train_items=planted.train_items[keep])
    trainer = Trainer(data, cfg)
    before = trainer.model.embed_user_gmf.weight[unused].detach().clone()
    mlp_before = trainer.model.embed_user_mlp.weight[unused].detach().clone()
    trainer.fit()
    steps = trainer.steps_per_epoch()
    for now, was, decay in (
        (trainer.model.embed_user_gmf.weight[unused], before, 5.0),
        (trainer.model.embed_user_mlp.weight[unused], mlp_before, 10.0),
    ):
        assert torch.allclose(now, was * (1 - cfg.lr * decay / steps) ** (steps * cfg.epochs), rtol=1e-4)


def test_a_trained_network_stays_alive(planted):
    """Training on the planted data leaves no layer past the health warning's thresholds."""
    from ncf_core.health import dying, network_health

    result = train(planted, replace(FAST, epochs=8))
    health = network_health(result.model)
    assert dying(health) == [], [h.as_dict() for h in health]


def test_the_recent_rate_follows_a_slowdown_the_average_hides():
    from ncf_core.training import RateMeter

    meter = RateMeter(0.0)
    meter.update(1000, 1.0)  # 1,000 samples/s
    assert meter.recent == meter.average == 1000
    for t in range(2, 6):
        meter.update(1000 + 100 * (t - 1), float(t))  # then 100 samples/s
    assert meter.average == pytest.approx(1400 / 5)
    assert meter.recent < 200 < meter.average


def test_the_learning_rate_warms_up_over_at_most_a_fifth_of_the_run_then_decays(planted):
    cfg = replace(FAST, epochs=4, lr=0.1, lr_decay=0.1, warmup_steps=10)
    trainer = Trainer(planted, cfg)
    steps = trainer.steps_per_epoch()
    assert 4 * steps // 5 > 10  # the warm-up fits: 10 steps

    def lr_at(epoch: int, step: int) -> float:
        trainer._set_lr(epoch, step, steps)
        return trainer.optimizer.param_groups[0]["lr"]

    def expected(done: int) -> float:  # warm-up factor times linear decay to lr × 0.1 at the last step
        return 0.1 * min(1.0, (done + 1) / 11) * (1 - 0.9 * done / (4 * steps - 1))

    rising = [lr_at(1, s) for s in range(12)]
    assert rising == pytest.approx([expected(s) for s in range(12)])
    assert all(b > a for a, b in itertools.pairwise(rising[:10]))
    assert lr_at(2, 5) == pytest.approx(expected(steps + 5))
    assert lr_at(4, steps - 1) == pytest.approx(0.01)
    short = Trainer(planted, replace(cfg, epochs=1, warmup_steps=10_000))
    short._set_lr(1, steps // 5, steps)  # capped at a fifth of the run: the full rate by then
    assert short.optimizer.param_groups[0]["lr"] == pytest.approx(
        0.1 * (1 - 0.9 * (steps // 5) / (steps - 1))
    )


def test_a_fresh_network_starts_at_the_label_prior_and_a_pretrained_one_as_it_was(planted):
    """The output bias starts at the log-odds of a positive among a step's samples, so the first steps do
    not push every logit (and the MLP units behind them) down."""
    cfg = replace(FAST, num_neg=4)
    fresh = Trainer(planted, cfg).model
    assert fresh.predict_layer.bias.item() == pytest.approx(-math.log(4))
    start = copy.deepcopy(fresh)
    with torch.no_grad():
        start.predict_layer.bias.fill_(0.25)
    assert Trainer(planted, cfg, initial_model=start).model.predict_layer.bias.item() == 0.25


def test_weight_decay_never_shrinks_a_weight_by_more_than_a_tenth_in_one_step(planted):
    """Decay per epoch over an epoch of 3 steps: 1 - lr × decay / 3 would flip every weight's sign."""
    cfg = replace(
        FAST, batch_size=len(planted.train_users) * 5 // 3, lr=0.1, weight_decay=90.0, mlp_weight_decay=90.0
    )
    trainer = Trainer(planted, cfg)
    assert trainer.steps_per_epoch() <= 3
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == pytest.approx([0.1 / cfg.lr])


def test_an_epoch_is_marked_at_each_tenth_of_its_steps(planted):
    """The scale benchmark's first and last tenth rates come from these marks: the last one must span a
    tenth of the epoch, not the step or two a ``steps // 10`` stride leaves over."""
    trainer = Trainer(planted, replace(FAST, epochs=1))
    trainer.fit()
    steps, per_step = trainer.steps_per_epoch(), trainer.positives_per_step() * (1 + FAST.num_neg)
    samples = [s for s, _ in trainer.epoch_marks]
    assert len(samples) == 11 and samples[0] == 0 and samples[-1] == trainer.epoch_samples
    assert samples[-2] <= (steps * 9 // 10) * per_step
    assert all(b > a for a, b in itertools.pairwise(samples))


@pytest.mark.parametrize("updates", ["dense", "lazy"])
def test_bf16_autocast_learns_like_fp32_with_fp32_weights(planted, updates):
    """bf16 is the step's matrix maths only: parameters (and so the artifact) and the loss stay fp32."""
    fp32 = train(planted, replace(FAST, precision="fp32", embedding_updates=updates))
    bf16 = train(planted, replace(FAST, precision="bf16", embedding_updates=updates))
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert bf16.test.hr > popularity_hr(planted) + 0.3
    assert abs(bf16.test.hr - fp32.test.hr) < 0.1, (bf16.test, fp32.test)
    assert all(math.isfinite(h["loss"]) for h in bf16.history if "loss" in h)


def test_precision_is_checked_before_training(planted):
    with pytest.raises(ConfigError, match="precision=fp16 needs a CUDA device"):
        Trainer(planted, replace(FAST, precision="fp16", device="cpu"))
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, tf32, bf16, fp16, got 'hal"):
        Trainer(planted, replace(FAST, precision="half"))
