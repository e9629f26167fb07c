"""NVIDIA's own ``tritonserver`` on loopback, for the Triton export tests (docs/triton.md).

The binary comes from the ``nvidia-pytriton`` wheel (PyPI), which ships ``tritonserver`` with the Python
backend and no libtorch backend. The wheel pins numpy<2 (the project pins numpy 2), so it is never
installed: ``setup()`` downloads it once with pip and unzips the whole wheel into ``$NCF_TRITON_DIR``
(default ``~/.cache/ncf-triton``), then puts the Python 3.11 backend stub where the server looks for it.
The stub is linked against Debian's ``libpython3.11`` and imports Debian's numpy (apt packages
``libpython3.11 python3-numpy``; ``.ci/run`` installs them and runs ``python3 tests/support/triton.py``,
which needs only the standard library and pip, before the test dependencies are installed).

Without a usable server, ``require_tritonserver()`` skips the test, except in CI (``CI=true``), where it
fails.

``network_as_python(repo, model)`` is the one change the tests make to an exported repository: this server
cannot run ``pytorch_libtorch``, so a network model's ``config.pbtxt`` gets ``backend: "python"`` (names,
shapes, types, batching as exported) and a ``model.py`` that runs the SAME exported ``model.pt`` with
``torch.jit.load`` (torch imported from this interpreter's site-packages: same CPython 3.11 ABI).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PYTRITON = "nvidia-pytriton==0.7.0"
STUB_PYTHON = "3.11"
START_TIMEOUT_S = 60
SYSTEM_NUMPY = Path("/usr/lib/python3/dist-packages/numpy")


def cache_dir() -> Path:
    return Path(os.environ.get("NCF_TRITON_DIR", Path.home() / ".cache" / "ncf-triton"))


def server_root() -> Path:
    return cache_dir() / "pytriton" / "tritonserver"


def setup(root: Path | None = None) -> Path:
    """Download (once) and unzip the wheel; returns the ``tritonserver`` directory."""
    base = root or cache_dir()
    server = base / "pytriton" / "tritonserver"
    stub = server / "backends" / "python" / "triton_python_backend_stub"
    if stub.is_file() and (server / "bin" / "tritonserver").is_file():
        return server
    wheels = base / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("nvidia_pytriton-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels), PYTRITON],
            check=True,
        )
    wheel = next(wheels.glob("nvidia_pytriton-*.whl"))
    unpacked = base / "unpacking"
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            path = zf.extract(info, unpacked)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
    stub_src = unpacked / "pytriton" / "tritonserver" / "python_backend_stubs" / STUB_PYTHON
    shutil.copy2(stub_src / "triton_python_backend_stub", stub_src.parents[1] / "backends" / "python")
    for path in (unpacked / "pytriton" / "tritonserver" / "bin").iterdir():
        path.chmod(0o755)
    for entry in unpacked.iterdir():
        shutil.rmtree(base / entry.name, ignore_errors=True)
        entry.rename(base / entry.name)
    shutil.rmtree(unpacked, ignore_errors=True)
    return server


def require_tritonserver() -> Path:
    """The server directory, set up if need be; skips (fails in CI) when that is impossible here."""
    import pytest

    reason = None
    if not SYSTEM_NUMPY.is_dir():
        reason = "Debian's numpy is missing (apt-get install libpython3.11 python3-numpy)"
    else:
        try:
            return setup()
        except (OSError, subprocess.CalledProcessError, zipfile.BadZipFile, StopIteration) as exc:
            reason = f"cannot set up tritonserver from {PYTRITON}: {exc}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------- the repo
def random_artifact(
    model_dir: Path, model: str = "neumf", string_ids: bool = False, users: int = 40, items: int = 30
) -> Path:
    """A small artifact with the paper's random initialisation (no training: exports only need a network),
    a random history (user 0 has seen every item but two) and random popularity with ties."""
    import numpy as np
    import torch

    from ncf_core import artifact as artifact_io
    from ncf_core.models import NCF, ModelConfig

    torch.manual_seed(7)
    rng = np.random.default_rng(7)
    net = NCF(ModelConfig(model, users, items, factor=8, num_layers=2))
    seen = [np.arange(2, items)] + [
        np.sort(rng.choice(items, rng.integers(0, 8), replace=False)) for _ in range(1, users)
    ]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    user_ids = [f"u{i}" for i in range(users)] if string_ids else [1000 + 3 * i for i in range(users)]
    item_ids = [f"i{i}" for i in range(items)] if string_ids else [7 * i + 5 for i in range(items)]
    return artifact_io.save(
        model_dir,
        net,
        user_ids=user_ids,
        item_ids=item_ids,
        history=(indptr, np.concatenate(seen)),
        item_popularity=rng.integers(0, 5, items),
    )


_TORCH_MODEL = '''"""Test-only stand-in for pytorch_libtorch: runs the exported model.pt (torch.jit)."""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        sys.path.append(config["parameters"]["site_packages"]["string_value"])
        import torch

        self.torch = torch
        torch.set_num_threads(1)
        here = Path(args["model_repository"]) / args["model_version"]
        self.module = torch.jit.load(str(here / "model.pt"), map_location="cpu")
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            args = [
                self.torch.from_numpy(pb_utils.get_input_tensor_by_name(request, n).as_numpy().copy())
                for n in self.inputs
            ]
            with self.torch.inference_mode():
                out = self.module(*args)
            out = out if isinstance(out, tuple) else (out,)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, np.ascontiguousarray(t.numpy())) for n, t in zip(self.outputs, out)]
                )
            )
        return responses
'''


def network_as_python(repo: Path, model: str) -> None:
    """Swap a ``pytorch_libtorch`` model for the Python-backend stand-in above (same model.pt)."""
    config = repo / model / "config.pbtxt"
    text = config.read_text()
    assert 'platform: "pytorch_libtorch"\n' in text, text
    site = sysconfig.get_paths()["purelib"]
    text = text.replace('platform: "pytorch_libtorch"\n', 'backend: "python"\n')
    text += f'parameters {{\n  key: "site_packages"\n  value: {{ string_value: "{site}" }}\n}}\n'
    config.write_text(text)
    (repo / model / "1" / "model.py").write_text(_TORCH_MODEL)


# --------------------------------------------------------------------------------------------- server
class Triton:
    """A running ``tritonserver``; ``post``/``get`` speak KServe v2 over HTTP."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc = proc
        self.port = port
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        return status, (json.loads(raw) if raw else None)

    def infer(self, model: str, inputs: list[dict]) -> tuple[int, Any]:
        return self.request("POST", f"/v2/models/{model}/infer", {"inputs": inputs})

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        import pytest

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tritonserver exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/v2/health/ready", timeout=2)[0] == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"tritonserver not ready within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def running_triton(server: Path, repo: Path, log_dir: Path, load: list[str]) -> Iterator[Triton]:
    """``tritonserver`` over ``repo`` in explicit model-control mode (as SageMaker runs it), loading
    ``load`` at start; stopped by PID."""
    from tests.support.net import free_port

    http = free_port()
    args = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repo.resolve()}",
        f"--backend-directory={(server / 'backends').resolve()}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        f"--grpc-port={free_port()}",
        "--grpc-address=127.0.0.1",
        "--allow-metrics=false",
        "--model-control-mode=explicit",
        *[f"--load-model={name}" for name in load],
        "--log-verbose=0",
    ]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"tritonserver-{http}.log"
    # The stub embeds Debian's libpython3.11, which finds its home from the first python3 on PATH: under
    # a pyenv or virtualenv interpreter that is not Debian's, so point it at Debian's (numpy is there).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONHOME="/usr", PATH="/usr/sbin:/usr/bin:/sbin:/bin", OMP_NUM_THREADS="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    triton = Triton(proc, http, log_path)
    try:
        triton.wait_ready()
        yield triton
    finally:
        triton.stop()


if __name__ == "__main__":  # .ci/run: `python3 tests/support/triton.py` (stdlib and pip only)
    print(setup())
