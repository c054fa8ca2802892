"""Run by test_setup_wait under torchrun: rank 0 is busy for longer than the process
group's timeout (as when it prepares a dataset) while the others wait in
`wait_for_main`; then every rank joins one all-reduce. Usage: wait_worker.py MODE DELAY_S,
MODE `long` (wait_for_main) or `group` (a plain barrier on the training group)."""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as torch_dist

from gpt2repro.distributed import all_reduce_sum, init_distributed, shutdown, wait_for_main

GROUP_TIMEOUT_MINUTES = 10 / 60  # also bounds the start-up rendezvous: room for a slow import


def main(mode: str, delay_s: float) -> None:
    dist = init_distributed(torch.device("cpu"), timeout_minutes=GROUP_TIMEOUT_MINUTES)
    if dist.is_main:
        time.sleep(delay_s)
    if mode == "long":
        wait_for_main(dist)
    else:
        torch_dist.barrier()
    total = all_reduce_sum(torch.ones(()), dist)
    print(f"rank {dist.rank} sum {int(total)}", flush=True)
    shutdown(wait=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
