#!/usr/bin/env bash
# One command from a fresh clone to a real /invocations answer:
#   install the pinned packages → get data → train NeuMF → start the `serve` program as a plain process
#   against a temporary /opt/ml tree → ask it for the seed workshop's request → stop it.
# Data, first found wins: $NCF_DATA_DIR/ml-1m (default ../shared/data, the NCF paper's ML-1M split),
# GroupLens' ml-1m download (internet), else a clearly labelled SYNTHETIC set (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=${NCF_WORK_DIR:-$ROOT/.quickstart}
DATA_DIR=${NCF_DATA_DIR:-$ROOT/../shared/data}
EPOCHS=${EPOCHS:-}
BATCH_SIZE=

echo "==> installing pinned packages (pyproject.toml: train + serve extras)"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[train,serve]'

mkdir -p "$WORK/ml/model"
echo "==> getting data"
if [[ -f $DATA_DIR/ml-1m/ml-1m.test.negative && -f $DATA_DIR/ml-1m/derived/ml-1m.train.pairs.tsv ]]; then
    mkdir -p "$WORK/ml-1m"
    ln -sf "$DATA_DIR/ml-1m/derived/ml-1m.train.pairs.tsv" "$WORK/ml-1m/ml-1m.train.rating"
    ln -sf "$DATA_DIR/ml-1m/ml-1m.test.rating" "$WORK/ml-1m/ml-1m.test.rating"
    ln -sf "$DATA_DIR/ml-1m/ml-1m.test.negative" "$WORK/ml-1m/ml-1m.test.negative"
    DATA=$WORK/ml-1m
    echo "    MovieLens-1M, the NCF paper's leave-one-out split, from $DATA_DIR"
elif "$PYTHON" -m ncf_core download ml-1m --to "$WORK/downloads" 2>/dev/null; then
    DATA=$WORK/downloads/ml-1m
    echo "    MovieLens-1M downloaded from GroupLens (checksum verified)"
else
    DATA=$WORK/synthetic/ratings.csv
    "$PYTHON" -m ncf_core synthetic --to "$DATA" >/dev/null
    EPOCHS=${EPOCHS:-8}
    BATCH_SIZE=1024 # 12k interactions: the ML-1M default batch would leave a handful of steps an epoch
    echo "    !! offline and no MovieLens found: using a SYNTHETIC data set (planted groups), not real ratings"
fi

echo "==> training NeuMF (factor 32, 3 layers) into $WORK/ml/model"
"$PYTHON" -m ncf_core train --data "$DATA" --model-dir "$WORK/ml/model" ${EPOCHS:+--epochs "$EPOCHS"} \
    ${BATCH_SIZE:+--batch-size "$BATCH_SIZE"}

PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "==> serving it on 127.0.0.1:$PORT (SAGEMAKER_BASE_DIR=$WORK/ml)"
SAGEMAKER_BASE_DIR=$WORK/ml SAGEMAKER_BIND_TO_PORT=$PORT serve &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$PORT/ping" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/ping" >/dev/null

USER_ID=$("$PYTHON" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["users"][0]))' "$WORK/ml/model/id_maps.json")
ITEMS=$("$PYTHON" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["items"][:100]))' "$WORK/ml/model/id_maps.json")
USERS=$("$PYTHON" -c 'import sys; print("[" + ",".join([sys.argv[1]] * 100) + "]")' "$USER_ID")
echo "==> POST /invocations (the seed workshop's payload: one user, 100 candidate items → top-10)"
curl -fsS -H 'Content-Type: application/json' -d "{\"user\": $USERS, \"item\": $ITEMS}" \
    "http://127.0.0.1:$PORT/invocations"
echo
echo "==> POST /invocations (top-5 over all items, seen items excluded)"
curl -fsS -H 'Content-Type: application/json' -d "{\"users\": [$USER_ID], \"k\": 5}" \
    "http://127.0.0.1:$PORT/invocations"
echo
