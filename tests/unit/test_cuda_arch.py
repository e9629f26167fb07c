"""ncf_sagemaker.cuda_arch, the images' build-time check that torch has kernels for the GPU families we claim:
CUDA's compatibility rules on injected kernel lists (among them the real one of torch 2.13.0's PyPI wheel),
the CPU-build pass, and the README's GPU table against the module's."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from ncf_sagemaker import cuda_arch
from ncf_sagemaker.cuda_arch import (
    GPU_FAMILIES,
    SUPPORTED_FAMILIES,
    check,
    kernels_for,
    missing,
    resolve,
    runs_on,
)
from tests.support import ROOT

# torch.cuda.get_arch_list() of torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl (PyPI, 2.13.0+cu130)
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize(
    ("arch", "parsed"),
    [
        ("sm_70", ("sm", (7, 0), "")),
        ("sm_86", ("sm", (8, 6), "")),
        ("sm_90a", ("sm", (9, 0), "a")),
        ("sm_100f", ("sm", (10, 0), "f")),
        ("sm_120", ("sm", (12, 0), "")),
        ("compute_80", ("compute", (8, 0), "")),
    ],
)
def test_parse_arch(arch, parsed):
    assert cuda_arch.parse_arch(arch) == parsed


@pytest.mark.parametrize("bad", ["", "sm70", "sm_", "gfx90a", "sm_86b", "compute_x"])
def test_parse_arch_refuses_what_is_not_an_architecture(bad):
    with pytest.raises(ValueError, match="not a CUDA architecture"):
        cuda_arch.parse_arch(bad)


@pytest.mark.parametrize(
    ("arch", "capability", "expected"),
    [
        ("sm_86", (8, 6), True),
        ("sm_86", (8, 9), True),  # same major, later minor: an L4 runs A10G cubins
        ("sm_80", (8, 6), True),
        ("sm_86", (8, 0), False),  # an earlier minor does not
        ("sm_75", (7, 0), False),  # a V100 runs no Turing cubin
        ("sm_80", (9, 0), False),  # nor across majors
        ("sm_90a", (9, 0), True),
        ("sm_90a", (10, 0), False),
        ("sm_100f", (10, 3), True),
        ("compute_70", (9, 0), True),  # PTX: compiled by the driver for later GPUs
        ("compute_90", (8, 9), False),
    ],
)
def test_runs_on_follows_cudas_compatibility_rules(arch, capability, expected):
    assert runs_on(arch, capability) is expected


def test_torch_2_13_pypi_wheel_covers_the_supported_families_but_not_p3():
    assert missing(resolve(["supported"]), CU130) == []
    assert kernels_for(GPU_FAMILIES["g6"].capability, CU130) == ["sm_80", "sm_86"]  # no sm_89 of its own
    assert missing(resolve(["p3"]), CU130) == ["p3 (V100, sm_70): no kernels for compute capability 7.0"]
    assert "p3" not in SUPPORTED_FAMILIES and set(SUPPORTED_FAMILIES) <= set(GPU_FAMILIES)


def test_check_names_what_is_missing():
    ok, report = check("2.13.0+cu118", "11.8", ["sm_70", "sm_75", "sm_80", "sm_86"], ["supported"], False)
    assert not ok
    text = "\n".join(report)
    assert "p5 H100 sm_90: MISSING" in text
    assert "p5 (H100, sm_90): no kernels for compute capability 9.0" in text
    assert "g6 L4 sm_89: sm_80 sm_86" in text  # covered, so not among the missing
    assert "g6 (" not in text


def test_check_passes_the_real_cuda_build_and_reports_its_kernels():
    ok, report = check("2.13.0+cu130", "13.0", CU130, ["supported"], True)
    assert ok
    assert report[0] == "torch 2.13.0+cu130, CUDA 13.0, kernels: sm_75 sm_80 sm_86 sm_90 sm_100 sm_120"
    assert len(report) == 1 + len(SUPPORTED_FAMILIES)


def test_a_cuda_build_without_kernels_fails():
    ok, report = check("2.13.0+cu130", "13.0", [], ["g5"], False)
    assert not ok and "kernels: (none)" in report[0]


def test_cpu_build_passes_unless_cuda_is_required():
    assert check("2.13.0+cpu", None, [], ["supported"], False) == (
        True,
        ["torch 2.13.0+cpu is a CPU build: no CUDA kernels to check"],
    )
    ok, report = check("2.13.0+cpu", None, [], ["supported"], True)
    assert not ok and "CPU build" in report[0] and "--require-cuda" in report[0]


def test_resolve_takes_families_supported_and_architectures():
    assert resolve(["g5", "sm_89"]) == {"g5": (8, 6), "sm_89": (8, 9)}
    assert list(resolve(["supported"])) == list(SUPPORTED_FAMILIES)
    with pytest.raises(ValueError, match="unknown GPU family or architecture 'g7'"):
        resolve(["g7"])


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "ncf_sagemaker.cuda_arch", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_program_against_this_machines_torch():
    proc = run_module("--families", "g5,p5")
    assert proc.returncode == 0, proc.stderr
    if torch.version.cuda is None:
        assert proc.stdout == f"torch {torch.__version__} is a CPU build: no CUDA kernels to check\n"
        assert run_module("--require-cuda").returncode == 1
    else:
        assert proc.stdout.startswith(f"torch {torch.__version__}, CUDA {torch.version.cuda}, kernels: ")


def test_the_program_refuses_an_unknown_family():
    proc = run_module("--families", "g5,x1")
    assert proc.returncode == 2
    assert "unknown GPU family or architecture 'x1'" in proc.stderr


def test_readme_gpu_table_matches_the_module():
    """Every family of the module has its row in README's GPU table, with its GPU, sm and supported column."""
    section = (ROOT / "README.md").read_text().split("\n## GPU\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`ml."):
            rows[re.match(r"`ml\.(\w+)\.", cells[0]).group(1)] = cells
    assert set(rows) == set(GPU_FAMILIES)
    for family, (gpu, _) in GPU_FAMILIES.items():
        cells = rows[family]
        assert cells[1] == gpu and cells[2] == GPU_FAMILIES[family].sm, cells
        assert cells[3].startswith("yes" if family in SUPPORTED_FAMILIES else "no"), cells
