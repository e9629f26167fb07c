"""A SageMaker SDK session that compiles a pipeline without any network call.

The definition is plain data, so it is always built offline: a ``PipelineSession`` on a boto3 session with
an explicit region and placeholder credentials (nothing is signed for real), an explicit default bucket
(``default_bucket()`` would otherwise create one), and the SDK's telemetry turned off in its defaults
config (``estimator.fit`` would otherwise call STS and an S3 URL). Upsert and start then send the
definition with the launcher's own checked boto3 session (``ncf_launch.aws_client.connect``).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The SDK v2 warns on import that v3 exists; we chose v2 on purpose (README, "MLOps").
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

SDK_PIN = "sagemaker==2.257.7"  # the mlops extra of pyproject.toml
OFFLINE_CREDENTIAL = "offline-definition"
NO_INSTANCE_METADATA_ENV = "AWS_EC2_METADATA_DISABLED"
SDK_DEFAULTS = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}


def _quiet_sdk() -> None:
    """Keep stdout for the definition: the SDK logs its config search to stdout unless its logger already
    has a handler, and narrates each compiled step; only its errors are shown, on stderr."""
    sdk_log = logging.getLogger("sagemaker")
    if not sdk_log.handlers:
        sdk_log.addHandler(logging.StreamHandler(sys.stderr))
        sdk_log.propagate = False
    sdk_log.setLevel(logging.ERROR)
    logging.getLogger("sagemaker.config").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Running within a PipelineSession")


_quiet_sdk()  # before anything imports the SDK (ncf_mlops.pipeline imports this module first)


@contextmanager
def no_instance_metadata() -> Iterator[None]:
    """While the SDK is imported and the pipeline compiled: importing it makes default boto3 sessions
    (``sagemaker.jumpstart.constants``), and without credentials in the environment botocore would ask
    the EC2 instance metadata service (169.254.169.254) for some. Restored after, for the real calls."""
    before = os.environ.get(NO_INSTANCE_METADATA_ENV)
    os.environ[NO_INSTANCE_METADATA_ENV] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[NO_INSTANCE_METADATA_ENV]
        else:
            os.environ[NO_INSTANCE_METADATA_ENV] = before


def offline_session(region: str, bucket: str) -> Any:
    """A ``PipelineSession`` for ``region`` whose default bucket is ``bucket``; it never reaches AWS."""
    try:
        import boto3
        from sagemaker.workflow.pipeline_context import PipelineSession
    except ImportError:
        from ncf_launch.aws_client import UsageError

        raise UsageError(
            f"the SageMaker Python SDK is not installed: pip install '{SDK_PIN}' "
            "(or, in this repository, pip install -e '.[mlops]')"
        ) from None
    logging.getLogger().setLevel(logging.WARNING)  # an SDK module sets the root logger to INFO on import
    boto_session = boto3.Session(
        aws_access_key_id=OFFLINE_CREDENTIAL,
        aws_secret_access_key=OFFLINE_CREDENTIAL,
        region_name=region,
    )
    session = PipelineSession(boto_session=boto_session, default_bucket=bucket, sagemaker_config=SDK_DEFAULTS)
    session._default_bucket = bucket  # known: default_bucket() must not look for it (or create it)
    return session
