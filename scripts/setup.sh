#!/usr/bin/env bash
# Create .venv with gpt2repro and its development tools. Safe to re-run.
# torch is pinned first, on its own: an open range would pull the newest CUDA build
# (several GB); 2.13.0 resolves to the local CPU wheel on machines that carry it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${GPT2REPRO_TORCH:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
fi
# Hold torch at the installed build so no dependency can swap it for a CUDA download.
constraints="$(mktemp)"
.venv/bin/python -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
.venv/bin/pip install --quiet --disable-pip-version-check -c "$constraints" -e ".[dev]"
rm -f "$constraints"
