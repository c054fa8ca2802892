"""`single_text_cut`: where a one-file corpus splits into train and val, against closed forms."""

from __future__ import annotations

import random

import pytest

from gpt2repro.data.sources import single_text_cut, split_stream


def test_the_cut_moves_back_to_the_start_of_its_line() -> None:
    text = "a" * 50 + "\n" + "b" * 49 + "\n"  # 101 characters; 90% lands inside the b line
    assert single_text_cut(text, 0.1) == 51


def test_without_a_nearby_line_start_the_cut_is_at_the_character() -> None:
    assert single_text_cut("x" * 100, 0.1) == 90  # no line break at all
    text = "title\n" + "y" * 200  # the only line start lies far before the 90% mark
    assert single_text_cut(text, 0.1) == round(len(text) * 0.9)


@pytest.mark.parametrize(("text", "fraction"), [("ab", 0.01), ("ab", 0.99), ("abc\n", 0.01)])
def test_both_parts_are_never_empty(text: str, fraction: float) -> None:
    cut = single_text_cut(text, fraction)
    assert 0 < cut < len(text)


@pytest.mark.parametrize("separator", ["\n\n", "<|endoftext|>", "x"])
def test_split_stream_equals_str_split_whatever_the_blocks(separator: str) -> None:
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(
            rng.choice(["a", "b", "\n", "<|end", "oftext|>", "x", separator]) for _ in range(60)
        )
        cuts = sorted(rng.sample(range(len(text) + 1), rng.randrange(0, 6)))
        blocks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert list(split_stream(iter(blocks), separator)) == text.split(separator), blocks


def test_split_stream_is_linear_in_a_long_piece() -> None:
    # One separator-free piece over 20,000 blocks: re-splitting a growing rest would copy
    # ~20,000^2 / 2 blocks; counting the characters handed to str.split checks it does not.
    handed = 0

    class Counted(str):
        def __radd__(self, other: str) -> Counted:  # `carry + block` stays counted
            return Counted(str.__add__(other, self))

        def split(self, sep: str | None = None, maxsplit: int = -1) -> list[str]:  # type: ignore[override]
            nonlocal handed
            handed += len(self)
            return str.split(self, sep, maxsplit)

    blocks = (Counted(c) for c in ["ab"] * 20_000)
    pieces = list(split_stream(blocks, "<|endoftext|>"))
    assert pieces == ["ab" * 20_000]
    assert handed < 20 * 20_000
