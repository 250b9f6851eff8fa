"""Prometheus metrics of a head (served at GET /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter("polyhead_head_requests_total", "Predict requests", ["head", "status"])
LATENCY = Histogram("polyhead_head_request_seconds", "Predict latency", ["head"], buckets=LATENCY_BUCKETS)
EXPLAIN_REQUESTS = Counter("polyhead_head_explain_requests_total", "Explain requests (each embeds one text "
                           "per word)", ["head", "status"])
EMBED_LATENCY = Histogram("polyhead_head_embed_seconds", "Embedder call latency", ["head"], buckets=LATENCY_BUCKETS)
PREDICTIONS = Counter("polyhead_head_predictions_total", "Texts classified", ["head", "label"])
ABSTAINED = Counter("polyhead_head_abstained_total", "Predictions below the confidence threshold", ["head"])
VERSION = Gauge("polyhead_head_serving_version_info", "Version being served (value 1)", ["head", "version"])
READY = Gauge("polyhead_head_ready", "1 when ready", ["head"])
DRIFT_SCORE = Gauge("polyhead_head_drift_score", "Drift score of the rolling window against the training data "
                    "(label_shift_js, confidence_shift, ood_rate; see GET /drift)", ["head", "score"])
DRIFT_FLAGGED = Gauge("polyhead_head_drift_flagged", "1 when a drift score crosses its threshold", ["head"])
DRIFT_WINDOW = Gauge("polyhead_head_drift_window_texts", "Texts in the drift window", ["head"])
EMBED_FALLBACK = Counter("polyhead_head_embed_fallback_total", "Requests met by an unavailable embedder, by what "
                         "answered them: recent (this head's seen texts), l2 (Redis) or miss (503)", ["head", "source"])
# Per process (shared by its heads): how well concurrent embeds are coalesced into fewer RPCs.
EMBED_RPCS = Counter("polyhead_head_embed_rpcs_total", "Embed RPCs this head process sent to the embedder")
EMBED_RPC_TEXTS = Counter("polyhead_head_embed_rpc_texts_total", "Texts in those RPCs (after de-duplication)")
# Challengers (heads/roles.py): shadow predictions on the champion's vectors, never returned to callers.
SHADOW_PREDICTIONS = Counter("polyhead_head_shadow_predictions_total", "Texts a challenger classified in shadow",
                             ["head", "version"])
SHADOW_FAILED = Counter("polyhead_head_shadow_failed_total", "Challengers dropped from shadow after an error "
                        "(the champion answered the request)", ["head"])
