"""``/metrics`` in Prometheus text format (``prometheus_client``), one registry per app.

A registry per app (not the library's global one) so two apps in one process (tests, a benchmark)
count apart. Cache counters are read from the cache's own ``CacheStats`` when scraped, so the
numbers are the cache's, not a second bookkeeping.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _CacheCollector:
    """Exports the cache's counters and the queue depth at scrape time."""

    def __init__(self, server):
        self.server = server

    def collect(self):
        cache = self.server.cache
        s = cache.stats
        with s.lock:
            hits, misses, errors, evictions = s.hits, s.misses, s.errors, s.evictions
        labels = ["backend"]
        for name, doc, value in (
                ("edgekit_segment_cache_hits", "Segments found in the cache.", hits),
                ("edgekit_segment_cache_misses", "Segments not in the cache (encoded by the model).", misses),
                ("edgekit_segment_cache_errors", "Cache backend failures (Redis unreachable, a bad entry); "
                                                 "requests were answered by computing.", errors),
                ("edgekit_segment_cache_evictions", "Entries the in-process LRU dropped for room.", evictions)):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric([cache.backend], value)
            yield c
        up = GaugeMetricFamily("edgekit_segment_cache_up", "1 while the cache backend answers, 0 during an outage.",
                               labels=labels)
        up.add_metric([cache.backend], 1.0 if cache.up else 0.0)
        yield up
        depth = GaugeMetricFamily("edgekit_queue_depth", "Requests waiting for a micro-batch.")
        depth.add_metric([], float(self.server.batcher.depth))
        yield depth
        encoded = CounterMetricFamily("edgekit_segments_encoded", "Segments the model encoded (cache misses, "
                                      "each distinct text once per batch).")
        encoded.add_metric([], self.server.engine.encoded_segments)
        yield encoded


class ServeMetrics:
    def __init__(self, server):
        self.registry = CollectorRegistry()
        self.requests = Counter("edgekit_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("edgekit_request_seconds", "Time from a request's arrival to its answer.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("edgekit_batch_size", "Requests interacted per model call (micro-batch size).",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("edgekit_batch_seconds", "Time of one micro-batch: cache, encode, interact.",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_CacheCollector(server))

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
