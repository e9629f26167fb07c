"""How long parsing a large JSON request holds the GIL: one ``orjson.loads`` against ``sliced_json``.

    python -m benchmarks.json_parse_bench

(from the repository root). A watcher thread wakes every 2 ms; its longest gap while a body is parsed is
the longest time no other thread (the serving worker's event loop, /ping) could run. The garbage
collector is set as the server sets it after loading a model (no automatic full collections), and the
parsed document is freed outside the timed window. One JSON line per body and parser:
``{"body", "bytes", "parser", "parse_s", "max_stall_ms"}``; the two parsers' documents are compared.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable

import orjson

from ncf_sagemaker.serving import sliced_json
from ncf_sagemaker.serving.handler import gc_after_load

PAIRS = 540_000  # about SageMaker's 6 MB real-time limit as [[user, item], ...]


def bodies() -> dict[str, bytes]:
    pairs = [[i % 6040, i % 3706] for i in range(PAIRS)]
    string_ids = [f"m{i}, [x]" for i in range(100_000)]  # commas and brackets inside strings
    escaped = [f'{i}"\\,[' for i in range(1000)]  # quotes after backslashes
    return {
        "pairs_6mb": orjson.dumps({"pairs": pairs}),
        "pairs_and_string_ids": orjson.dumps({"pairs": pairs, "candidates": string_ids}),
        "pairs_and_escaped_quotes": orjson.dumps({"pairs": pairs, "candidates": escaped}),
    }


def longest_stall(parse: Callable[[bytes], object], body: bytes) -> tuple[float, float, object]:
    gaps: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.05)
    start = time.perf_counter()
    doc = parse(body)
    parse_s = time.perf_counter() - start
    time.sleep(0.01)
    stop.set()
    watcher.join()
    return parse_s, max(gaps) * 1000, doc


def main() -> None:
    gc_after_load()
    for name, body in bodies().items():
        docs = []
        for parser, parse in (("orjson.loads", orjson.loads), ("sliced_json.loads", sliced_json.loads)):
            parse_s, stall_ms, doc = longest_stall(parse, body)
            line = {"body": name, "bytes": len(body), "parser": parser, "parse_s": round(parse_s, 3)}
            print(json.dumps(line | {"max_stall_ms": round(stall_ms, 1)}), flush=True)
            docs.append(doc)
        assert docs[1] is not None and docs[0] == docs[1], f"{name}: the sliced parse differs"
        del docs
        gc.collect()


if __name__ == "__main__":
    main()
