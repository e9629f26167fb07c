"""scripts/smoke_test.sh --endpoint against the moto server: InvokeEndpoint answers (moto's canned results),
an unknown endpoint refused before any invocation."""

from __future__ import annotations

import json

from tests.support.moto import ok, refused, set_endpoint_results


def test_smoke_test_an_endpoint(aws):
    aws.push_fake_image("ncf-serve")
    ok(aws.run("deploy", "--endpoint", "ncf-staging", "--model-data", aws.put("m/model.tar.gz")))
    set_endpoint_results(aws, *[json.dumps({"items": [1, 2, 3]})] * 8)
    lines = ok(aws.run("smoke_test", "--endpoint", "ncf-staging", "--requests", "3", "--max-p99-ms", "10000"))
    assert [line.split(":")[0] for line in lines] == ["seed.json", "users.json"]
    assert all("4 requests, 0 errors" in line for line in lines), lines
    calls = [r for r in aws.server.requests if r["path"].endswith("/invocations")]
    assert len(calls) == 8


def test_unknown_endpoint_is_refused(aws):
    refused(aws.run("smoke_test", "--endpoint", "nope"), "no endpoint named nope")
    assert not [r for r in aws.server.requests if r["path"].endswith("/invocations")]
