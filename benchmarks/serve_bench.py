"""Benchmark the ``serve`` program on an ML-1M NeuMF-32 model and print one JSON document.

    python benchmarks/serve_bench.py --model-dir /tmp/ml1m-neumf          # trains it first if missing
    python benchmarks/serve_bench.py --duration 5 --native-blas            # quick run, OpenBLAS's own kernel
    python benchmarks/serve_bench.py --precisions fp32,bf16 --rounds 2     # all-items only, NCF_PRECISION A/B

Measures, against a real server process on a loopback port:

- start: process start → first successful seed-payload invocation, and whether /ping ever said 200
  before invocations worked (it must not);
- seed: the workshop's payload (one user, 100 items → top-10 array) from ``--clients`` keep-alive
  connections for ``--duration`` seconds: req/s, p50/p90/p99 latency, errors (non-2xx and socket errors);
- all_items: top-10 over every item for one user (users rotate), same load;
- memory: RSS and PSS of the server's processes (PSS splits the pages the workers share).

Load generator: ``wrk`` (Debian package; C, event loop, ~15 µs of CPU per request here) with a Lua script,
or this file's own asyncio client when wrk is missing (costs more CPU: the JSON says which was used).
The client shares the machine's cores with the server, as the targets assume. The JSON also reports the
machine's load before the run: other work on the cores lowers every figure.

``--precisions fp32,bf16`` compares scorer precisions instead: for each of ``--rounds`` rounds, a fresh
server per precision (``NCF_PRECISION``, in turn, so that other work on the cores slows each alike) and
the all-items test alone; the JSON holds each round's figures, the means and their ratio to the first.

``--native-blas`` unsets ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` for the server alone: this host pins
an older OpenBLAS kernel (Haswell) for old builds' sake, which slows numpy's matmuls; images don't set it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The seed workshop's request (user 0 against 100 ML-1M items): one copy, shared with scripts/invoke.sh.
SEED_PAYLOAD = json.loads((ROOT / "scripts" / "payloads" / "seed.json").read_text())
ML1M_FILES = {
    "ml-1m.train.rating": Path("ml-1m") / "derived" / "ml-1m.train.pairs.tsv",
    "ml-1m.test.rating": Path("ml-1m") / "ml-1m.test.rating",
    "ml-1m.test.negative": Path("ml-1m") / "ml-1m.test.negative",
}
NUM_USERS = 6040  # ML-1M in the NCF paper's files: users 0..6039

WRK_SCRIPT = textwrap.dedent(
    """
    -- POST bodies from env: BODY_FILE (fixed body) or ROTATE_USERS (top-10 for a different user each time)
    local users = tonumber(os.getenv("ROTATE_USERS") or "0")
    local body = nil
    if users == 0 then
      local f = assert(io.open(os.getenv("BODY_FILE"), "r")); body = f:read("*a"); f:close()
    end
    local counter = 0
    local headers = {["Content-Type"] = "application/json"}
    function setup(thread) thread:set("id", counter); counter = counter + 1 end
    function init(args) n = id * 7919 end
    function request()
      if users == 0 then return wrk.format("POST", "/invocations", headers, body) end
      n = n + 1
      return wrk.format("POST", "/invocations", headers, '{"users": [' .. (n % users) .. '], "k": 10}')
    end
    function done(summary, latency, requests)
      local e = summary.errors
      io.write(string.format(
        'RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
        '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\\n',
        summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
        latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
        latency.max / 1000))
    end
    """
)


# --------------------------------------------------------------------------------------------- model
def data_dir() -> Path:
    return Path(os.environ.get("NCF_DATA_DIR", ROOT.parent / "shared" / "data"))


def ensure_model(model_dir: Path) -> dict[str, Any]:
    """Train NeuMF-32 on the NCF paper's ML-1M files into ``model_dir`` unless an artifact is there."""
    if (model_dir / "ncf_config.json").is_file():
        return {"trained_now": False}
    links = Path(tempfile.mkdtemp(prefix="ncf-ml1m-"))
    for name, rel in ML1M_FILES.items():
        src = data_dir() / rel
        if not src.is_file():
            sys.exit(f"{src} not found: set NCF_DATA_DIR to the MovieLens data directory")
        (links / name).symlink_to(src.resolve())
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "ncf_core", "train", "--data", str(links), "--model-dir", str(model_dir)]
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL)
    shutil.rmtree(links)
    return {"trained_now": True, "train_seconds": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start_server(
    model_dir: Path,
    port: int,
    native_blas: bool,
    log_path: Path,
    workers: int | None,
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, dict]:
    """Start ``serve`` and poll /ping and the seed invocation until the invocation succeeds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGEMAKER_")} | (extra_env or {})
    if native_blas:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    env["NCF_BIND_HOST"] = "127.0.0.1"
    cmd = [
        sys.executable,
        "-m",
        "ncf_sagemaker.serving.server",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    body = json.dumps(SEED_PAYLOAD).encode()
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    first_ping_200 = first_invoke_200 = None
    ping_200_while_invoke_failed = False
    while time.perf_counter() - started < 120:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}; log: {log_path}")
        try:
            ping, _ = request(port, "GET", "/ping")
            status, _ = request(port, "POST", "/invocations", body)
        except OSError:
            time.sleep(0.01)
            continue
        now = time.perf_counter() - started
        if ping == 200 and first_ping_200 is None:
            first_ping_200 = now
        if ping == 200 and status != 200:
            ping_200_while_invoke_failed = True
        if status == 200:
            first_invoke_200 = now
            break
        time.sleep(0.01)
    return proc, {
        "start_to_first_invocation_s": None if first_invoke_200 is None else round(first_invoke_200, 3),
        "first_ping_200_s": None if first_ping_200 is None else round(first_ping_200, 3),
        "ping_200_before_invocations_worked": ping_200_while_invoke_failed,
    }


def server_pids(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *map(int, children)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server's processes so far."""
    ticks = 0
    for p in server_pids(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def with_server_cpu(pid: int, run: Any) -> dict[str, Any]:
    """Run a load test and add the server's CPU time per request (robust to a busy machine)."""
    before = cpu_seconds(pid)
    result = run()
    used = cpu_seconds(pid) - before
    result["server_cpu_us_per_request"] = round(used / max(1, result["requests"]) * 1e6, 1)
    return result


def memory(pid: int) -> dict[str, Any]:
    """RSS and PSS (kB → MB) of the master and its workers, from /proc/PID/smaps_rollup."""
    procs = {}
    for p in server_pids(pid):
        fields = {}
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0])
        procs[p] = {"rss_mb": round(fields["Rss"] / 1024, 1), "pss_mb": round(fields["Pss"] / 1024, 1)}
    return {
        "processes": len(procs),
        "rss_mb_sum": round(sum(p["rss_mb"] for p in procs.values()), 1),
        "pss_mb_sum": round(sum(p["pss_mb"] for p in procs.values()), 1),
        "rss_mb_max_process": max(p["rss_mb"] for p in procs.values()),
    }


