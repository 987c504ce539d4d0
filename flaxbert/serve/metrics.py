"""`flaxbert serve`'s GET /metrics: Prometheus text format, from a registry of its own (not
prometheus_client's global one, so two servers in one process, or a test, never share
counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
PATHS = ("/invocations", "/ping", "/metrics")   # any other path is counted as "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class ServeMetrics:

  def __init__(self, batch_sizes):
    self.registry = CollectorRegistry()
    self.requests = Counter("flaxbert_requests", "HTTP requests answered, by path and status",
                            ["path", "status"], registry=self.registry)
    self.errors = Counter("flaxbert_request_errors", "requests refused or failed, by reason "
                          "(the limit, bad_json, queue_full, ...)", ["reason"],
                          registry=self.registry)
    self.inputs = Counter("flaxbert_inputs", "inputs answered by POST /invocations",
                          registry=self.registry)
    self.latency = Histogram("flaxbert_request_seconds", "time from a request's arrival to "
                             "its answer, by path", ["path"], buckets=LATENCY_BUCKETS,
                             registry=self.registry)
    self.batch_size = Histogram("flaxbert_batch_rows", "rows per model call (before padding "
                                "to a compiled batch size)", buckets=tuple(batch_sizes),
                                registry=self.registry)
    self.in_progress = Gauge("flaxbert_requests_in_progress", "POST /invocations requests "
                             "received and not yet answered", registry=self.registry)
    # Equal to (batch sizes) x (length buckets) from /ping's 200 on: were it to grow, some
    # request would have waited on a compile.
    self.compiled_shapes = Gauge("flaxbert_compiled_shapes", "shapes the model function is "
                                 "compiled for", registry=self.registry)
    self.queue_depth = Gauge("flaxbert_queue_rows", "model rows waiting for a batch",
                             registry=self.registry)

  def request(self, path: str, status: int, seconds: float) -> None:
    path = path if path in PATHS else "other"
    self.requests.labels(path, str(status)).inc()
    self.latency.labels(path).observe(seconds)

  def render(self) -> bytes:
    return generate_latest(self.registry)
