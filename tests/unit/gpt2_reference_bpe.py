"""An independent, slow, pure-Python GPT-2 BPE encoder: the reference our tokenizer is tested against.

It follows the algorithm of OpenAI's original GPT-2 `encoder.py` rather than tiktoken's:
bytes are first mapped to printable unicode characters (so tokens are `str`), text is split
with GPT-2's original regex run by the `regex` module, and each piece is merged by
repeatedly joining every occurrence of its lowest-ranked adjacent pair. It is driven by a
tiktoken ranks file (base64 token bytes -> rank); in GPT-2 the merge rank of a pair
(a, b) is the rank of the token a + b, and a token's id is its rank.
"""

from __future__ import annotations

import base64
from pathlib import Path

import regex

# Verbatim from GPT-2's encoder.py; no possessive quantifiers, `'s|'t|...` spelled out.
GPT2_ORIGINAL_PAT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
EOT = "<|endoftext|>"
EOT_ID = 50256


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte 0..255 to a printable character, so BPE can work on `str`.

    Bytes that are already visible latin-1 characters map to themselves; the remaining 68
    (control characters, space, some latin-1 blanks) map to U+0100, U+0101, ... in order.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    visible += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in visible}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class ReferenceGPT2:
    def __init__(self, ranks_path: Path) -> None:
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.encoder: dict[str, int] = {}
        for line in Path(ranks_path).read_text().splitlines():
            if line:
                b64, rank = line.split()
                self.encoder[self._to_unicode(base64.b64decode(b64))] = int(rank)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.cache: dict[str, list[str]] = {}

    def _to_unicode(self, data: bytes) -> str:
        return "".join(self.byte_encoder[b] for b in data)

    def _merge_rank(self, pair: tuple[str, str]) -> float:
        rank = self.encoder.get(pair[0] + pair[1])
        return float("inf") if rank is None else rank

    def bpe(self, piece: str) -> list[str]:
        if piece in self.cache:
            return self.cache[piece]
        parts = list(piece)
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=self._merge_rank)
            if self._merge_rank(best) == float("inf"):
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[piece] = parts
        return parts

    def encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in GPT2_ORIGINAL_PAT.findall(text):
            unicode_piece = self._to_unicode(piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(unicode_piece))
        return ids

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if not allow_special:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, chunk in enumerate(text.split(EOT)):
            if i > 0:
                ids.append(EOT_ID)
            ids.extend(self.encode_ordinary(chunk))
        return ids

    def decode(self, ids: list[int]) -> str:
        chars = "".join(EOT if i == EOT_ID else self.decoder[i] for i in ids)
        # EOT's characters are all visible ASCII, so they pass through byte_decoder unchanged.
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")
