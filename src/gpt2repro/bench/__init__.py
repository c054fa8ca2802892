"""Benchmarks behind `gpt2repro bench`, one module per command (`bench train` is train.py).

Only `gpt2repro.cli` (through bench/commands.py) and other bench modules import these:
a benchmark may use any part of the library, no part of the library uses a benchmark.
"""
