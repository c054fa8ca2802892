"""Document preparation for the GPT-2 suite's tasks (named by `!function utils.NAME` in the YAML).

The GPT-2 paper scores each dataset as natural text: it undoes the benchmarks' word
tokenization with de-tokenizers and reports perplexity per word of the original
tokenization. The paper's de-tokenizers were not published; these undo the common
conventions (PTB-style quotes, split contractions and punctuation, WikiText's @-@).
"""

from __future__ import annotations

import re
from typing import Any

import datasets

BLANK = "XXXXX"
"""CBT's marker of the removed word in the question sentence."""
ENWIK8_TEST_FRACTION = 0.05
"""enwik8's standard split is 90M / 5M / 5M of its 10^8 bytes: the test set is the last 5%."""


def detokenize(text: str) -> str:
    """Undo PTB-style word tokenization: ``quotes'', split contractions, spaced punctuation."""
    text = text.replace("`` ", '"').replace("``", '"').replace(" ''", '"').replace("''", '"')
    text = re.sub(r" (n't|'s|'re|'ve|'m|'ll|'d)\b", r"\1", text)
    text = re.sub(r" ([.,;:!?%)\]}])", r"\1", text)
    return re.sub(r"([(\[{$]) ", r"\1", text)


def wikitext_detokenize(text: str) -> str:
    """WikiText's tokenization undone: @-@ style number separators, spaced punctuation, headings.

    Agrees with lm-eval's `wikitext_detokenizer` on WikiText's conventions, except that an
    `N` stays a letter (lm-eval turns " N " into " 1 ", a PTB convention WikiText lacks)
    and single quotes are not paired (an apostrophe would pair with the next quote:
    lm-eval makes "It 's a ' great ' day" "It's a' great ' day").
    """
    for marker, char in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" ° ", "°")):
        text = text.replace(marker, char)
    text = re.sub(r" ([.,;:!?)\]}])", r"\1", text)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    text = re.sub(r'"\s*([^"]*?)\s*"', r'"\1"', text)  # " quoted " -> "quoted"
    text = text.replace(" 's", "'s").replace("s ' ", "s' ")
    for n in (4, 3, 2):  # "= = Heading = =" -> "== Heading =="
        text = text.replace(" ".join("=" * n), "=" * n)
    return text.replace(" \n", "\n").replace("\n ", "\n")


def _words(text: str) -> int:
    return len(text.split())


def cbt_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """CBT questions as multiple choice: context, then each candidate with the rest of its sentence."""

    def one(doc: dict[str, Any]) -> dict[str, Any]:
        filled = [detokenize(doc["question"].replace(BLANK, o)) for o in doc["options"]]
        # The words before the blank are the same for every candidate and join the context;
        # each choice starts at the first word in which the filled sentences differ.
        cut = _common_prefix(filled).rfind(" ") + 1
        head = filled[0][:cut].strip()
        passage = detokenize(" ".join(s.strip() for s in doc["sentences"]))
        return {
            "context": f"{passage} {head}" if head else passage,
            "choices": [f[cut:] for f in filled],
            "gold": doc["options"].index(doc["answer"]),
        }

    return dataset.map(one)


def _common_prefix(texts: list[str]) -> str:
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def wikitext_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """WikiText articles, de-tokenized, with their word counts in the original tokenization."""
    return dataset.map(
        lambda d: {"text": wikitext_detokenize(d["page"]), "words": _words(d["page"])}
    )


def ptb_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """The whole split as one document, a sentence per line (the line break is PTB's <eos>)."""
    sentences = [s.strip() for s in dataset["sentence"]]
    text = "".join(detokenize(s) + "\n" for s in sentences)
    words = sum(_words(s) + 1 for s in sentences)  # + 1: the end-of-sentence token
    return datasets.Dataset.from_list([{"text": text, "words": words}])


def lm1b_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Each sentence a document, ending in a line break for the end-of-sentence token."""
    return dataset.map(
        lambda d: {"text": detokenize(d["text"].strip()) + "\n", "words": _words(d["text"]) + 1}
    )


def enwik8_test(dataset: datasets.Dataset) -> datasets.Dataset:
    """The last 5% of the bytes (the standard test set) of the single enwik8 document."""
    data = "".join(dataset["text"]).encode("utf-8")
    start = round(len(data) * (1 - ENWIK8_TEST_FRACTION))
    # A cut inside a multi-byte character drops its continuation bytes.
    return datasets.Dataset.from_list([{"text": data[start:].decode("utf-8", errors="ignore")}])


def word_perplexity(doc: dict[str, Any], results: list[float]) -> dict[str, tuple[float, int]]:
    """Log-likelihood of the document paired with its word count, for weighted perplexity."""
    (loglikelihood,) = results
    return {"word_perplexity": (loglikelihood, int(doc["words"]))}
