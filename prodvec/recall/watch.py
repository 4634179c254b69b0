"""`prodvec recall --watch`: re-measure (or re-tune) on a schedule and after big imports,
export the stored recall as Prometheus gauges, warn when a kind falls below its target.

A process of its own beside the worker (not inside it): measuring takes minutes of database
time that an embedding worker should not wait on, and one watch serves any number of workers.
The gauges are read from prodvec_recall_settings at each scrape, so they show the last
measurement whichever process made it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("prodvec.recall.watch")

#: Seconds between checks of the catalog's size (a cheap statistics read).
CHECK_SECONDS = 60.0


@dataclass(frozen=True)
class Schedule:
    every_seconds: float  # re-measure at least this often
    growth: float  # ... and as soon as the embedded products grew by this share


def due(last_products: float, products: float, last_at: float, now: float, schedule: Schedule) -> bool:
    """Whether to re-measure: the schedule says so, or the catalog grew (a big import) or shrank."""
    if now - last_at >= schedule.every_seconds:
        return True
    return abs(products - last_products) > schedule.growth * max(last_products, 1.0)


def below_target(rows: list[dict[str, Any]], target: float | None) -> list[str]:
    """One line per band whose measured recall is below its target (the tuning's, else ``target``)."""
    lines = []
    for row in rows:
        wanted = row["target"] if row["target"] is not None else target
        if wanted is not None and row["recall"] is not None and row["recall"] < wanted:
            lines.append(f"{row['kind']} band {row['band']}: recall@10 {row['recall']:.3f} < target {wanted:.2f}")
    return lines


class RecallCollector(Collector):
    """prodvec_search_recall{kind,band} and friends, read from the database at each scrape."""

    def __init__(self, read: Callable[[], list[dict[str, Any]] | None]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        rows = self.read()
        if rows is None:
            return
        recall = GaugeMetricFamily("prodvec_search_recall", "Mean recall@10 of index searches measured on "
                                   "this catalog, by kind of search and distance band.", labels=["kind", "band"])
        target = GaugeMetricFamily("prodvec_search_recall_target", "The recall target the band was tuned for.",
                                   labels=["kind", "band"])
        ef = GaugeMetricFamily("prodvec_search_ef_search", "The least hnsw.ef_search the band's searches use "
                               "(0: as planned).", labels=["kind", "band"])
        age = GaugeMetricFamily("prodvec_search_recall_age_seconds", "Seconds since the band was last measured.",
                                labels=["kind", "band"])
        now = time.time()
        for row in rows:
            labels = [row["kind"], str(row["band"])]
            if row["recall"] is not None:
                recall.add_metric(labels, row["recall"])
            if row["target"] is not None:
                target.add_metric(labels, row["target"])
            ef.add_metric(labels, row["ef_search"] or 0)
            age.add_metric(labels, now - row["measured_at"].timestamp())
        yield from (recall, target, ef, age)


def serve_metrics(read: Callable[[], list[dict[str, Any]] | None], *, port: int, host: str = "0.0.0.0") -> Any:
    """prometheus_client's HTTP server on a daemon thread; returns the server (``shutdown()``)."""
    registry = CollectorRegistry()
    registry.register(RecallCollector(read))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server


def watch(
    measure: Callable[[], None],
    products: Callable[[], float],
    stored: Callable[[], list[dict[str, Any]]],
    schedule: Schedule,
    *,
    target: float | None,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> None:
    """Measure now, then whenever due; log a warning per band below target. ``rounds``: stop
    after that many measurements (tests); None: until interrupted."""
    done = 0
    while rounds is None or done < rounds:
        measure()
        done += 1
        for line in below_target(stored(), target):
            log.warning("recall below target: %s (re-tune: prodvec recall --tune)", line)
        last_products, last_at = products(), time.monotonic()
        while rounds is None or done < rounds:
            sleep(CHECK_SECONDS)
            if due(last_products, products(), last_at, time.monotonic(), schedule):
                break
