"""Fixtures of the launch-script tests: one moto server a session, a reset account per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.moto import BUCKET, Aws, MotoServer


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server: MotoServer) -> Aws:
    moto_server.reset()
    view = Aws(moto_server)
    view.s3.create_bucket(Bucket=BUCKET)
    return view
