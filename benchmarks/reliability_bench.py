"""Serving reliability as a hostile client sees it, on the ML-1M NeuMF-32 model; prints one JSON document.

    python -m benchmarks.reliability_bench [--model-dir /tmp/ml1m-neumf] [--fuzz 3000]

(run from the repository root; trains the model first if it is missing, like ``serve_bench``). Figures:

- ``corpus``: the malformed requests of ``tests.support.hostile`` (every route and content type), answers
  by status class; ``fuzz``: random request shapes × content types × ``Accept`` headers. ``5xx`` must be 0.
- ``ping_under_largest_payloads``: /ping latency (worst, p99) sampled every 20 ms while one 6 MB request
  of each content type is parsed and scored by a one-worker server.
- ``idle_connections``: /ping latency with 1,000 silent connections open.
- ``worker_kill``: a two-worker server under steady load (8 client threads) has one worker killed with
  SIGKILL: requests lost (connection errors and 5xx), /ping answers that were not 200, seconds until the
  replacement worker serves.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.serve_bench import SEED_PAYLOAD, ensure_model, free_port, start_server
from tests.support.hostile import CORPUS, CSV, JL, J, largest_payload

ACCEPTS = [None, J, JL, CSV, "*/*", "text/html", "application/*;q=0.5"]
CONTENT_TYPES = [J, JL, CSV, "text/plain", None]
FIELDS = ["user", "item", "users", "k", "candidates", "exclude_seen", "pairs", "x"]


def send(port: int, method: str, path: str, body: bytes | None, headers: dict, timeout: float = 120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ping_ms(port: int) -> float:
    start = time.perf_counter()
    status, _ = send(port, "GET", "/ping", None, {}, timeout=10)
    if status != 200:
        raise RuntimeError(f"/ping answered {status}")
    return (time.perf_counter() - start) * 1000


@contextmanager
def server(model_dir: Path, workers: int, env: dict[str, str]):
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="reliability-serve-", suffix=".log")[1])
    proc, _ = start_server(model_dir, port, False, log, workers, env)
    try:
        yield port, proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------------------------- client errors
def corpus(port: int) -> dict[str, Any]:
    classes: Counter[str] = Counter()
    unexpected = []
    for method, path, ctype, body, status, fragment in CORPUS:
        got, reply = send(port, method, path, body, {"Content-Type": ctype} if ctype else {})
        classes[f"{got // 100}xx"] += 1
        if got != status or fragment.encode() not in reply:
            unexpected.append(
                {"path": path, "want": status, "got": got, "reply": reply[:200].decode("latin-1")}
            )
    return {"cases": len(CORPUS), "by_status": dict(classes), "5xx": classes["5xx"], "unexpected": unexpected}


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randint(-(2**70), 2**70)
    if kind == 1:
        return rng.randint(0, 300)
    if kind == 2:
        return "".join(rng.choice("0123٣ab é😀-\n") for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.uniform(-1e300, 1e300)
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return []
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def fuzz(port: int, examples: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    classes: Counter[str] = Counter()
    failures = []
    for _ in range(examples):
        docs = [{rng.choice(FIELDS): _value(rng) for _ in range(rng.randrange(1, 4))} for _ in range(3)]
        kind, accept = rng.choice(CONTENT_TYPES), rng.choice(ACCEPTS)
        if kind == JL:
            body = b"\n".join(json.dumps(d).encode() for d in docs)
        elif kind == CSV:
            body = "\n".join(",".join(str(v) for v in d.values()) for d in docs).encode()
        else:
            body = json.dumps(docs[0]).encode()
        headers = {k: v for k, v in (("Content-Type", kind), ("Accept", accept)) if v}
        status, reply = send(port, "POST", "/invocations", body, headers)
        classes[f"{status // 100}xx"] += 1
        if status >= 500 and len(failures) < 5:
            failures.append({"body": body[:200].decode("utf-8", "replace"), "reply": reply[:200].decode()})
    return {"cases": examples, "by_status": dict(classes), "5xx": classes["5xx"], "first_5xx": failures}


# --------------------------------------------------------------------------------------------- /ping
def ping_during(port: int, body: bytes, kind: str, window_s: float) -> dict[str, Any]:
    """/ping latencies while ``body`` is processed (sampled for at most ``window_s``)."""
    outcome: dict[str, Any] = {}

    def big() -> None:
        start = time.perf_counter()
        status, _ = send(port, "POST", "/invocations", body, {"Content-Type": kind}, timeout=300)
        outcome.update(status=status, seconds=round(time.perf_counter() - start, 2))

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.3)
    pings = []
    deadline = time.monotonic() + window_s
    while thread.is_alive() and time.monotonic() < deadline:
        pings.append(ping_ms(port))
        time.sleep(0.02)
    thread.join()
    pings.sort()
    return {
        "body_mb": round(len(body) / 2**20, 2),
        "request": outcome,
        "pings": len(pings),
        "ping_worst_ms": round(pings[-1], 1) if pings else None,
        "ping_p99_ms": round(pings[int(0.99 * (len(pings) - 1))], 1) if pings else None,
    }


def idle_connections(port: int, count: int) -> dict[str, Any]:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        time.sleep(0.3)
        pings = sorted(ping_ms(port) for _ in range(50))
    finally:
        for sock in socks:
            sock.close()
    return {
        "idle_connections": count,
        "ping_worst_ms": round(pings[-1], 1),
        "ping_median_ms": round(pings[25], 1),
    }


# --------------------------------------------------------------------------------------------- worker loss
def worker_kill(port: int, proc: subprocess.Popen, log: Path) -> dict[str, Any]:
    body = json.dumps(SEED_PAYLOAD).encode()
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def load() -> None:
        while not stop.is_set():
            try:
                status, _ = send(port, "POST", "/invocations", body, {"Content-Type": J}, timeout=10)
                result = "ok" if status == 200 else f"http_{status}"
            except OSError as exc:
                result = type(exc).__name__
            with lock:
                outcomes[result] += 1

    pings: Counter[int | str] = Counter()

    def probe() -> None:
        while not stop.is_set():
            try:
                pings[send(port, "GET", "/ping", None, {}, timeout=5)[0]] += 1
            except OSError as exc:
                pings[type(exc).__name__] += 1
            time.sleep(0.02)

    deadline = time.monotonic() + 60  # every first worker loaded (each says 503 while it loads)
    while log.read_text(errors="replace").count(" ready in ") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    threads = [threading.Thread(target=load) for _ in range(8)] + [threading.Thread(target=probe)]
    for t in threads:
        t.start()
    time.sleep(3)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    before = log.read_text(errors="replace").count("replacement worker")
    with lock:
        outcomes.clear()
    killed = time.monotonic()
    os.kill(int(workers[0]), signal.SIGKILL)
    replaced_s = None
    while time.monotonic() - killed < 30:
        if log.read_text(errors="replace").count("replacement worker") > before:
            replaced_s = round(time.monotonic() - killed, 2)
            break
        time.sleep(0.05)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    lost = sum(n for k, n in outcomes.items() if k != "ok")
    return {
        "workers": len(workers),
        "requests_after_kill": dict(outcomes),
        "requests_lost": lost,
        "pings": {str(k): v for k, v in pings.items()},
        "replacement_serving_after_s": replaced_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/ml1m-neumf"))
    parser.add_argument("--fuzz", type=int, default=3000, help="random requests to send")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of /ping sampling per payload")
    args = parser.parse_args()
    report: dict[str, Any] = {"model_dir": str(args.model_dir), **ensure_model(args.model_dir)}
    ids = json.loads((args.model_dir / "id_maps.json").read_text())
    env = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "15"}
    with server(args.model_dir, 1, env) as (port, _, _):
        report["corpus"] = corpus(port)
        report["fuzz"] = fuzz(port, args.fuzz)
        report["ping_under_largest_payloads"] = {}
        for kind in (J, JL, CSV):
            body = largest_payload(ids["users"], ids["items"], kind, 6 * 2**20 - 1024)
            report["ping_under_largest_payloads"][kind] = ping_during(port, body, kind, args.window)
        report["idle"] = idle_connections(port, 1000)
    with server(args.model_dir, 2, {}) as (port, proc, log):
        report["worker_kill"] = worker_kill(port, proc, log)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
