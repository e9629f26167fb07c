"""The ``train`` program: SageMaker's training-container contract adapted to ``ncf_core``.

Reads ``/opt/ml/input/config/*.json`` and the ``train`` channel (+ optional ``test``, and ``gmf`` + ``mlp``
to start a NeuMF from pre-trained halves), trains (possibly
data-parallel), writes the artifact to ``/opt/ml/model``, reports to ``/opt/ml/output/data``, checkpoints to
``/opt/ml/checkpoints`` and resumes from it. On SIGTERM it checkpoints and exits (code 143). Any failure
writes a one-paragraph reason to ``/opt/ml/output/failure`` (SageMaker's FailureReason) and exits 1.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import sys
import threading
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ncf_core import config as schema
from ncf_core import data as ncf_data
from ncf_core import runtime
from ncf_core.errors import ConfigError, DataError, NcfError
from ncf_core.jobs import train_to_artifact
from ncf_core.jsonio import write_json
from ncf_core.training import Distributed, EpochReport

from .. import contract, tracking
from . import distributed, pretrained, reports, script_mode

log = logging.getLogger("ncf_sagemaker.train")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STOPPED = 128 + signal.SIGTERM  # what a process killed by SIGTERM reports
FAILURE_LIMIT = 1024
_hard_exit = False  # SageMaker keeps the first 1024 characters as FailureReason


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def read_json(path: Path, default: Any) -> Any:
    """One of SageMaker's config files, which must hold a JSON object; ``default`` if it is absent."""
    if not path.is_file():
        return default
    try:
        value = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path.name} is not valid JSON: {exc}") from None
    if isinstance(value, dict):
        return value
    kind = _JSON_KINDS.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )
    raise ConfigError(f"{path} must be a JSON object, not {kind}")


def write_failure(reason: str) -> None:
    path = contract.failure_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reason[:FAILURE_LIMIT])
    except OSError as exc:  # never mask the original failure
        log.error("could not write %s: %s", path, exc)


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise DataError(
            f"expected exactly one '{pattern}' file in channel directory, found {len(found)}", directory
        )
    return found[0]


def load_job_data(options: schema.Settings) -> ncf_data.Interactions:
    """The ``train`` channel (NCF files or raw ratings), plus the ``test`` channel's NCF files if given."""
    cfg, split = options.config, options.data
    train_dir = contract.channel_dir(contract.TRAIN_CHANNEL)
    test_dir = contract.channel_dir(contract.TEST_CHANNEL)
    if not train_dir.is_dir():
        raise DataError("the required 'train' channel is missing (no directory)", train_dir)
    if test_dir.is_dir() and any(p for p in test_dir.iterdir() if not p.name.startswith(".")):
        data = ncf_data.load_ncf(
            _one(train_dir, "*" + ncf_data.NCF_SUFFIXES["train"]),
            _one(test_dir, "*" + ncf_data.NCF_SUFFIXES["test"]),
            _one(test_dir, "*" + ncf_data.NCF_SUFFIXES["negative"]),
        )
        if split.validation:
            ncf_data.add_validation(
                data, seed=cfg.seed, num_negatives=split.num_eval_negatives, chronological=False
            )
        return data
    return ncf_data.load(
        train_dir,
        seed=cfg.seed,
        num_eval_negatives=split.num_eval_negatives,
        validation=split.validation,
        min_rating=split.min_rating,
    )


