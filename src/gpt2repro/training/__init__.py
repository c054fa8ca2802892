"""Training: setup in numbered steps (setup.py), the loop (loop.py), the optimizers and
schedules (optimizer.py), the run directory (run_dir.py) and the dry-run plan (plan.py)."""
