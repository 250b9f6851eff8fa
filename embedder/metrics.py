"""Prometheus metrics of the embedder (exposed on `metrics_port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter("polyhead_embedder_requests_total", "RPCs handled", ["method", "code"])
REQUEST_LATENCY = Histogram("polyhead_embedder_request_seconds", "RPC latency", ["method"], buckets=LATENCY_BUCKETS)
TEXTS = Counter("polyhead_embedder_texts_total", "Texts received")
BATCH_SIZE = Histogram("polyhead_embedder_batch_size", "Texts per model batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_LATENCY = Histogram("polyhead_embedder_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS)
QUEUE_DEPTH = Gauge("polyhead_embedder_queue_depth", "Texts waiting for the model")
DROPPED = Counter("polyhead_embedder_dropped_total", "Queued texts dropped before the model ran", ["reason"])
CACHE_HITS = Counter("polyhead_embedder_cache_hits_total", "Texts answered from the cache")
CACHE_MISSES = Counter("polyhead_embedder_cache_misses_total", "Texts not in the cache")
CACHE_EVICTIONS = Counter("polyhead_embedder_cache_evictions_total", "Entries evicted by the LRU policy")
CACHE_SIZE = Gauge("polyhead_embedder_cache_entries", "Entries in the cache")
CACHE_HIT_RATIO = Gauge("polyhead_embedder_cache_hit_ratio", "Hits / lookups since start")
INFLIGHT_JOINS = Counter("polyhead_embedder_inflight_joins_total", "Texts that joined an identical in-flight text")

# The shared L2 cache (Redis); role = embedder (reads + writes) or head (fallback reads).
L2_HITS = Counter("polyhead_l2_cache_hits_total", "Texts found in the L2 cache", ["role"])
L2_MISSES = Counter("polyhead_l2_cache_misses_total", "Texts looked up in the L2 cache and not found", ["role"])
L2_WRITES = Counter("polyhead_l2_cache_writes_total", "Vectors written to the L2 cache", ["role"])
L2_SKIPPED = Counter("polyhead_l2_cache_skipped_total", "Texts not read or written because Redis was down or slow",
                     ["role", "op"])
L2_ERRORS = Counter("polyhead_l2_cache_errors_total", "Failed Redis round trips (each starts a back-off)", ["role", "op"])
L2_UP = Gauge("polyhead_l2_cache_up", "1 while Redis answers, 0 during a back-off after a failure", ["role"])
L2_LATENCY = Histogram("polyhead_l2_cache_seconds", "Redis round trip (one per event-loop tick)", ["role", "op"],
                       buckets=LATENCY_BUCKETS)


METRICS_READ_TIMEOUT_S = 10.0


def start_metrics_server(port: int, addr: str, timeout_s: float = METRICS_READ_TIMEOUT_S):
    """prometheus_client's /metrics server (a thread per connection), with a read timeout: a client that
    stops sending its request is dropped after `timeout_s` instead of holding a thread forever.
    Returns the server (its `server_port`); it serves from a daemon thread."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    class Handler(WSGIRequestHandler):
        timeout = timeout_s  # socketserver sets it on the connection: every read is bounded

        def log_message(self, format, *args):  # quiet: Prometheus scrapes are not worth a log line
            pass

    httpd = make_server(addr, port, make_wsgi_app(), ThreadingWSGIServer, handler_class=Handler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
