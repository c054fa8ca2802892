"""gpt2repro: pretrain GPT-2 from scratch, correctly, fast, and know that you did."""

__version__ = "0.1.0"