class Job:
    def __init__(self, options: schema.Settings, placement: distributed.Placement, channels: list[str]):
        self.options = options
        self.placement = placement
        self.channels = channels
        self.stop: threading.Event | None = None  # made per process (an Event cannot be pickled to workers)
        self.hard_exit = False  # set after a distributed run: skip C++ destructors at exit

    def tracked_params(self) -> dict[str, Any]:
        """The resolved hyperparameters (defaults filled in) and where the job ran, for MLflow."""
        p = self.placement
        return (
            vars(self.options.config)
            | asdict(self.options.data)
            | {"world_size": p.world_size, "channels": ",".join(self.channels)}
        )

    def run_rank(self, local_rank: int) -> int:
        p = self.placement
        rank, world = p.rank(local_rank), p.world_size
        stop = self.stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        config = self.options.config
        if world > 1:
            import torch.distributed as torch_dist

            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = p.master_addr, str(p.master_port)
            log.info("rank %d/%d joining %s:%d (%s)", rank, world, p.master_addr, p.master_port, p.backend)
            if p.use_cuda:
                import torch

                # Before the group: NCCL's object collectives (resume's checkpoint broadcast) run on the
                # current device, which is cuda:0 in every worker unless set (a duplicate-GPU error).
                torch.cuda.set_device(local_rank)
            torch_dist.init_process_group(
                p.backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30)
            )
            config.device = p.device(local_rank)
            if not p.use_cuda and p.procs_per_host > 1:
                import torch

                # Several CPU workers share the host's cores: no oversubscription.
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // p.procs_per_host))
        run = tracking.start_training(self.tracked_params()) if rank == 0 else tracking.Run()
        try:
            data = load_job_data(self.options)
            history: list[dict[str, Any]] = []
            out = contract.output_data_dir()

            def on_epoch(report: EpochReport) -> None:
                history.append(report.as_dict())
                write_json(out / reports.METRICS_FILE, history)
                run.log_epoch(history[-1])

            result = train_to_artifact(
                data,
                config,
                contract.model_dir(),
                checkpoint_dir=contract.checkpoint_dir(),
                dist=Distributed(rank, world),
                should_stop=stop.is_set,
                on_epoch=on_epoch,
                extra_training_info={"world_size": world, "channels": self.channels},
            )
            if result.stopped:
                log.info(
                    "stopped on request; the checkpoint in %s resumes the run", contract.checkpoint_dir()
                )
                run.end(tracking.KILLED)
                return EXIT_STOPPED
            if rank == 0:
                summary = result.summary() | {"k": config.top_k, "world_size": world}
                write_json(out / reports.METRICS_FILE, result.history)
                write_json(out / reports.REPORT_FILE, summary)
                reports.write_learning_curve(out / reports.CURVE_FILE, result.history, result.best_epoch)
                # Scrapable like the epoch lines (so the job's final metrics are the kept epoch's), but
                # without an "epoch=" field that the epoch regex would pick up.
                final = {k: v for k, v in summary.items() if k not in ("best_epoch", "epochs_run")}
                log.info(
                    "final (kept epoch %d of %d): %s",
                    result.best_epoch,
                    summary["epochs_run"],
                    " ".join(f"{k}={v};" for k, v in final.items()),
                )
                run.log_kept(result.summary())
                for name in (reports.CURVE_FILE, reports.METRICS_FILE, reports.REPORT_FILE):
                    run.log_file(out / name, tracking.REPORTS_PATH)
                run.log_directory(contract.model_dir(), tracking.MODEL_PATH)
            run.end(tracking.FINISHED)
            return EXIT_OK
        except BaseException:
            run.end(tracking.FAILED)
            raise
        finally:
            if world > 1:
                if sys.exc_info()[0] is None:
                    # Leave together: a rank tearing gloo down while another still uses it aborts.
                    torch_dist.barrier()
                torch_dist.destroy_process_group()
                # gloo's C++ teardown at interpreter exit can still abort ("terminate called without an
                # active exception", exit -6) once the peer has gone; everything is written, so leave now.
                self.hard_exit = True


def _spawned_worker(local_rank: int, job: Job) -> None:
    _configure_logging()
    code = _guarded(lambda: job.run_rank(local_rank))
    if code != EXIT_OK:
        sys.exit(code)


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _guarded(body) -> int:
    """Run ``body``; turn any failure into output/failure + a non-zero exit code."""
    try:
        return body()
    except (NcfError, ValueError) as exc:
        log.error("%s", exc)
        write_failure(str(exc))
        return EXIT_FAILED
    except Exception as exc:
        log.error("unexpected error:\n%s", traceback.format_exc())
        write_failure(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED


def _run() -> int:
    raw = read_json(contract.hyperparameters_file(), {})
    resource_config = read_json(contract.resource_config_file(), {})
    input_config = read_json(contract.input_data_config_file(), None)
    if input_config is None:  # local runs: whatever channel directories exist
        data_root = contract.input_dir() / "data"
        input_config = {p.name: {} for p in data_root.iterdir()} if data_root.is_dir() else {}
    channels = sorted(input_config)

    program = script_mode.requested(raw)
    if program:
        code = script_mode.run(program, raw, resource_config, channels)
        if code != 0:
            write_failure(f"user script {program} exited with code {code}")
            return EXIT_FAILED if code > 0 else EXIT_STOPPED
        return EXIT_OK

    options = schema.parse_hyperparameters(raw)  # every check, before any data is read
    if contract.TRAIN_CHANNEL not in input_config:
        raise ConfigError(f"the 'train' channel is required; this job has channels {channels or 'none'}")
    pretrain_dir = pretrained.prepare(options.config.model)
    if pretrain_dir is not None:
        options.config.pretrain_dir = str(pretrain_dir)
    mpi = schema.convert(contract.MPI_ENABLED_HP, raw.get(contract.MPI_ENABLED_HP, "false"), bool)
    placement = distributed.resolve(resource_config, options.config.device, mpi_enabled=mpi)
    job = Job(options, placement, channels)
    log.info(
        "training %s on %s (%d worker(s) in all), hyperparameters %s",
        options.config.model,
        placement.current_host,
        placement.world_size,
        json.dumps(raw, sort_keys=True),
    )
    if placement.spawns_workers:
        import torch.multiprocessing as mp

        signal.signal(signal.SIGTERM, lambda *_: None)  # the workers get it through the process group
        try:
            mp.start_processes(
                _spawned_worker, args=(job,), nprocs=placement.procs_per_host, start_method="spawn"
            )
        except mp.ProcessExitedException as exc:
            if exc.exit_code == EXIT_STOPPED:
                return EXIT_STOPPED
            if not contract.failure_file().exists():
                write_failure(f"a training worker exited with code {exc.exit_code}")
            return EXIT_FAILED
        return EXIT_OK
    code = job.run_rank(placement.mpi_local_rank or 0)
    global _hard_exit
    _hard_exit = job.hard_exit
    return code


def main() -> int:
    _configure_logging()
    runtime.flush_denormals()  # before any torch thread starts
    code = _guarded(_run)
    sys.stdout.flush()
    if _hard_exit:
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
