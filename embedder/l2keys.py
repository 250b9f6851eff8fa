"""The L2 cache's key format: a contract between the embedders that write Redis and the heads that
read it while no embedder answers. Light on purpose (a head imports it with its settings)."""

from __future__ import annotations

import hashlib

L2_KEY_PREFIX = "polyhead:emb:"


def l2_key(prefix: str, fingerprint: str, text: str) -> str:
    # surrogatepass: a key can be computed for any str; text validation is the front end's job.
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{prefix}{fingerprint}:{digest}"
