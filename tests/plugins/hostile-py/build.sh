#!/usr/bin/env bash
# Builds app.py into dist/plugin.wasm for the tenant-plugin world of ../../../wit. The
# first run makes .venv with the componentize-py that plugins/jwt-auth-py pins.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv
    .venv/bin/pip install --disable-pip-version-check -q -r ../../../plugins/jwt-auth-py/requirements.txt
fi
mkdir -p dist
.venv/bin/componentize-py -d ../../../wit -w tenant-plugin componentize -p . app -o dist/plugin.wasm
echo "$PWD/dist/plugin.wasm"
