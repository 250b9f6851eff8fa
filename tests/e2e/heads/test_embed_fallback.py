"""A head whose embedder dies: texts seen before still answer (its recent vectors, the shared L2), others 503."""

from __future__ import annotations

import httpx
import redis

from embedder.cache import CachedEmbedding
from embedder.client import EmbedderClient
from embedder.l2cache import l2_key, pack
from tests.e2e.heads.fixtures import head_process
from tests.helpers import TcpProxy


def _fallback_counts(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == "polyhead_head_embed_fallback_total":
                counts[s.labels["source"]] = s.value
    return counts


def test_seen_texts_survive_a_dead_embedder_and_new_ones_get_503(trained_tickets, server_process, redis_url,
                                                                  l2_prefix, tmp_path):
    config, models, _, _ = trained_tickets
    _, target = server_process
    host, port = target.rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))  # cut() = the embedder is gone, as after a SIGKILL
    proxy.start()
    # Another replica embedded this text: its vector (the real one) is in the shared L2 only.
    with EmbedderClient(target) as client:
        other = client.embed(["my invoice shows a double charge"])
    redis.Redis.from_url(redis_url).set(
        l2_key(l2_prefix, other.fingerprint, "my invoice shows a double charge"),
        pack(CachedEmbedding(other.vectors[0], other.truncated[0], other.token_counts[0])), px=60_000)

    env = {"POLYHEAD_HEAD_L2_CACHE_URL": redis_url, "POLYHEAD_HEAD_L2_CACHE_KEY_PREFIX": l2_prefix}
    with head_process(config, models, f"127.0.0.1:{proxy.port}", db_url=f"sqlite:///{tmp_path / 'i.db'}",
                      spool_dir=tmp_path / "s", extra_env=env) as (_, url):
        before = httpx.post(url + "/predict", json={"text": "the app crashes on login"})
        assert before.status_code == 200
        proxy.cut()

        seen = httpx.post(url + "/predict", json={"text": "the app crashes on login"})
        assert seen.status_code == 200, seen.text
        assert seen.json()["predictions"] == before.json()["predictions"]  # the same vector, the same answer
        elsewhere = httpx.post(url + "/predict", json={"texts": ["my invoice shows a double charge"]})
        assert elsewhere.status_code == 200, elsewhere.text
        new = httpx.post(url + "/predict", json={"texts": ["the app crashes on login", "a text never seen"]})
        assert new.status_code == 503 and int(new.headers["retry-after"]) >= 1
        assert "embedder" in new.json()["error"]["message"]
        assert _fallback_counts(url) == {"recent": 1.0, "l2": 1.0, "miss": 1.0}
