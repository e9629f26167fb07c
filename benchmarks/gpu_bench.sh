#!/usr/bin/env bash
# The GPU session's one script: python -m benchmarks.gpu_bench under a hard time limit, JSON in
# ${OUT:-.}/gpu_bench.json (docs/benchmarks.md, "GPU"). Unattended on a bare single-GPU Linux machine:
#
#   bash benchmarks/gpu_bench.sh                      # from the repository root, or from anywhere
#   OUT=/some/dir NCF_ML1M_DIR=/data/ml-1m bash benchmarks/gpu_bench.sh
#   bash benchmarks/gpu_bench.sh --smoke --device cpu # the same path on a CPU, in a minute
#
# Python: $PYTHON, else ./.venv/bin/python, else python3; it needs torch and numpy (pandas not). If they
# are missing it tries one `pip install` of the pinned versions (pyproject.toml) into a venv, which needs a
# network; without one it writes the reason into the JSON and exits 2. Extra arguments go to the program.
# The limit: GPU_BENCH_TIMEOUT_S (default 470 s, under 8 minutes); the program's own budget is 50 s less,
# so it normally ends itself, and the JSON it rewrites after each phase survives a kill.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-.}
mkdir -p "$OUT_DIR"
JSON="$OUT_DIR/gpu_bench.json"
LIMIT=${GPU_BENCH_TIMEOUT_S:-470}
BUDGET=$((LIMIT - 50))
started=$(date +%s)

fail() {  # reason: written as the JSON, so an unattended run always leaves one
    printf '{"benchmark": "gpu_bench", "error": "%s"}\n' "$1" >"$JSON"
    echo "gpu_bench.sh: $1" >&2
    exit 2
}

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || fail "no python ($PY)"
if ! "$PY" -c 'import torch, numpy' 2>/dev/null; then
    echo "gpu_bench.sh: torch/numpy missing for $PY; trying a venv with the pinned versions" >&2
    VENV="${TMPDIR:-/tmp}/ncf-gpu-bench-venv"
    "$PY" -m venv "$VENV" && PY="$VENV/bin/python"
    timeout 150 "$PY" -m pip install --quiet --disable-pip-version-check --retries 1 --timeout 10 -e . ||
        fail "torch and numpy are not installed and could not be (no network?)"
fi

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
else
    echo "gpu_bench.sh: no nvidia-smi on PATH (a CPU run unless torch sees a GPU)" >&2
fi
"$PY" -c 'import torch; print("gpu_bench.sh: torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' >&2

ML1M_ARGS=()
if [[ -n "${NCF_ML1M_DIR:-}" ]]; then ML1M_ARGS=(--ml1m "$NCF_ML1M_DIR"); fi
left=$((LIMIT - ($(date +%s) - started)))
((left > 60)) || fail "set-up took the whole time limit"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout --kill-after=10 "$left" "$PY" -m benchmarks.gpu_bench --out "$JSON" \
    --budget-s "$((BUDGET < left - 30 ? BUDGET : left - 30))" "${ML1M_ARGS[@]}" "$@"
code=$?
if ((code == 124 || code == 137)); then
    echo "gpu_bench.sh: killed at the ${LIMIT} s limit; $JSON holds the phases that finished" >&2
fi
echo "gpu_bench.sh: exit $code after $(($(date +%s) - started)) s; $JSON" >&2
exit "$code"
