"""What every servable answers with, and what the server asks of one: the contract between the
embedding backends (TF-Hub, fake) and the core, cache and batcher. Backends import this module;
it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from embedder.feature_sets import DEFAULT, FeatureSet


@dataclass(frozen=True)
class EmbedBatchResult:
    vectors: np.ndarray  # [N, D] float32
    truncated: np.ndarray  # [N] bool
    token_counts: np.ndarray  # [N] int, tokens embedded (after truncation); 0 when the module cannot tell


class Servable(Protocol):
    """LitServe-style hooks: `load()` once, `warmup()` before health says SERVING, then `embed`
    from one worker thread. `fingerprint`, `dim`, `max_seq_length` and `feature_sets` are set by load."""

    name: str
    handle: str
    fingerprint: str
    dim: int
    max_seq_length: int
    feature_sets: dict[str, FeatureSet]

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def warmup(self) -> None: ...

    def embed(self, texts: list[str], feature_set: str = DEFAULT) -> EmbedBatchResult: ...

    def batch_lengths(self, texts: list[str]) -> list[int]:
        """What each text costs in a padded batch, in characters: the batcher groups texts by it.
        Called on the event loop (in a thread for a big request), beside `embed` on the model thread:
        it must be cheap and thread-safe (char_lengths where a servable cannot count tokens)."""
        ...


CHARS_PER_TOKEN = 4  # English WordPiece, [CLS] and [SEP] included (held-out and training sentences: 3.96-4.11)


def char_lengths(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]
