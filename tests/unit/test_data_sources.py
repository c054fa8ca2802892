"""`single_text_cut`: where a one-file corpus splits into train and val, against closed forms."""

from __future__ import annotations

import pytest

from gpt2repro.data.sources import single_text_cut


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
