"""Datasets as token shards: preparation, verification and the training loader.

- `shards`    the binary shard format (header + tokens) and its reader/writers
- `manifest`  `manifest.json`, one per prepared dataset, and where datasets live
- `sources`   the known datasets (`DATASETS`); documents from Shakespeare, local files and
              the Hugging Face hub
- `workers`   tokenization in parallel worker processes, in order, streaming
- `prepare`   source -> tokens -> shards, atomic and resumable (`prepare_dataset`)
- `verify`    checks every shard against its header and the manifest
- `locate`    finds a prepared dataset and its tokenizer (never prepares; see
              `gpt2repro.training.ensure_data` for the step that does)
- `loader`    memory-mapped, shuffled, DDP-sharded, resumable batches (`TokenLoader`)
- `bench`     prepare throughput against raw tiktoken
- `commands`  argument dataclasses and entry points for `gpt2repro prepare` / `data verify`

Submodules are imported on demand, so `import gpt2repro.data` costs nothing and the
tokenizer worker processes never import torch.
"""
