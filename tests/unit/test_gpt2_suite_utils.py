"""The GPT-2 suite's document preparation: the WikiText de-tokenizer against lm-eval's own,
and the One Billion Word documents against hand-written expected text."""

from __future__ import annotations

import pytest

datasets = pytest.importorskip("datasets")
preprocess_wikitext = pytest.importorskip("lm_eval.tasks.wikitext.preprocess_wikitext")

from gpt2repro.evaluation.gpt2_suite import utils  # noqa: E402

# WikiText-103 lines (the first three verbatim) and constructed ones with each convention:
# @-@ / @,@ / @.@ separators, spaced punctuation and brackets, headings, quotes, degrees.
WIKITEXT = [
    " = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : "
    "戦場のヴァルキュリア3 , lit . Valkyria of the Battlefield 3 ) , commonly referred to as Valkyria "
    "Chronicles III outside Japan , is a tactical role @-@ playing video game developed by Sega and "
    "Media.Vision for the PlayStation Portable . Released in January 2011 in Japan , it is the "
    "third game in the Valkyria series . \n",
    " = = Career = = \n \n In 2006 , he starred alongside Whishaw in the play Citizenship written by "
    "Mark Ravenhill . \n",
    " The game 's battle system , the BliTZ system , is carried over directly from Valkyira "
    "Chronicles . During missions , players select each unit using a top @-@ down perspective of "
    "the battlefield map : once a character is selected , the player moves the character around "
    "the battlefield in third @-@ person . \n",
    " It sold 1 @,@ 000 copies at 3 @.@ 5 dollars ; the temperature was 25 ° C ! Really ? Yes . \n",
    ' = = = Reception = = = \n \n The critics \' reviews were " very positive " , peaking at number '
    "4 [ citation needed ] and { braces } . \n",
    " = = = = Track listing = = = = \n \n The Beatles ' 1965 album ( released in the UK ) sold well . \n",
]


@pytest.mark.parametrize("page", WIKITEXT, ids=[f"page{i}" for i in range(len(WIKITEXT))])
def test_wikitext_detokenize_agrees_with_lm_eval(page: str) -> None:
    expected = preprocess_wikitext.wikitext_detokenizer({"page": page})
    assert expected != page  # each sample exercises at least one rule
    assert utils.wikitext_detokenize(page) == expected


def test_wikitext_detokenize_output() -> None:
    # Pinned as well, so a change in lm-eval's de-tokenizer cannot move both sides at once.
    assert utils.wikitext_detokenize(WIKITEXT[3]) == (
        " It sold 1,000 copies at 3.5 dollars; the temperature was 25°C! Really? Yes.\n"
    )
    assert utils.wikitext_detokenize(WIKITEXT[4]) == (
        ' === Reception ===\n\nThe critics\' reviews were "very positive", peaking at number '
        "4 [citation needed] and {braces}.\n"
    )


def test_wikitext_detokenize_deliberate_differences_from_lm_eval() -> None:
    """lm-eval reads N as PTB's number token and pairs an apostrophe with a quote; we do not."""
    page = " It 's a ' great ' day for the letter N . \n"
    ours = utils.wikitext_detokenize(page)
    assert ours == " It's a ' great ' day for the letter N.\n"
    assert preprocess_wikitext.wikitext_detokenizer({"page": page}) == (
        " It's a' great ' day for the letter N.\n"
    )
    assert utils.wikitext_detokenize(" Route N 7 \n") == " Route N 7\n"


def test_wikitext_docs_count_the_original_words() -> None:
    docs = utils.wikitext_docs(datasets.Dataset.from_list([{"page": WIKITEXT[1]}]))
    assert docs[0]["text"] == (
        " == Career ==\n\nIn 2006, he starred alongside Whishaw in the play Citizenship written by "
        "Mark Ravenhill.\n"
    )
    assert docs[0]["words"] == len(WIKITEXT[1].split()) == 21


def test_lm1b_docs_detokenize_each_sentence_and_count_its_end() -> None:
    rows = [
        {"text": "`` We are very pleased with the results , '' he said . "},
        {"text": "He does n't know , and it 's ( mostly ) $ 5 ."},
        {"text": "The U.S. economy added 200,000 jobs last month ."},
    ]
    docs = utils.lm1b_docs(datasets.Dataset.from_list(rows))
    assert docs["text"] == [
        '"We are very pleased with the results," he said.\n',
        "He doesn't know, and it's (mostly) $5.\n",
        "The U.S. economy added 200,000 jobs last month.\n",
    ]
    # Words of the original tokenization, + 1 for the end of the sentence.
    assert docs["words"] == [13 + 1, 14 + 1, 9 + 1]
