"""`python -m gpt2repro ...` is the same as the `gpt2repro` console script."""

from gpt2repro.cli import main

if __name__ == "__main__":
    main()
