"""Advice built from a manifest: the commands it suggests name what `prepare` takes."""

from __future__ import annotations

from pathlib import Path

from gpt2repro.data import manifest as mf


def test_redo_hint_names_the_dataset_as_prepare_takes_it(tmp_path: Path) -> None:
    for identifier in ("gpt2", "bpe-4096-1a2b3c"):
        folder = mf.dataset_dir(tmp_path, "mini", identifier)
        settings = {"dataset": "files", "tokenizer": identifier}
        hint = mf.redo_hint(folder, {"settings": settings})
        # --name mini recreates `folder`, whose name carries the identifier for non-gpt2.
        assert "gpt2repro prepare files --name mini PATHS..." in hint
        assert f"--data-dir {tmp_path} --overwrite" in hint
        assert ("--tokenizer TOKENIZER.json" in hint) == (identifier != "gpt2")
    hint = mf.redo_hint(tmp_path / "shakespeare", {"settings": {"dataset": "shakespeare"}})
    assert f"`gpt2repro prepare shakespeare --data-dir {tmp_path} --overwrite`" in hint
