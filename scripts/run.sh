#!/usr/bin/env bash
# Set everything up and run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gpt2repro sample init:tiny --max-new-tokens 64 --num-samples 2 "$@"
