#!/bin/sh
# Give any base image what our images need: a Python 3.11 venv at /opt/venv, tini (PID 1 that
# forwards SIGTERM to gunicorn) and curl (health checks). ncf-python:bookworm (CI) already has them all;
# debian:bookworm-slim (the images' default base) gets them from apt, as would an Ubuntu 22.04 base (python3.11
# is packaged there alongside 3.10).
# Our wheels are built for CPython 3.11, so any other Python is refused rather than half-working.
set -eu

missing=""
[ -x /opt/venv/bin/python ] || missing="$missing python3.11 python3.11-venv"
command -v tini >/dev/null 2>&1 || missing="$missing tini"
command -v curl >/dev/null 2>&1 || missing="$missing curl ca-certificates"
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y --no-install-recommends $missing
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi
[ -x /opt/venv/bin/python ] || python3.11 -m venv /opt/venv
/opt/venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
