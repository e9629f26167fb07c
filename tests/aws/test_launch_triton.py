"""deploy.sh --server triton, invoke.sh's KServe v2 bodies and cleanup.sh against the moto server
(tests/support/moto.py): single- and multi-model Triton endpoints on the region's sagemaker-tritonserver
image, adding a model by uploading its package, cleanup deleting the uploads, and bad packages refused
before any AWS call. The packages are written here in export's layout (tests/unit/test_triton_export.py and
tests/serving/test_triton.py check what export writes; test_exported_packages_pass_the_checks ties the two).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support.moto import BUCKET, ROLE, Aws, ok, refused, set_endpoint_results

IMAGE_GPU = "763104351884.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
IMAGE_CPU = IMAGE_GPU + "-cpu"


def network(name: str) -> str:
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 64\ninput [\n  {{\n    name: "USER"\n  }}\n]\n'
    )


def ensemble(name: str, steps: list[str]) -> str:
    body = "".join(
        f'  step [\n    {{\n      model_name: "{s}"\n      model_version: -1\n    }}\n  ]\n' for s in steps
    )
    return f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 64\nensemble_scheduling {{\n{body}}}\n'


def repository(root: Path, name: str = "ncf") -> Path:
    """export's repository layout: two ensembles, each with its steps."""
    topk, pairs = [f"{name}_users", f"{name}_topk", f"{name}_items"], [f"{name}_pair_ids", f"{name}_pairs"]
    configs = {name: ensemble(name, topk), f"{name}_scores": ensemble(f"{name}_scores", pairs)}
    configs |= {m: network(m) for m in topk + pairs}
    for model, text in configs.items():
        (root / model / "1").mkdir(parents=True)
        (root / model / "config.pbtxt").write_text(text)
        (root / model / "1" / "model.py").write_text("# stand-in\n")
    return root


