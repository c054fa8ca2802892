#!/usr/bin/env bash
# Set everything up and run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gpt2repro train "$@"
