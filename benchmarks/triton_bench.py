"""Triton beside our ``serve``, one run, the same questions as serve_bench.py; prints one JSON document.

    python benchmarks/triton_bench.py --model-dir /tmp/ml1m-neumf --duration 20

On one ML-1M NeuMF-32 artifact (trained first if missing, as serve_bench.py does), exported with
``ncf_core.triton.export`` (K=10), both servers on loopback, one after the other, loaded by wrk with
``--clients`` keep-alive connections for ``--duration`` seconds each:

- seed: the workshop's payload (user 0 against 100 items). ``serve``: POST /invocations, answering the
  top-10 of the 100. Triton: the same 100 pairs as a KServe v2 body to ``ncf_scores`` (USER, ITEM
  INT64 [100, 1]), answering the 100 scores (Triton's ensemble has no top-k-of-candidates step);
- all_items_top10: top-10 over every item, exclude-seen, one user per request, users rotating.
  ``serve``: ``{"users": [u], "k": 10}``; Triton: USER [1, 1] to the ``ncf`` ensemble.

What the Triton figures are: NVIDIA's ``tritonserver`` 2.51 from the nvidia-pytriton wheel
(tests/support/triton.py), CPU only, with the exported ensembles and numpy id-mapping steps as exported,
and the two NETWORK models run by the test-only Python-backend stand-in (torch.jit.load of the exported
model.pt in a Python-backend stub, one thread) because this server has no libtorch backend. So this
measures Triton with that stand-in on CPU, not the pytorch_libtorch backend SageMaker's image runs, and not
a GPU. Both servers share the machine's cores with wrk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_bench import (  # noqa: E402
    NUM_USERS,
    SEED_PAYLOAD,
    WRK_SCRIPT,
    ensure_model,
    free_port,
    machine_load,
    memory,
    run_wrk,
    start_server,
    with_server_cpu,
)

K = 10
TRITON_WRK_SCRIPT = (
    textwrap.dedent(
        """
    -- KServe v2 bodies: BODY_FILE to MODEL (fixed), or ROTATE_USERS: one user a request to MODEL
    local users = tonumber(os.getenv("ROTATE_USERS") or "0")
    local path = "/v2/models/" .. os.getenv("MODEL") .. "/infer"
    local body = nil
    if users == 0 then
      local f = assert(io.open(os.getenv("BODY_FILE"), "r")); body = f:read("*a"); f:close()
    end
    local counter = 0
    local headers = {["Content-Type"] = "application/json"}
    function setup(thread) thread:set("id", counter); counter = counter + 1 end
    function init(args) n = id * 7919 end
    function request()
      if users == 0 then return wrk.format("POST", path, headers, body) end
      n = n + 1
      return wrk.format("POST", path, headers,
        '{"inputs": [{"name": "USER", "shape": [1, 1], "datatype": "INT64", ' ..
        '"data": [' .. (n % users) .. ']}]}')
    end
    """
    )
    + WRK_SCRIPT[WRK_SCRIPT.index("function done") :]
)


def triton_seed_body() -> dict:
    users, items = SEED_PAYLOAD["user"], SEED_PAYLOAD["item"]
    n = len(items)
    return {
        "inputs": [
            {"name": "USER", "shape": [n, 1], "datatype": "INT64", "data": users},
            {"name": "ITEM", "shape": [n, 1], "datatype": "INT64", "data": items},
        ]
    }


def bench_serve(args, work: Path, seed_file: Path) -> dict[str, Any]:
    script = work / "serve.lua"
    script.write_text(WRK_SCRIPT)
    port = free_port()
    proc, start = start_server(args.model_dir, port, False, work / "serve.log", None)
    try:
        out: dict[str, Any] = {"start": start}
        n, d = args.clients, args.duration
        out["seed"] = with_server_cpu(proc.pid, lambda: run_wrk(port, n, d, seed_file, 0, script))
        out["all_items_top10"] = with_server_cpu(
            proc.pid, lambda: run_wrk(port, n, d, None, NUM_USERS, script)
        )
        out["memory"] = memory(proc.pid)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def bench_triton(args, work: Path) -> dict[str, Any]:
    import os

    from ncf_core.triton import export
    from tests.support.triton import network_as_python, require_tritonserver, running_triton

    server = require_tritonserver()
    repo = work / "repo"
    export(args.model_dir, repo, "ncf", K)
    for model in ("ncf_topk", "ncf_pairs"):
        network_as_python(repo, model)
    seed_file = work / "triton-seed.json"
    seed_file.write_text(json.dumps(triton_seed_body()))
    script = work / "triton.lua"
    script.write_text(TRITON_WRK_SCRIPT)
    with running_triton(server, repo, work / "logs", load=["ncf", "ncf_scores"]) as t:
        status, answer = t.request("POST", "/v2/models/ncf_scores/infer", triton_seed_body())
        assert status == 200, answer
        status, answer = t.infer("ncf", [{"name": "USER", "shape": [1, 1], "datatype": "INT64", "data": [0]}])
        assert status == 200, answer
        n, d = args.clients, args.duration
        out: dict[str, Any] = {}
        saved = dict(os.environ)
        try:
            os.environ["MODEL"] = "ncf_scores"
            out["seed"] = with_server_cpu(t.proc.pid, lambda: run_wrk(t.port, n, d, seed_file, 0, script))
            os.environ["MODEL"] = "ncf"
            out["all_items_top10"] = with_server_cpu(
                t.proc.pid, lambda: run_wrk(t.port, n, d, None, NUM_USERS, script)
            )
        finally:
            os.environ.clear()
            os.environ.update(saved)
        out["memory"] = memory(t.proc.pid)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/ml1m-neumf"))
    parser.add_argument("--duration", type=int, default=20, help="seconds per load test (4 tests)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found (apt-get install wrk)")

    result: dict[str, Any] = {"model_dir": str(args.model_dir), **ensure_model(args.model_dir)}
    result |= {"clients": args.clients, "duration_s": args.duration, "client": "wrk (Lua script, 2 threads)"}
    result["conditions"] = machine_load()
    result["triton_note"] = (
        "tritonserver 2.51 (nvidia-pytriton 0.7.0 wheel), CPU; ensembles and numpy id steps as exported; "
        "network models via the test-only Python-backend stand-in (torch.jit model.pt), not libtorch; no GPU"
    )
    work = Path(tempfile.mkdtemp(prefix="ncf-triton-bench-"))
    try:
        seed_file = work / "seed.json"
        seed_file.write_text(json.dumps(SEED_PAYLOAD))
        result["serve"] = bench_serve(args, work, seed_file)
        result["triton"] = bench_triton(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["side_by_side"] = {
        f"{server}.{q}": {k: result[server][q][k] for k in ("req_per_s", "p99_ms", "errors")}
        for server in ("serve", "triton")
        for q in ("seed", "all_items_top10")
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
