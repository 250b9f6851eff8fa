"""One pipeline from texts to predictions: embed -> fingerprint check -> predict.

Shared by the head service and `polyhead batch --direct`, so both refuse an artifact trained on
another encoder, or on another feature set of it, in the same way and answer the same labels. The
texts are embedded with the artifact's feature set (manifest; "default" for older artifacts).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from embedder.client import AsyncEmbedderClient, Embeddings
from heads import metrics
from heads.api import Prediction
from heads.fallback import EmbeddingFallback
from heads.servable import HeadServable
from polyhead.errors import DeadlineExceededError, PolyheadError, UnavailableError, ValidationError

log = logging.getLogger("polyhead.head.pipeline")


class FingerprintMismatch(UnavailableError):
    """The embedder serves another encoder (or feature set) than the one the artifact was trained on."""


def embed_error(servable: HeadServable, err: PolyheadError) -> PolyheadError:
    """An Embed error as the head answers it: an embedder without the artifact's feature set is a
    mismatch (503, not ready), not the caller's invalid argument."""
    if isinstance(err, ValidationError) and err.field == "feature_set":
        return FingerprintMismatch(
            f"version {servable.version} was trained on feature set {servable.feature_set!r}, which the embedder "
            f"does not serve ({err.message}); retrain the head or serve an encoder exported with it",
            retry_after_s=30)
    return err


@dataclass(frozen=True)
class Embedded:
    """Texts embedded once for several heads of a packed process (POST /classify)."""

    embeddings: Embeddings
    seconds: float
    feature_set: str


@dataclass(frozen=True)
class Classified:
    servable: HeadServable  # the version that answered (pinned for the whole request)
    fingerprint: str
    vectors: np.ndarray
    predictions: list[Prediction]
    embed_s: float


class HeadPipeline:
    def __init__(self, name: str, current: Callable[[], HeadServable | None], client: AsyncEmbedderClient,
                 unavailable_reason: Callable[[], str | None] = lambda: None,
                 fallback: EmbeddingFallback | None = None):
        self.name = name
        self._current = current
        self._reason = unavailable_reason
        self.client = client
        self.fallback = fallback if fallback is not None and fallback.enabled else None
        self._outage = False  # logged once per embedder outage, not once per request

    def servable(self) -> HeadServable:
        """The version served now, or UnavailableError (503) saying why there is none."""
        servable = self._current()
        if servable is None:
            raise UnavailableError(f"head {self.name!r} has no loaded artifact: {self._reason()}", retry_after_s=5)
        return servable

    async def run(self, texts: list[str], request_id: str | None = None, *,
                  embedded: Embedded | None = None) -> Classified:
        """`embedded`: `texts` already embedded for several heads of a packed process (POST /classify);
        otherwise, or when they are of another feature set than the version served now, this head
        embeds them itself."""
        servable = self.servable()  # pinned: a version switch mid-request does not affect it
        if embedded is None or embedded.feature_set != servable.feature_set:
            t0 = time.perf_counter()
            try:
                embeddings = await self.client.embed(texts, request_id=request_id, feature_set=servable.feature_set)
            except ValidationError as err:
                raise embed_error(servable, err) from None
            except (UnavailableError, DeadlineExceededError) as err:
                if self.fallback is None:
                    raise
                vectors = await self._from_fallback(servable.fingerprint, texts, err)
                return Classified(servable, servable.fingerprint, vectors, servable.predict(vectors),
                                  time.perf_counter() - t0)
            embed_s = time.perf_counter() - t0
        else:
            embeddings, embed_s = embedded.embeddings, embedded.seconds
        if embeddings.fingerprint != servable.fingerprint:
            raise FingerprintMismatch(
                f"embedder fingerprint {embeddings.fingerprint} differs from the one version {servable.version} "
                f"was trained on ({servable.fingerprint}, feature set {servable.feature_set!r}); retrain the head "
                f"or serve the matching encoder",
                retry_after_s=30)
        if self._outage:
            self._outage = False
            log.warning("embedder answers again; fallback off", extra={"head": self.name})
        if self.fallback is not None:
            self.fallback.remember(embeddings.fingerprint, texts, embeddings.vectors)
        return Classified(servable, embeddings.fingerprint, embeddings.vectors,
                          servable.predict(embeddings.vectors), embed_s)

    async def _from_fallback(self, fingerprint: str, texts: list[str], err: UnavailableError | DeadlineExceededError):
        """Vectors for every text, or the embedder's own error (503, Retry-After) when one is unknown."""
        if not self._outage:
            self._outage = True
            log.warning("embedder unavailable; answering texts seen before from the fallback", extra={"head": self.name})
        hit = await self.fallback.lookup(fingerprint, texts)
        metrics.EMBED_FALLBACK.labels(self.name, hit.source if hit else "miss").inc()
        if hit is None:
            raise err
        return hit.vectors
