"""Evaluation: validation loss and bits-per-byte (more tasks build on the same pieces)."""
