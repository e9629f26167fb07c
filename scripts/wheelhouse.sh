#!/usr/bin/env bash
# Fill ./wheelhouse/ with the wheels our images install, so a Dockerfile can run
#   pip install --no-index --find-links /wheelhouse ...
# Inside containers pip cannot verify TLS (the machine's egress CA lives only in the host's trust store),
# so everything is downloaded here by the host's pip, for the images' Python: CPython 3.11 on
# Debian bookworm (glibc 2.36), x86_64.
#
#   scripts/wheelhouse.sh            download (idempotent: wheels already there are not fetched again)
#   scripts/wheelhouse.sh --verify   then pip-install it into ncf-python:bookworm's /opt/venv and import
#
# The pins are read from pyproject.toml: dependencies + extras train, tracking, serve and monitor + build-system.requires
# (so `pip install --no-index --find-links /wheelhouse .` can build the project in the image).
# Start from scratch: rm -rf wheelhouse
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/wheelhouse
MAX_TORCH_MB=${MAX_TORCH_MB:-300} # the CPU wheel is ~190 MB; a CUDA build is several GB
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$ROOT/pyproject.toml" >"$tmp/requirements.txt" <<'EOF'
import sys, tomllib

with open(sys.argv[1], "rb") as f:
    p = tomllib.load(f)
extras = p["project"]["optional-dependencies"]
images = extras["train"] + extras["tracking"] + extras["serve"] + extras["monitor"]
print("\n".join(p["project"]["dependencies"] + images + p["build-system"]["requires"]))
EOF

# pip does not widen manylinux_2_X platform tags by itself: list every glibc the image can run.
pip_target=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311)
for minor in $(seq 5 36); do pip_target+=(--platform "manylinux_2_${minor}_x86_64"); done
pip_target+=(--platform manylinux2014_x86_64) # pip adds manylinux2010/manylinux1 to this one

# Resolve first, downloading nothing but metadata, and refuse a torch wheel that is not the small
# CPU build: with the machine's pip config, torch==X resolves to the X+cpu wheel on this disk.
pip install -qq --dry-run --ignore-installed --target "$tmp/t" --report "$tmp/report.json" \
    "${pip_target[@]}" -r "$tmp/requirements.txt"
python3 - "$tmp/report.json" "$MAX_TORCH_MB" <<'EOF'
import json, os, sys, urllib.parse, urllib.request

report, max_mb = json.load(open(sys.argv[1])), float(sys.argv[2])
for item in report["install"]:
    if item["metadata"]["name"].lower() != "torch":
        continue
    url = item["download_info"]["url"]
    if url.startswith("file:"):
        size = os.path.getsize(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    else:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as r:
            size = int(r.headers["Content-Length"])
    print(f"torch {item['metadata']['version']}: {size / 1e6:.0f} MB from {url}", file=sys.stderr)
    if size > max_mb * 1e6:
        sys.exit(f"refusing torch wheel of {size / 1e6:.0f} MB (> {max_mb:.0f} MB): not the CPU build")
EOF

mkdir -p "$OUT"
pip download -qq --dest "$OUT" "${pip_target[@]}" -r "$tmp/requirements.txt"
cp "$tmp/requirements.txt" "$OUT/requirements.txt" # what was asked for, for the --verify step and images
echo "wheelhouse: $(find "$OUT" -name '*.whl' | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT" >&2

if [[ ${1:-} == --verify ]]; then
    # Same install an image build does, in a throwaway container, then import what train/serve use.
    docker run --rm -v "$OUT:/wheelhouse:ro" ncf-python:bookworm sh -c '
        pip install -q --no-index --find-links /wheelhouse -r /wheelhouse/requirements.txt &&
        python -c "import sys, torch, numpy, pandas, pyarrow, starlette, gunicorn, orjson, mlflow, sagemaker_mlflow
print(sys.version.split()[0], \"torch\", torch.__version__, \"numpy\", numpy.__version__, \"pandas\", pandas.__version__)"'
fi
