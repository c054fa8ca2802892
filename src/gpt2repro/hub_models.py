"""OpenAI's GPT-2 checkpoints on the Hugging Face Hub: which ids we accept, and fetching
one (cached by huggingface_hub), with the offline way round when the Hub is unreachable."""

from __future__ import annotations

import os
from pathlib import Path

HUB_REPOS = {
    name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
}
"""Short hub ids we accept, and the repositories OpenAI's GPT-2 checkpoints now live in."""
FILES = ("config.json", "model.safetensors")
"""What a download fetches: only safetensors, so loading never unpickles anything."""


def hub_repo(source: str | Path) -> str | None:
    """The hub repository `source` names; a local directory of that name wins, as in transformers."""
    if not isinstance(source, str) or Path(source).expanduser().is_dir():
        return None
    return HUB_REPOS.get(source, source if source in HUB_REPOS.values() else None)


def download(repo_id: str) -> Path:
    """The hub snapshot of `repo_id` (cached by huggingface_hub), or a FileNotFoundError saying how to get it."""
    from huggingface_hub import snapshot_download  # lazy: the hub client is only needed here

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; we honour it as set now.
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        snapshot = snapshot_download(
            repo_id,
            allow_patterns=list(FILES),
            local_files_only=offline,
            etag_timeout=5,  # fail in seconds, not minutes, behind a firewall that drops packets
        )
    except Exception as e:  # the hub client raises its own, httpx or requests errors, by version
        why = (
            f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if offline
            else f"Could not reach the Hugging Face Hub to fetch {repo_id} ({type(e).__name__}: {e})"
        )
        raise FileNotFoundError(
            f"{why}. On a machine that can reach the Hub, run `hf download {repo_id} "
            f"{' '.join(FILES)} --local-dir DIR` (older huggingface_hub: "
            "`huggingface-cli download ...`), copy DIR here and pass that local directory "
            "instead of the hub id."
        ) from e
    return Path(snapshot)
