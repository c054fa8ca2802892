#!/usr/bin/env bash
# GPT-2 small (124M) on 10B tokens of FineWeb-Edu, as in "Let's reproduce GPT-2 (124M)"
# (build-nanogpt): the `gpt2_124m_fineweb_edu` preset, 524,288 tokens a step as 64 x 1024
# micro-batches, lr 6e-4 -> 6e-5 after 715 warmup steps, 19,073 steps. Then validation
# loss and HellaSwag (OpenAI's GPT-2 124M scores acc_norm 0.2955 the same way), an export
# for transformers, a model card and the plots.
#
# Hardware: one node with 8 H100 80GB GPUs. NPROC=1, 2 or 4 runs the same recipe with more
# gradient accumulation (the step's 512 sequences of 64 must divide among the GPUs).
# Disk: the shards hold 10B tokens at 2 bytes each (~20 GB).
# Time: not yet measured with this code (no GPU run is committed under benchmarks/results).
# `train --dry-run` (step 2) estimates ~0.75 h of training steps on 8 H100 SXM: 8.55e8
# FLOPs a token x 10B tokens at 40% of the 989 TFLOP/s bf16 datasheet peak. Preparing the
# data, HellaSwag every 250 steps and the final evaluation come on top.
# Cost: 8 x the hours above x your provider's price per H100-hour.
#
# Run from the repository root, in the environment of `bash scripts/setup.sh` (with your
# CUDA build of torch). An interrupted run continues where it stopped: run the recipe again.
#   bash runs/gpt2_124m_fineweb_edu_8xh100.sh
#   GPT2REPRO_DRY_RUN=1 bash runs/gpt2_124m_fineweb_edu_8xh100.sh   # print the commands only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OUT_DIR="${OUT_DIR:-runs_out/gpt2_124m_fineweb_edu}"  # the run directory
DATA_DIR="${DATA_DIR:-data}"                           # prepared datasets
NPROC="${NPROC:-8}"                                    # GPUs on this node
EXPORT_DIR="${EXPORT_DIR:-$OUT_DIR/hf}"                # the Hugging Face export and its card

LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC" -m gpt2repro)
TRAIN=(--preset gpt2_124m_fineweb_edu --run.out-dir "$OUT_DIR" --data.data-root "$DATA_DIR"
  --checkpoint.resume auto)

require gpt2repro torchrun

# 1. Download FineWeb-Edu sample-10BT and tokenize it with GPT-2's BPE on every core into
#    shards, 0.2% of documents held out for validation; then read every shard back.
#    A complete dataset is kept, an interrupted one resumes.
step gpt2repro prepare fineweb-edu --data-dir "$DATA_DIR" --verify

# 2. The plan, without training: resolved config, accumulation steps, time and peak-memory
#    estimates per GPU and the largest micro-batch that fits.
step "${LAUNCH[@]}" train "${TRAIN[@]}" --dry-run

# 3. Train on all GPUs (DDP, bf16, compiled); validation and HellaSwag every 250 steps,
#    checkpoints as it goes. `--checkpoint.resume auto` continues from the newest one.
step "${LAUNCH[@]}" train "${TRAIN[@]}"

# 4. Evaluate the best checkpoint on the validation split and HellaSwag, split over the GPUs.
step "${LAUNCH[@]}" eval "$OUT_DIR" --tasks val hellaswag --data-root "$DATA_DIR"

# 5. Export for transformers (GPT2LMHeadModel.from_pretrained, GPT-2's tokenizer files).
step gpt2repro export "$OUT_DIR" "$EXPORT_DIR" --overwrite

# 6. The model card (README.md) in the export, with every result of steps 3 and 4.
step gpt2repro card "$OUT_DIR" --export-dir "$EXPORT_DIR"

# 7. Loss against steps and tokens and HellaSwag, with GPT-2 / GPT-3 reference lines.
step gpt2repro plot "$OUT_DIR"
