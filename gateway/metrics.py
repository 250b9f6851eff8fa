"""Prometheus metrics of the gateway (served at GET /metrics)."""

from prometheus_client import Counter, Histogram

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter("polyhead_gateway_requests_total", "Requests", ["route", "model", "status"])
LATENCY = Histogram("polyhead_gateway_request_seconds", "Latency", ["route", "model"], buckets=BUCKETS)
UPSTREAM_ERRORS = Counter("polyhead_gateway_upstream_errors_total", "Head calls that failed", ["model", "reason"])
UPSTREAM_RETRIES = Counter("polyhead_gateway_upstream_retries_total", "Head calls retried once on a fresh connection "
                           "after theirs broke (a head process died; its standby or restart took over)", ["model"])
PROMOTIONS = Counter("polyhead_gateway_promotions_total", "Challengers made champion, by who decided (auto, admin)",
                     ["model", "by"])
ROLLBACKS = Counter("polyhead_gateway_rollbacks_total", "Promotions undone, by who decided (guard, admin)",
                    ["model", "by"])
GUARD_ROLLBACKS = Counter("polyhead_gateway_guard_rollbacks_total", "The guard's rollbacks, by what it saw "
                          "(feedback: live accuracy; drift: confidence shift from the version's training reference)",
                          ["model", "trigger"])
