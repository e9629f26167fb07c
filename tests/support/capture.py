"""SageMaker data capture, written as the platform writes it: the monitor's tests feed it real requests and
the real server's responses.

One JSON object per line, in files under ``{endpoint}/{variant}/yyyy/mm/dd/hh/`` (the hour, UTC). Bodies
whose content type the endpoint's ``CaptureContentTypeHeader`` lists as JSON or CSV are captured as text
(``encoding`` JSON / CSV); any other content type (here ``application/jsonlines``) as BASE64, as
SageMaker does by default.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv",)


def part(body: bytes, content_type: str, mode: str) -> dict:
    media = content_type.partition(";")[0].strip().lower()
    if media in JSON_TYPES:
        encoding, data = "JSON", body.decode("utf-8")
    elif media in CSV_TYPES:
        encoding, data = "CSV", body.decode("utf-8")
    else:
        encoding, data = "BASE64", base64.b64encode(body).decode("ascii")
    return {"observedContentType": content_type, "mode": mode, "data": data, "encoding": encoding}


def record(request: bytes, request_type: str, response: bytes, response_type: str, when: datetime) -> dict:
    """One captured invocation."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return {
        "captureData": {
            "endpointInput": part(request, request_type, "INPUT"),
            "endpointOutput": part(response, response_type, "OUTPUT"),
        },
        "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceTime": stamp},
        "eventVersion": "0",
    }


def write(
    root: Path, endpoint: str, variant: str, lines: Iterable[tuple[datetime, dict | str]], per_file: int = 50
) -> list[Path]:
    """Capture lines (a record, or any text: a corrupted line) into files of their hour, ``per_file``
    lines a file, named as SageMaker names them (``mm-ss-mmm-<uuid>.jsonl``)."""
    by_hour: dict[datetime, list[tuple[datetime, str]]] = defaultdict(list)
    for when, line in lines:
        text = line if isinstance(line, str) else json.dumps(line, separators=(",", ":"))
        by_hour[when.replace(minute=0, second=0, microsecond=0)].append((when, text))
    files = []
    for hour, entries in sorted(by_hour.items()):
        folder = root / endpoint / variant / hour.strftime("%Y/%m/%d/%H")
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(entries), per_file):
            chunk = entries[start : start + per_file]
            first = chunk[0][0]
            name = f"{first:%M-%S}-{first.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            (folder / name).write_text("".join(text + "\n" for _, text in chunk))
            files.append(folder / name)
    return files
