"""lm-evaluation-harness task definitions for the GPT-2 paper's zero-shot table (group `gpt2_zeroshot`).

The YAML files here are read by lm-eval (`--include_path` this folder); `utils.py` holds
the functions they name. lm-eval imports `utils.py` by file path, so it imports nothing
from gpt2repro.
"""
