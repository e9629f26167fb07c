"""The test suite, by tier: unit/ (no Docker, no AWS), aws/ (launch scripts against moto), container/
(a real Docker engine); shared helpers in support/. A package, so that `pytest` and `python -m pytest`
both import the tests as `tests.<tier>.<module>`."""
