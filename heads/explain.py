"""Word-occlusion explanations: how much each word holds up the predicted label.

The text and every copy of it with one word left out go to the embedder in ONE call (through the
head's pipeline, so the fingerprint check applies; the embedder's cache makes repeats free), the
head scores them all, and a word's importance is the drop in the predicted label's probability
when that word is missing. Negative: the label is more likely without the word.
"""

from __future__ import annotations

import re
import time

import numpy as np

from heads.api import ExplainResponse, WordImportance
from heads.pipeline import HeadPipeline
from polyhead.errors import ValidationError

# Letters/digits, with inner apostrophes, hyphens and dots kept ("don't", "e-mail", "3.5"):
# punctuation is never a word of its own.
WORD = re.compile(r"\w+(?:['’.\-]\w+)*")


def words_of(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def without(text: str, start: int, end: int) -> str:
    """The text with text[start:end] left out (the tokenizer ignores the extra whitespace)."""
    return (text[:start].rstrip() + " " + text[end:].lstrip()).strip()


def check_word_limit(text: str, limit: int) -> list[tuple[str, int, int]]:
    found = words_of(text)
    if len(found) > limit:
        raise ValidationError(f"text: {len(found)} words exceed the limit of max_explain_words={limit}", field="text")
    return found


async def explain(pipeline: HeadPipeline, text: str, max_words: int, request_id: str) -> ExplainResponse:
    started = time.perf_counter()
    found = check_word_limit(text, max_words)
    variants = [without(text, start, end) for _, start, end in found]
    # A one-word text leaves nothing to embed: without its only word the model has no evidence,
    # so the baseline is the uninformed guess, 1 / number of labels.
    embeddable = [v for v in variants if v]
    done = await pipeline.run([text, *embeddable], request_id)
    proba = done.servable.probabilities(done.vectors)
    best = int(np.argmax(proba[0]))
    p_label = float(proba[0, best])
    rows = iter(proba[1:, best])
    uninformed = 1.0 / proba.shape[1]
    words = [WordImportance(word, start, end, p_label - (float(next(rows)) if variant else uninformed))
             for (word, start, end), variant in zip(found, variants)]
    return ExplainResponse(head=pipeline.name, version=done.servable.version, request_id=request_id,
                       label=str(done.servable.labels[best]), probability=p_label,
                       abstained=done.predictions[0].abstained, words=words,
                       latency_ms=(time.perf_counter() - started) * 1000)
