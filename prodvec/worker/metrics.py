"""Prometheus metrics for the worker (`prodvec worker --metrics-port 9108`), via prometheus_client.

Counters and histograms are kept in process by the worker; the queue depth is read from the
database at scrape time, so it is right even while the worker sleeps or other workers drain
the queue. Each WorkerMetrics has its own registry, so several workers in one process (tests)
do not share counters.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from prodvec.errors import ImageFailure

log = logging.getLogger("prodvec.worker.metrics")

#: Upper bounds (seconds) of the batch latency histograms: a CPU batch takes seconds, a GPU one ms.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

class WorkerMetrics:
    """What one worker process did; prometheus_client's metrics are thread-safe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.embedded = Counter("prodvec_embedded", "Products embedded and written back by this worker.",
                                registry=registry)
        # Labelled by ImageError.kind, a small fixed set (errors.ImageFailure): the reason texts hold paths and URLs.
        self.failures = Counter("prodvec_failures", "Products failed for good (permanent error or out of "
                                "attempts), by failure kind.", ["reason"], registry=registry)
        self.retries = Counter("prodvec_retries", "Transient failures put back for a later retry, by failure kind.",
                               ["reason"], registry=registry)
        self.batches = Counter("prodvec_batches", "Batches encoded and written back.", registry=registry)
        self.reconnects = Counter("prodvec_reconnects", "Times the worker lost the database and reconnected.",
                                  registry=registry)
        self.encode_seconds = Histogram("prodvec_batch_encode_seconds", "Encoder time per batch.",
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.write_seconds = Histogram("prodvec_batch_write_seconds", "Write-back time per batch (one transaction).",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("prodvec_batch_seconds", "Claim to committed write-back, per batch.",
                                       buckets=LATENCY_BUCKETS, registry=registry)

    def record_batch(self, *, encode_seconds: float, write_seconds: float, total_seconds: float) -> None:
        self.batches.inc()
        self.encode_seconds.observe(encode_seconds)
        self.write_seconds.observe(write_seconds)
        self.batch_seconds.observe(total_seconds)

    def record_results(self, embedded: int, failed: Iterable[ImageFailure], retried: Iterable[ImageFailure]) -> None:
        """Products embedded, and the kinds of the failures and retries of a batch."""
        self.embedded.inc(embedded)
        for kind in failed:
            self.failures.labels(kind).inc()
        for kind in retried:
            self.retries.labels(kind).inc()

    def record_reconnect(self) -> None:
        self.reconnects.inc()


class _QueueCollector(Collector):
    """Queue depth by state and whether the database answered, read at each scrape."""

    def __init__(self, read_depth: Callable[[], dict[str, int] | None]) -> None:
        self.read_depth = read_depth

    def collect(self) -> Iterator[Metric]:
        depth = self.read_depth()
        yield GaugeMetricFamily("prodvec_database_up", "1 when the last scrape could read the queue.",
                                value=0 if depth is None else 1)
        if depth is not None:
            family = GaugeMetricFamily(
                "prodvec_queue_depth",
                "Jobs in the queue by state (pending includes leased; leased = claimed by some worker now).",
                labels=["state"],
            )
            for state in ("pending", "leased", "failed"):
                family.add_metric([state], depth.get(state, 0))
            yield family


def queue_depth(url: str) -> dict[str, int] | None:
    """{pending, leased, failed} job counts, or None when the database does not answer."""
    import psycopg

    from prodvec.queue import depth

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            return depth(conn)
    except psycopg.Error as exc:
        log.debug("metrics: queue depth unavailable: %s", exc)
        return None


class MetricsServer:
    """prometheus_client's HTTP server on a daemon thread; ``close()`` stops it."""

    def __init__(self, metrics: WorkerMetrics, read_depth: Callable[[], dict[str, int] | None], *,
                 port: int, host: str = "0.0.0.0") -> None:
        metrics.registry.register(_QueueCollector(read_depth))
        self.httpd, self.thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port = self.httpd.server_address[1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(metrics: WorkerMetrics, url: str, *, port: int, host: str = "0.0.0.0") -> MetricsServer:
    return MetricsServer(metrics, lambda: queue_depth(url), port=port, host=host)
