"""scripts/upload_data.sh: put a dataset under an S3 prefix, ready to be a training job's channel.

    scripts/upload_data.sh data/ml-1m/ml-1m s3://BUCKET/ncf/ml-1m       NCF prefix: ml-1m.train.rating, ...
    scripts/upload_data.sh data/ml-100k/u.data s3://BUCKET/ncf/ml-100k  raw ratings file
    scripts/upload_data.sh data/ml-100k s3://BUCKET/ncf/ml-100k         directory holding either

The files keep their names, side by side under the prefix, which is what the training image looks for in a
channel directory: one `*.train.rating` with its `.test.rating` and `.test.negative`, or one of ratings.dat,
u.data, ratings.csv, ratings.parquet. Re-running skips files whose MD5 (kept in the object's metadata) is
unchanged. Prints the prefix to pass to train.sh --train.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from .aws_client import (
    Aws,
    UsageError,
    check_bucket,
    connect,
    error_code,
    parse_s3_uri,
    result,
    run_main,
    say,
)

# The same names as ncf_core.data (NCF_SUFFIXES, RAW_FILE_NAMES); a test keeps them equal.
NCF_SUFFIXES = {"train": ".train.rating", "test": ".test.rating", "negative": ".test.negative"}
RAW_FILE_NAMES = ("ratings.dat", "u.data", "ratings.csv", "ratings.parquet")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="upload_data.sh",
        description="Upload an NCF-format dataset or a raw ratings file under an S3 prefix.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("source", help="NCF prefix, raw ratings file, or a directory holding one of them")
    p.add_argument("destination", help="s3://BUCKET/PREFIX (the channel URI for train.sh)")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    return p


def dataset_files(source: str) -> list[Path]:
    """The files that make up the dataset at `source` (the rules of ncf_core.data.resolve)."""
    path = Path(source)
    train_suffix = NCF_SUFFIXES["train"]
    if path.is_file():
        if path.name.endswith(train_suffix):
            return _ncf_files(str(path)[: -len(train_suffix)])
        if path.name not in RAW_FILE_NAMES:
            raise UsageError(
                f"{path}: the training image finds a raw ratings file in its channel by name; "
                f"rename it to one of {', '.join(RAW_FILE_NAMES)}"
            )
        return [path]
    if path.is_dir():
        trains = sorted(path.glob("*" + train_suffix))
        if len(trains) > 1:
            raise UsageError(
                f"{path} holds several NCF datasets ({', '.join(t.name for t in trains)}): pass a prefix"
            )
        if trains:
            return _ncf_files(str(trains[0])[: -len(train_suffix)])
        for name in RAW_FILE_NAMES:
            if (path / name).is_file():
                return [path / name]
        raise UsageError(f"{path} holds no '*{train_suffix}' and none of {', '.join(RAW_FILE_NAMES)}")
    if Path(source + train_suffix).is_file():
        return _ncf_files(source)
    raise UsageError(f"{source}: no such file, directory or NCF prefix")


def _ncf_files(prefix: str) -> list[Path]:
    files = [Path(prefix + suffix) for suffix in NCF_SUFFIXES.values()]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UsageError(f"NCF prefix {prefix} is missing {', '.join(missing)}")
    return files


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upload(aws: Aws, path: Path, bucket: str, key: str) -> None:
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    md5 = md5_of(path)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] == path.stat().st_size and head.get("Metadata", {}).get("md5") == md5:
            say(f"unchanged: s3://{bucket}/{key}")
            return
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchKey"):
            raise
    say(f"uploading {path} ({path.stat().st_size / 1e6:.1f} MB) to s3://{bucket}/{key}")
    s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"md5": md5}})


def list_keys(aws: Aws, bucket: str, prefix: str) -> list[str]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        files = dataset_files(args.source)
        bucket, prefix = parse_s3_uri(args.destination, "destination")
        prefix = prefix.strip("/")
        if not prefix:
            raise UsageError("give the data its own prefix (s3://BUCKET/PREFIX), not the bucket's root")
        aws = connect(args.region)
        check_bucket(aws, bucket)
        for path in files:
            upload(aws, path, bucket, f"{prefix}/{path.name}")
        ours = {f"{prefix}/{path.name}" for path in files}
        others = [key for key in list_keys(aws, bucket, f"{prefix}/") if key not in ours]
        if others:
            say(
                f"warning: s3://{bucket}/{prefix}/ also holds {', '.join(others[:5])}"
                + (f" and {len(others) - 5} more" if len(others) > 5 else "")
                + ": a training job reading this prefix sees them too (delete them or use another prefix)"
            )
        result(f"s3://{bucket}/{prefix}/")

    return run_main("upload_data", body)
