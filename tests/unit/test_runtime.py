"""Flush-to-zero: subnormal floats must not reach any thread torch computes on (they cost some x86
processors ~100x per operation), and a call that comes too late to reach every thread says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import logging, sys, torch
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from ncf_core import runtime
torch.set_num_threads(2)
if sys.argv[1] == "late":
    (torch.full((1_000_000,), 1e-30) * 2).sum()  # torch's thread pool starts before the call
before = runtime.subnormals_survive() if sys.argv[1] == "never" else None
print(runtime.flush_denormals(), runtime.subnormals_survive(), before)
"""


def run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=120)


def test_called_first_it_flushes_on_every_thread():
    out = run("early")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "None"]
    assert "WARNING" not in out.stderr


def test_without_it_subnormals_survive():
    """The check itself can fail: without flushing, an underflowing product stays subnormal."""
    out = run("never")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[2] == "True"


def test_called_after_the_thread_pool_started_it_warns_and_says_so():
    out = run("late")
    assert out.returncode == 0, out.stderr
    flushing, survive, _ = out.stdout.split()
    if survive == "False":
        pytest.skip("this torch build's threads took the mode anyway")
    assert flushing == "False"
    assert "not on all of torch's threads" in out.stderr


def test_bf16_hardware_is_read_from_the_cpu_flags(tmp_path):
    from ncf_core.runtime import cpu_has_bf16

    def cpuinfo(flags: str):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n")
        return str(path)

    assert cpu_has_bf16(cpuinfo("avx2 avx512f avx512_bf16"))  # AMD Zen 4, Intel Cooper Lake
    assert cpu_has_bf16(cpuinfo("avx512f amx_tile amx_bf16"))  # Intel Sapphire Rapids
    assert not cpu_has_bf16(cpuinfo("avx2 avx512f avx512bw"))
    assert not cpu_has_bf16(str(tmp_path / "missing"))