def package(path: Path, members: dict[str, str]) -> Path:
    """A tar.gz of ``{archive path: text}`` (a path ending in / is a directory)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = text.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def good_package(directory: Path, name: str = "ncf") -> Path:
    steps = [f"{name}_users", f"{name}_topk", f"{name}_items"]
    members = {f"{name}/config.pbtxt": ensemble(name, steps), f"{name}/1/": ""}
    for s in steps:
        members |= {f"{s}/config.pbtxt": network(s), f"{s}/1/model.py": "# stand-in\n"}
    return package(directory / f"{name}.tar.gz", members)


def model_of(aws: Aws, endpoint: str) -> dict:
    config_name = aws.sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    (variant,) = aws.sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    return aws.sm.describe_model(ModelName=variant["ModelName"]) | {"variant": variant}


def keys(aws: Aws) -> list[str]:
    return sorted(o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_single_model_from_a_package_then_cleanup(aws, tmp_path):
    pkg = good_package(tmp_path)
    proc = aws.run(
        "deploy", "--server", "triton", "--endpoint", "ncf-triton", "--package", str(pkg),
        "--upload-to", f"s3://{BUCKET}/triton",
    )  # fmt: skip
    assert ok(proc) == ["ncf-triton"]
    model = model_of(aws, "ncf-triton")
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE_GPU
    assert container["Environment"] == {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "ncf"}
    assert "Mode" not in container or container["Mode"] == "SingleModel"
    assert model["variant"]["InstanceType"] == "ml.g4dn.xlarge"
    assert model["ExecutionRoleArn"] == ROLE
    (key,) = keys(aws)
    assert container["ModelDataUrl"] == f"s3://{BUCKET}/{key}"
    assert key.startswith("triton/ncf-triton-") and key.endswith("/model.tar.gz")
    assert aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == pkg.read_bytes()
    assert aws.server.calls("DescribeRepositories") == []  # no image of ours: build_and_push.sh not needed

    aws.put("triton/other.txt")  # not deploy's: kept
    lines = ok(aws.run("cleanup", "--endpoint", "ncf-triton", "--yes"))
    assert f"s3://{BUCKET}/{key}" in lines and "ncf-triton" in lines
    assert keys(aws) == ["triton/other.txt"]
    assert aws.sm.list_models()["Models"] == [] and aws.sm.list_endpoints()["Endpoints"] == []


def test_single_model_from_a_repository_on_cpu(aws, tmp_path):
    repo = repository(tmp_path / "repo")
    proc = aws.run(
        "deploy", "--server", "triton", "--endpoint", "ncf-cpu", "--package", str(repo),
        "--model-name", "ncf_scores", "--upload-to", f"s3://{BUCKET}/triton/",
        "--instance-type", "ml.c5.xlarge",
        "--env", "SAGEMAKER_TRITON_LOG_VERBOSE=true",
    )  # fmt: skip
    ok(proc)
    container = model_of(aws, "ncf-cpu")["PrimaryContainer"]
    assert container["Image"] == IMAGE_CPU
    assert container["Environment"] == {
        "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "ncf_scores",
        "SAGEMAKER_TRITON_LOG_VERBOSE": "true",
    }
    (key,) = keys(aws)
    with tarfile.open(fileobj=io.BytesIO(aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())) as tar:
        tops = {m.name.split("/")[0] for m in tar.getmembers()}
    assert tops == {p.name for p in repo.iterdir()}  # the whole repository, models at the archive's root


def test_multi_model_then_adding_a_model_is_an_upload(aws, tmp_path):
    ncf, shop = good_package(tmp_path), good_package(tmp_path, "shop")
    prefix = f"s3://{BUCKET}/tmme/"
    args = ("deploy", "--server", "triton", "--multi-model", "--endpoint", "ncf-tmme", "--upload-to", prefix)
    ok(aws.run(*args, "--package", str(ncf)))
    container = model_of(aws, "ncf-tmme")["PrimaryContainer"]
    assert (container["Mode"], container["ModelDataUrl"], container["Image"]) == (
        "MultiModel",
        prefix,
        IMAGE_GPU,
    )
    assert container.get("Environment", {}) == {}
    assert keys(aws) == ["tmme/ncf.tar.gz"]

    before = len(aws.server.calls("CreateModel"))
    proc = aws.run(*args, "--package", str(shop), "--package", str(ncf))  # ncf: same bytes, left as is
    ok(proc)
    assert "--target-model shop.tar.gz" in proc.stderr
    assert len(aws.server.calls("CreateModel")) == before and aws.server.calls("UpdateEndpoint") == []
    assert keys(aws) == ["tmme/ncf.tar.gz", "tmme/shop.tar.gz"]

    (tmp_path / "v2").mkdir()
    changed = package(tmp_path / "v2" / "ncf.tar.gz", {"ncf/config.pbtxt": network("ncf"), "ncf/2/": ""})
    refused(aws.run(*args, "--package", str(changed)), "exists with other content")

    set_endpoint_results(aws, '{"model_name": "shop"}')
    proc = aws.run("invoke", "--endpoint", "ncf-tmme", "--target-model", "shop.tar.gz", "--users", "1,2,999")
    assert ok(proc) == ['{"model_name": "shop"}']
    sent = aws.server.requests[-1]
    assert sent["headers"]["x-amzn-sagemaker-target-model"] == "shop.tar.gz"
    assert json.loads(sent["body"]) == {
        "inputs": [{"name": "USER", "shape": [3, 1], "datatype": "INT64", "data": [1, 2, 999]}]
    }

    ok(aws.run("cleanup", "--endpoint", "ncf-tmme", "--yes"))
    assert keys(aws) == []  # both uploads, the added one too


def test_invoke_pairs_body_with_string_ids(aws):
    set_endpoint_results(aws, "{}")
    ok(aws.run("invoke", "--endpoint", "ncf-triton", "--pairs", "u1:i9,u2:i3"))
    assert json.loads(aws.server.requests[-1]["body"])["inputs"] == [
        {"name": "USER", "shape": [2, 1], "datatype": "BYTES", "data": ["u1", "u2"]},
        {"name": "ITEM", "shape": [2, 1], "datatype": "BYTES", "data": ["i9", "i3"]},
    ]
    refused(aws.run("invoke", "--endpoint", "ncf-triton", "--pairs", "1:2,3"), "USER:ITEM")


BAD = {
    "no config": ({"ncf/1/model.py": ""}, "ncf/ has no config.pbtxt"),
    "name mismatch": ({"ncf/config.pbtxt": network("other"), "ncf/1/": ""}, "names model 'other'"),
    "no version": ({"ncf/config.pbtxt": network("ncf")}, "no version directory"),
    "file at root": (
        {"config.pbtxt": network("ncf"), "ncf/config.pbtxt": network("ncf"), "ncf/1/": ""},
        "root",
    ),
    "two entries": (
        {"ncf/config.pbtxt": network("ncf"), "ncf/1/": "", "b/config.pbtxt": network("b"), "b/1/": ""},
        "exactly one entry",
    ),
    "missing step": ({"ncf/config.pbtxt": ensemble("ncf", ["ncf_topk"]), "ncf/1/": ""}, "needs ncf_topk"),
    "unsafe": ({"../ncf/config.pbtxt": network("ncf")}, "unsafe"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_packages_are_refused_before_any_call(aws, tmp_path, case):
    members, message = BAD[case]
    pkg = package(tmp_path / "ncf.tar.gz", members)
    aws.server.requests.clear()  # (the fixture's CreateBucket)
    refused(
        aws.run("deploy", "--server", "triton", "--endpoint", "e", "--package", str(pkg), "--upload-to", f"s3://{BUCKET}/t"),
        message,
    )  # fmt: skip
    assert aws.server.requests == []


def test_other_refusals_before_any_call(aws, tmp_path):
    repo = repository(tmp_path / "repo")
    pkg = good_package(tmp_path)
    (tmp_path / "empty").mkdir()
    misnamed = package(tmp_path / "shop.tar.gz", {"ncf/config.pbtxt": network("ncf"), "ncf/1/": ""})
    base = ("deploy", "--server", "triton", "--endpoint", "e", "--upload-to", f"s3://{BUCKET}/t")
    aws.server.requests.clear()  # (the fixture's CreateBucket)
    for extra, message in [
        (["--package", str(repo)], "one entry model"),  # two ensembles: --model-name needed
        (["--package", str(repo), "--model-name", "nope"], "not one of its models"),
        (["--package", str(tmp_path / "empty")], "no model directories"),
        (["--package", str(pkg), "--model-name", "ncf_scores"], "serves ncf"),
        (["--package", str(repo), "--multi-model"], "is a directory"),
        (["--package", str(pkg), "--package", str(pkg)], "one --package"),
        (["--package", str(misnamed)], "name the file ncf.tar.gz"),
        (["--package", str(pkg), "--triton-version", "latest"], "--triton-version"),
        (["--package", str(tmp_path / "missing.tar.gz")], "not found"),
    ]:
        refused(aws.run(*base, *extra), message)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not gzip")
    refused(aws.run(*base, "--package", str(broken)), "not a gzipped tar")
    assert aws.server.requests == []


def test_image_table_matches_the_sdk():
    image_uris = pytest.importorskip("sagemaker.image_uris")
    from ncf_launch.triton_deploy import TRITON_ACCOUNTS, TRITON_VERSION, triton_image

    config = image_uris.config_for_framework("sagemaker-tritonserver")
    assert config["versions"][TRITON_VERSION]["registries"] == TRITON_ACCOUNTS
    for region in ("us-east-1", "eu-south-1", "cn-north-1"):
        for instance in ("ml.g4dn.xlarge", "ml.c5.xlarge"):
            want = image_uris.retrieve(
                "sagemaker-tritonserver", region, version=TRITON_VERSION, instance_type=instance
            )
            assert triton_image(region, instance) == want


def test_the_documented_commands(aws, tmp_path):
    """docs/triton.md's first bash block, as written, on packages export wrote (bash -e, moto)."""
    import subprocess

    from ncf_core.triton import export, write_packages
    from tests.support.paths import ROOT
    from tests.support.triton import random_artifact

    text = (ROOT / "docs" / "triton.md").read_text()
    block = text.split("## Deploy, invoke, clean up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    exported = export(random_artifact(tmp_path / "model"), tmp_path / "repo", "ncf", 10)
    write_packages(exported, tmp_path / "pkgs")
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    set_endpoint_results(aws, *['{"outputs": []}'] * 3)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path, env=aws.env | {"BUCKET": BUCKET}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert aws.sm.list_endpoints()["Endpoints"] == [] and keys(aws) == []  # cleaned up, uploads too
    bodies = [json.loads(r["body"]) for r in aws.server.requests if r["path"].endswith("/invocations")]
    assert [b["inputs"][0]["name"] for b in bodies] == ["USER", "USER", "USER"]
    assert [len(aws.server.calls(t)) for t in ("CreateEndpoint", "UpdateEndpoint")] == [2, 0]


def test_a_gpu_multi_model_triton_endpoint_scales_on_gpu_utilisation_and_cleanup_deregisters(aws, tmp_path):
    """SageMaker's multi-model endpoints on GPU run only on Triton: this is where the GPU target belongs."""
    from tests.aws.test_launch_autoscale import targets_and_policies

    prefix = f"s3://{BUCKET}/tscale/"
    args = ("deploy", "--server", "triton", "--multi-model", "--endpoint", "ncf-tgpu", "--upload-to", prefix)
    ok(aws.run(*args, "--package", str(good_package(tmp_path)), "--autoscale", "1:4"))
    targets, policies = targets_and_policies(aws)
    assert targets == {"endpoint/ncf-tgpu/variant/primary": (1, 4)}
    config = policies["endpoint/ncf-tgpu/variant/primary"]["TargetTrackingScalingPolicyConfiguration"]
    assert config["CustomizedMetricSpecification"]["MetricName"] == "GPUUtilization"
    assert config["TargetValue"] == 60.0  # the default for a GPU multi-model endpoint
    refused(
        aws.run(*args, "--package", str(good_package(tmp_path)), "--instance-type", "ml.c5.xlarge",
                "--autoscale", "1:2", "--target-gpu-utilization", "50"),
        "GPU",
    )  # fmt: skip
    ok(aws.run("cleanup", "--endpoint", "ncf-tgpu", "--yes"))
    assert targets_and_policies(aws) == ({}, {})
