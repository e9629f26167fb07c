"""invoke.sh against the moto server's SageMaker runtime (tests/support/moto.py) and, with --local, against
a recording HTTP server on loopback (the container's contract paths).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from tests.support.moto import SCRIPTS, ok, refused, run_script, set_endpoint_results

# ---------------------------------------------------------------------------------------------- invoke


def test_invoke_endpoint_sends_the_seed_payload_and_prints_the_answer(aws, tmp_path):
    set_endpoint_results(aws, "[128, 273, 174, 25, 617, 175, 864, 58, 464, 1423]", '{"scores": [0.5]}')
    proc = aws.run("invoke", "--endpoint", "ncf")
    assert ok(proc) == ["[128, 273, 174, 25, 617, 175, 864, 58, 464, 1423]"]
    assert "(variant primary)" in proc.stderr
    (sent,) = [r for r in aws.server.requests if r["path"] == "/endpoints/ncf/invocations"]
    assert sent["body"] == (SCRIPTS / "payloads" / "seed.json").read_bytes()
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["headers"]["accept"] == "application/json"

    payload = tmp_path / "pairs.json"
    payload.write_text('{"user": [1], "item": [2]}')
    args = [
        "--endpoint",
        "ncf-mme",
        "--payload",
        str(payload),
        "--target-model",
        "ml-1m.tar.gz",
        "--variant",
        "canary",
    ]
    assert ok(aws.run("invoke", *args)) == ['{"scores": [0.5]}']
    sent = aws.server.requests[-1]
    assert sent["path"] == "/endpoints/ncf-mme/invocations" and sent["body"] == payload.read_bytes()
    assert sent["headers"]["x-amzn-sagemaker-target-model"] == "ml-1m.tar.gz"
    assert sent["headers"]["x-amzn-sagemaker-target-variant"] == "canary"

    refused(aws.run("invoke", "--endpoint", "ncf", "--payload", str(tmp_path / "missing.json")), "not found")


class _Recorder(BaseHTTPRequestHandler):
    """Answers POSTs with a fixed JSON body (or a 400 for /models/bad/invoke), remembering each request."""

    seen: ClassVar[list[tuple[str, dict, bytes]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append((self.path, dict(self.headers), body))
        status, answer = (
            (400, b'{"error": "item 99999 is unknown"}') if "bad" in self.path else (200, b"[25, 1064]")
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_invoke_local_posts_to_the_container_contract_paths():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"PYTHON": sys.executable}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    _Recorder.seen = []
    try:
        proc = run_script("invoke", "--local", url, env=env)
        assert ok(proc) == ["[25, 1064]"]
        assert "curl -sS -X POST -H 'Content-Type: application/json'" in proc.stderr
        path, headers, body = _Recorder.seen[-1]
        assert path == "/invocations" and headers["Content-Type"] == "application/json"
        assert body == (SCRIPTS / "payloads" / "seed.json").read_bytes()

        ok(run_script("invoke", "--local", url + "/", "--target-model", "ml-1m", env=env))
        assert _Recorder.seen[-1][0] == "/models/ml-1m/invoke"

        proc = run_script("invoke", "--local", url, "--target-model", "bad", env=env)
        assert proc.returncode == 1
        assert proc.stdout.strip() == '{"error": "item 99999 is unknown"}'
        assert "answered 400" in proc.stderr
    finally:
        server.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    proc = run_script("invoke", "--local", f"http://127.0.0.1:{closed}", env=env)
    assert proc.returncode == 1 and "cannot reach" in proc.stderr
