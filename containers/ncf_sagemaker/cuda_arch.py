"""The GPU instance families our images claim, and the image-build check that torch carries kernels for them.

    python -m ncf_sagemaker.cuda_arch                        the supported families (SUPPORTED_FAMILIES)
    python -m ncf_sagemaker.cuda_arch --families g5,p5       others (family names or sm_XY)
    python -m ncf_sagemaker.cuda_arch --require-cuda         a CPU build of torch fails too (--gpu images)

Both Dockerfiles run it in their build stage (build ARGs CUDA_FAMILIES and REQUIRE_CUDA): a CUDA build of
torch without kernels for a family fails the build, naming the family and the missing architecture. A CPU
build passes (CI's and the CPU images' torch) unless --require-cuda. No GPU is needed: the kernel list is
compiled into torch (``torch.cuda.get_arch_list()`` reads ``torch._C._cuda_getArchFlags()``; it is empty
only for a torch built without CUDA).

This module is the one place for the table: the README's GPU table and docs/training.md are checked
against it (tests/unit/test_cuda_arch.py). It lives beside the images' code, not in contract.py (SageMaker's
names and paths), because it is a statement about the torch build, checked where the build happens.

Which kernels run on which GPU (CUDA's compatibility rules): a cubin ``sm_XY`` runs on compute capability
X.Z for Z >= Y (same major version only: sm_75 kernels do not run on a 7.0 V100); ``sm_XYa`` only on X.Y
itself; ``sm_XYf`` on the X family from X.Y up; PTX ``compute_XY`` is compiled by the driver for any
capability >= X.Y.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple


class GpuFamily(NamedTuple):
    gpu: str
    capability: tuple[int, int]  # CUDA compute capability

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


# SageMaker GPU instance families (ml.<family>.*), one GPU model each.
GPU_FAMILIES: dict[str, GpuFamily] = {
    "p3": GpuFamily("V100", (7, 0)),
    "g4dn": GpuFamily("T4", (7, 5)),
    "g5": GpuFamily("A10G", (8, 6)),
    "p4d": GpuFamily("A100", (8, 0)),
    "g6": GpuFamily("L4", (8, 9)),
    "p5": GpuFamily("H100", (9, 0)),
}
# What the images claim, and what the build checks by default. Not p3: torch 2.13.0's default Linux wheel
# (PyPI, CUDA 13.0) has no sm_70 kernels (CUDA 13 dropped Volta), so a V100 gets no kernels from it.
SUPPORTED_FAMILIES: tuple[str, ...] = ("g4dn", "g5", "p4d", "g6", "p5")

_ARCH = re.compile(r"^(sm|compute)_(\d+)([af]?)$")
_SM = re.compile(r"^sm_(\d+)$")


def parse_arch(arch: str) -> tuple[str, tuple[int, int], str]:
    """(kind, capability, suffix): 'sm_86' -> ('sm', (8, 6), ''); 'compute_120' -> ('compute', (12, 0), '').

    The number is major * 10 + minor (sm_100: 10.0); an 'a' / 'f' suffix marks arch- / family-specific code.
    """
    m = _ARCH.match(arch)
    if not m:
        raise ValueError(f"not a CUDA architecture: {arch!r}")
    kind, number, suffix = m.groups()
    return kind, divmod(int(number), 10), suffix


def runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether kernels compiled for ``arch`` run on a GPU of compute capability ``capability``."""
    kind, code, suffix = parse_arch(arch)
    if suffix == "a":
        return capability == code
    if kind == "compute" and not suffix:  # PTX: the driver compiles it for any later GPU
        return capability >= code
    return capability[0] == code[0] and capability[1] >= code[1]


def kernels_for(capability: tuple[int, int], arch_list: Iterable[str]) -> list[str]:
    """The entries of ``arch_list`` that run on ``capability``."""
    return [a for a in arch_list if runs_on(a, capability)]


def resolve(tokens: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Family names ('g5'), 'supported' (SUPPORTED_FAMILIES) or architectures ('sm_89') -> capability."""
    out: dict[str, tuple[int, int]] = {}
    for token in tokens:
        if token == "supported":
            out |= {f: GPU_FAMILIES[f].capability for f in SUPPORTED_FAMILIES}
        elif token in GPU_FAMILIES:
            out[token] = GPU_FAMILIES[token].capability
        elif m := _SM.match(token):
            out[token] = divmod(int(m.group(1)), 10)
        else:
            raise ValueError(
                f"unknown GPU family or architecture {token!r} (known: {', '.join(GPU_FAMILIES)})"
            )
    return out


def missing(required: dict[str, tuple[int, int]], arch_list: Sequence[str]) -> list[str]:
    """One line per required family / architecture that no entry of ``arch_list`` runs on."""
    lines = []
    for name, cc in required.items():
        if not kernels_for(cc, arch_list):
            family = GPU_FAMILIES.get(name)
            what = f"{name} ({family.gpu}, sm_{cc[0]}{cc[1]})" if family else name
            lines.append(f"{what}: no kernels for compute capability {cc[0]}.{cc[1]}")
    return lines


def check(
    version: str, cuda: str | None, arch_list: Sequence[str], tokens: Iterable[str], require_cuda: bool
) -> tuple[bool, list[str]]:
    """(passed, report lines) for a torch build: its version, torch.version.cuda, get_arch_list()."""
    if cuda is None:
        if require_cuda:
            return False, [f"torch {version} is a CPU build; this image needs a CUDA build (--require-cuda)"]
        return True, [f"torch {version} is a CPU build: no CUDA kernels to check"]
    required = resolve(tokens)
    report = [f"torch {version}, CUDA {cuda}, kernels: {' '.join(arch_list) or '(none)'}"]
    for name, cc in required.items():
        found = kernels_for(cc, arch_list)
        family = GPU_FAMILIES.get(name)
        label = f"{name} {family.gpu} sm_{cc[0]}{cc[1]}" if family else name
        report.append(f"  {label}: {' '.join(found) if found else 'MISSING'}")
    gaps = missing(required, arch_list)
    if gaps:
        report.append(f"torch {version} (CUDA {cuda}) cannot run on:")
        report += [f"  {line}" for line in gaps]
        report.append("pick a torch build that has them, or leave these out of CUDA_FAMILIES")
    return not gaps, report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ncf_sagemaker.cuda_arch",
        description="Check that the installed torch has CUDA kernels for the GPU families we claim.",
    )
    p.add_argument(
        "--families",
        default="supported",
        help="comma- or space-separated families (g5) or architectures (sm_89); 'supported' (default): "
        + " ".join(SUPPORTED_FAMILIES),
    )
    p.add_argument("--require-cuda", action="store_true", help="a CPU build of torch fails the check too")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    tokens = args.families.replace(",", " ").split()
    try:
        resolve(tokens)  # a typo fails before torch is imported
    except ValueError as e:
        print(f"cuda_arch: {e}", file=sys.stderr)
        return 2
    import torch

    ok, report = check(
        torch.__version__, torch.version.cuda, torch.cuda.get_arch_list(), tokens, args.require_cuda
    )
    print("\n".join(report), file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
