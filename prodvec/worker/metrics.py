"""Prometheus metrics for the worker (`prodvec worker --metrics-port 9108`), stdlib only.

Counters and histograms are kept in process by the worker; the queue depth is read from the
database at scrape time (one small GROUP BY over embedding_jobs), so it is right even while the
worker sleeps or other workers drain the queue. Text exposition format 0.0.4.
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("prodvec.worker.metrics")

#: Upper bounds (seconds) of the batch latency histograms: a CPU batch takes seconds, a GPU one ms.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Failure reason text → a small, fixed set of label values (reasons themselves hold paths/URLs).
_REASON_CLASSES = (
    ("not_found", re.compile(r"not found")),
    ("unsupported_location", re.compile(r"unsupported image location|non-http\(s\)|is a directory")),
    ("permission", re.compile(r"no permission")),
    ("too_large", re.compile(r"over the .*limit|decompression bomb")),
    ("not_an_image", re.compile(r"not an image")),
    ("corrupt", re.compile(r"corrupt image")),
    ("http", re.compile(r"^HTTP \d+|too many redirects")),
    ("fetch", re.compile(r"cannot fetch")),
)


def reason_class(reason: str) -> str:
    for name, pattern in _REASON_CLASSES:
        if pattern.search(reason):
            return name
    return "other"


class Histogram:
    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound:g}"}} {count}' for bound, count in zip(self.bounds, self.counts)]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class WorkerMetrics:
    """What one worker process did; thread-safe (decode pool, encoder loop and writer all report)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.embedded = 0
        self.failures: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.reconnects = 0
        self.batches = 0
        self.encode_seconds = Histogram()
        self.write_seconds = Histogram()
        self.batch_seconds = Histogram()

    def record_batch(self, *, encode_seconds: float, write_seconds: float, total_seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.encode_seconds.observe(encode_seconds)
            self.write_seconds.observe(write_seconds)
            self.batch_seconds.observe(total_seconds)

    def record_results(self, embedded: int, failed_reasons: Iterable[str], retried_reasons: Iterable[str]) -> None:
        with self._lock:
            self.embedded += embedded
            for reason in failed_reasons:
                key = reason_class(reason)
                self.failures[key] = self.failures.get(key, 0) + 1
            for reason in retried_reasons:
                key = reason_class(reason)
                self.retries[key] = self.retries.get(key, 0) + 1

    def record_reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def render(self, queue: dict[str, int] | None) -> str:
        """The exposition text; ``queue`` is {state: jobs} from the database, None when it is down."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

        with self._lock:
            metric("prodvec_embedded_total", "counter", "Products embedded and written back by this worker.",
                   [f"prodvec_embedded_total {self.embedded}"])
            metric("prodvec_failures_total", "counter",
                   "Products failed for good (permanent error or out of attempts), by reason class.",
                   [f'prodvec_failures_total{{reason="{k}"}} {v}' for k, v in sorted(self.failures.items())])
            metric("prodvec_retries_total", "counter", "Transient failures put back for a later retry, by reason class.",
                   [f'prodvec_retries_total{{reason="{k}"}} {v}' for k, v in sorted(self.retries.items())])
            metric("prodvec_batches_total", "counter", "Batches encoded and written back.",
                   [f"prodvec_batches_total {self.batches}"])
            metric("prodvec_reconnects_total", "counter", "Times the worker lost the database and reconnected.",
                   [f"prodvec_reconnects_total {self.reconnects}"])
            metric("prodvec_batch_encode_seconds", "histogram", "Encoder time per batch.",
                   self.encode_seconds.lines("prodvec_batch_encode_seconds"))
            metric("prodvec_batch_write_seconds", "histogram", "Write-back time per batch (one transaction).",
                   self.write_seconds.lines("prodvec_batch_write_seconds"))
            metric("prodvec_batch_seconds", "histogram", "Claim to committed write-back, per batch.",
                   self.batch_seconds.lines("prodvec_batch_seconds"))
        metric("prodvec_database_up", "gauge", "1 when the last scrape could read the queue.",
               [f"prodvec_database_up {0 if queue is None else 1}"])
        if queue is not None:
            metric("prodvec_queue_depth", "gauge",
                   "Jobs in the queue by state (pending includes leased; leased = claimed by some worker now).",
                   [f'prodvec_queue_depth{{state="{state}"}} {queue.get(state, 0)}'
                    for state in ("pending", "leased", "failed")])
        return "\n".join(lines) + "\n"


def queue_depth(url: str) -> dict[str, int] | None:
    """{pending, leased, failed} job counts, or None when the database does not answer."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'pending'),"
                " count(*) FILTER (WHERE state = 'pending' AND leased_until > now()),"
                " count(*) FILTER (WHERE state = 'failed') FROM embedding_jobs"
            ).fetchone()
    except psycopg.Error as exc:
        log.debug("metrics: queue depth unavailable: %s", exc)
        return None
    return {"pending": row[0], "leased": row[1], "failed": row[2]}


class MetricsServer:
    """GET /metrics (any path, really) on a daemon thread; ``close()`` stops it."""

    def __init__(self, metrics: WorkerMetrics, queue: Callable[[], dict[str, int] | None], *,
                 port: int, host: str = "0.0.0.0") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] not in ("/", "/metrics"):
                    self.send_error(404)
                    return
                body = metrics.render(queue()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet access log
                log.debug("metrics: " + format, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="prodvec-metrics", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(metrics: WorkerMetrics, url: str, *, port: int, host: str = "0.0.0.0") -> MetricsServer:
    return MetricsServer(metrics, lambda: queue_depth(url), port=port, host=host)
