"""Where this process sits in a data-parallel job, from SageMaker's resourceconfig.json or from MPI.

- ``torch_distributed`` style (default): SageMaker starts ``train`` once per host; this program starts one
  worker per GPU (one per host on CPU), ranks ordered by host then local index, master = first host.
- MPI style (``sagemaker_mpi_enabled``, the seed workshop's Horovod route): ``mpirun`` already started one
  process per slot, so rank, world size and local rank come from the MPI environment and nothing is spawned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ncf_core.errors import ConfigError

MASTER_PORT_ENV = "NCF_MASTER_PORT"  # ours: the rendezvous port (tests pick a free one)
DEFAULT_MASTER_PORT = 29500
PROCS_PER_HOST_ENV = "NCF_PROCS_PER_HOST"  # ours: override workers per host (default: GPUs, or 1 on CPU)
MPI_RANK_ENVS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK")
MPI_SIZE_ENVS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
MPI_LOCAL_RANK_ENVS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


@dataclass(frozen=True)
class Placement:
    hosts: tuple[str, ...]
    current_host: str
    procs_per_host: int
    master_addr: str
    master_port: int
    backend: str
    use_cuda: bool
    mpi_rank: int | None = None  # set when MPI started us: no spawning
    mpi_local_rank: int | None = None
    mpi_world_size: int | None = None

    @property
    def world_size(self) -> int:
        return (
            self.mpi_world_size if self.mpi_world_size is not None else len(self.hosts) * self.procs_per_host
        )

    @property
    def host_rank(self) -> int:
        return self.hosts.index(self.current_host)

    def rank(self, local_rank: int) -> int:
        if self.mpi_rank is not None:
            return self.mpi_rank
        return self.host_rank * self.procs_per_host + local_rank

    def device(self, local_rank: int) -> str:
        return f"cuda:{local_rank}" if self.use_cuda else "cpu"

    @property
    def spawns_workers(self) -> bool:
        return self.mpi_rank is None and self.procs_per_host > 1


def _first_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in os.environ:
            return os.environ[name]
    return None


def resolve(resource_config: dict[str, Any], device: str = "auto", mpi_enabled: bool = False) -> Placement:
    hosts = resource_config.get("hosts") or ["algo-1"]
    current = resource_config.get("current_host") or hosts[0]
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError("resourceconfig.json: 'hosts' must be a list of host names")
    if current not in hosts:
        raise ConfigError(f"resourceconfig.json: current_host {current!r} is not in hosts {hosts}")
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    gpus = torch.cuda.device_count() if use_cuda else 0
    per_host = int(os.environ.get(PROCS_PER_HOST_ENV, gpus or 1))
    if per_host < 1:
        raise ConfigError(f"{PROCS_PER_HOST_ENV} must be ≥ 1")
    if use_cuda and per_host > gpus:
        raise ConfigError(f"{per_host} workers per host requested but only {gpus} GPUs are visible")
    port = int(os.environ.get(MASTER_PORT_ENV, DEFAULT_MASTER_PORT))
    # One host: no name resolution needed (and none possible in a plain local run).
    master = hosts[0] if len(hosts) > 1 else "127.0.0.1"
    backend = "nccl" if use_cuda else "gloo"
    mpi_rank = _first_env(MPI_RANK_ENVS)
    if mpi_enabled and mpi_rank is not None:
        size = _first_env(MPI_SIZE_ENVS)
        local = _first_env(MPI_LOCAL_RANK_ENVS) or "0"
        return Placement(
            tuple(hosts),
            current,
            1,
            master,
            port,
            backend,
            use_cuda,
            int(mpi_rank),
            int(local),
            int(size or 1),
        )
    return Placement(tuple(hosts), current, per_host, master, port, backend, use_cuda)