def blas_core(native_blas: bool) -> str:
    env = dict(os.environ)
    if native_blas:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    code = (
        "import ctypes, glob, os, numpy\n"
        "libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__), '..', 'numpy.libs', '*openblas*'))\n"
        "f = ctypes.CDLL(libs[0]).scipy_openblas_get_corename64_ if libs else None\n"
        "if f: f.restype = ctypes.c_char_p\n"
        "print(f().decode() if f else 'unknown')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# --------------------------------------------------------------------------------------------- load
def run_wrk(port: int, clients: int, duration: int, body_file: Path | None, rotate_users: int, script: Path):
    env = dict(os.environ)
    if body_file is not None:
        env["BODY_FILE"] = str(body_file)
    env["ROTATE_USERS"] = str(rotate_users)
    threads = min(2, clients)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{clients}",
        f"-d{duration}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    seconds = r["duration_us"] / 1e6
    return {
        "req_per_s": round(r["requests"] / seconds, 1),
        "p50_ms": r["p50_ms"],
        "p90_ms": r["p90_ms"],
        "p99_ms": r["p99_ms"],
        "max_ms": r["max_ms"],
        "errors": r["non_2xx"] + r["socket_errors"],
        "requests": r["requests"],
    }


async def _client(port: int, bodies: list[bytes], until: float, latencies: list[float], errors: list[int]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < until:
            body = bodies[i % len(bodies)]
            i += 1
            head = (
                f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            start = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if b" 200 " not in status_line:
                errors.append(1)
    finally:
        writer.close()


def run_python_client(port: int, clients: int, duration: int, bodies: list[bytes]) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[int] = []

    async def main() -> float:
        start = time.perf_counter()
        until = start + duration
        await asyncio.gather(*(_client(port, bodies, until, latencies, errors) for _ in range(clients)))
        return time.perf_counter() - start

    seconds = asyncio.run(main())
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 3)

    return {
        "req_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(latencies[-1] * 1000, 3),
        "errors": len(errors),
        "requests": len(latencies),
    }


def machine_load(seconds: float = 1.0) -> dict[str, Any]:
    """CPU busy share over a short sample before the run, and the 1-minute load average."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
    return {"cpu_busy_before_run": round(busy, 3), "loadavg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}


# --------------------------------------------------------------------------------------------- main
def all_items(client: str, port: int, pid: int, clients: int, seconds: int, work: Path) -> dict[str, Any]:
    """The all-items top-10 load test (users rotate) with the server's CPU per request."""
    if client == "wrk":
        script = work / "bench.lua"
        script.write_text(WRK_SCRIPT)
        return with_server_cpu(pid, lambda: run_wrk(port, clients, seconds, None, NUM_USERS, script))
    bodies = [json.dumps({"users": [u], "k": 10}).encode() for u in range(0, NUM_USERS, 7)]
    return with_server_cpu(pid, lambda: run_python_client(port, clients, seconds, bodies))


def compare_precisions(args: argparse.Namespace, client: str, result: dict[str, Any]) -> None:
    """All-items top-10 against a fresh server per precision, alternating for ``args.rounds`` rounds."""
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1):
        for precision in precisions:
            work = Path(tempfile.mkdtemp(prefix="ncf-serve-bench-"))
            port = free_port()
            env = {"NCF_PRECISION": precision}
            proc, _ = start_server(
                args.model_dir, port, args.native_blas, work / "server.log", args.workers, env
            )
            try:
                run = all_items(client, port, proc.pid, args.clients, args.duration, work)
                log = (work / "server.log").read_text().splitlines()
                scorer = next((line for line in log if " scorer in " in line), "")
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
                shutil.rmtree(work, ignore_errors=True)
            rounds.append(
                {"round": number, "precision": precision, "scorer": scorer.split(": ", 1)[-1], **run}
            )
    result["precision_rounds"] = rounds
    means = {
        p: round(sum(r["req_per_s"] for r in rounds if r["precision"] == p) / args.rounds, 1)
        for p in precisions
    }
    result["all_items_req_per_s_mean"] = means
    result["ratio_to_" + precisions[0]] = {p: round(means[p] / means[precisions[0]], 3) for p in precisions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/ml1m-neumf"))
    parser.add_argument("--duration", type=int, default=20, help="seconds per load test")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--native-blas", action="store_true", help="unset OPENBLAS_CORETYPE for the server")
    parser.add_argument("--workers", type=int, help="server worker processes (default: serve's own)")
    parser.add_argument("--precisions", help="e.g. fp32,bf16: compare NCF_PRECISION on all-items top-10 only")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --precisions (alternating)")
    args = parser.parse_args()

    result: dict[str, Any] = {"model_dir": str(args.model_dir), **ensure_model(args.model_dir)}
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    result["client"] = {"wrk": "wrk (Lua script, 2 threads)", "python": "asyncio (this script)"}[client]
    result["clients"], result["duration_s"], result["workers"] = args.clients, args.duration, args.workers
    result["openblas_core"] = blas_core(args.native_blas)
    result["server_env"] = {
        k: v for k, v in os.environ.items() if k.startswith(("SAGEMAKER_", "NCF_")) and k != "NCF_DATA_DIR"
    }
    result["conditions"] = machine_load()
    if args.precisions:
        compare_precisions(args, client, result)
        result["conditions_after"] = machine_load()
        print(json.dumps(result, indent=2))
        return

    work = Path(tempfile.mkdtemp(prefix="ncf-serve-bench-"))
    port = free_port()
    proc, start = start_server(args.model_dir, port, args.native_blas, work / "server.log", args.workers)
    result["start"] = start
    try:
        seed_file = work / "seed.json"
        seed_file.write_text(json.dumps(SEED_PAYLOAD))
        script = work / "bench.lua"
        script.write_text(WRK_SCRIPT)
        pid, n, seconds = proc.pid, args.clients, args.duration
        if client == "wrk":
            result["seed"] = with_server_cpu(pid, lambda: run_wrk(port, n, seconds, seed_file, 0, script))
            result["all_items_top10"] = with_server_cpu(
                pid, lambda: run_wrk(port, n, seconds, None, NUM_USERS, script)
            )
        else:
            seed_bodies = [seed_file.read_bytes()]
            result["seed"] = with_server_cpu(pid, lambda: run_python_client(port, n, seconds, seed_bodies))
            bodies = [json.dumps({"users": [u], "k": 10}).encode() for u in range(0, NUM_USERS, 7)]
            result["all_items_top10"] = with_server_cpu(
                pid, lambda: run_python_client(port, n, seconds, bodies)
            )
        result["memory"] = memory(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    targets = {
        "seed_req_per_s>=3000": result["seed"]["req_per_s"] >= 3000,
        "seed_p99_ms<=10": result["seed"]["p99_ms"] <= 10,
        "seed_errors==0": result["seed"]["errors"] == 0,
        "all_items_req_per_s>=400": result["all_items_top10"]["req_per_s"] >= 400,
        "all_items_p99_ms<=25": result["all_items_top10"]["p99_ms"] <= 25,
        "start_s<=2": (start["start_to_first_invocation_s"] or 99) <= 2,
        "ping_never_200_early": not start["ping_200_before_invocations_worked"],
        "rss_mb_sum<=600": result["memory"]["rss_mb_sum"] <= 600,
    }
    result["targets_met"] = targets
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
