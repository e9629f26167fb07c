"""The serving tests' own helpers (tests.support.serving) do what the other tests rely on."""

from __future__ import annotations

import pytest

from tests.support.serving import group_of_item, group_of_user, running_server, trained_artifact


def test_trained_artifact_learned_the_planted_groups(tmp_path_factory):
    from ncf_core.inference import Recommender

    rec = Recommender.load(trained_artifact(tmp_path_factory.getbasetemp()))
    for user in (1, 2, 9):
        top = rec.recommend(user, 5).items
        assert [group_of_item(i) for i in top] == [group_of_user(user)] * 5, (user, top)


def test_server_helper_stops_the_process(tmp_path, tmp_path_factory):
    model = trained_artifact(tmp_path_factory.getbasetemp())
    with running_server(tmp_path, model, {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}) as server:
        assert server.request("GET", "/ping").status == 200
    assert server.proc.returncode == 0
    with pytest.raises(OSError):
        server.request("GET", "/ping", timeout=2)
