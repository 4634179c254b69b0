"""`prodvec worker`, `prodvec status`, `prodvec failures`, `prodvec retry`, `prodvec requeue`."""
from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
from typing import TYPE_CHECKING

from prodvec import queue as jobs
from prodvec.cli.output import print_json, print_report, print_table
from prodvec.config import load_settings
from prodvec.db.active_model import catalog_settings
from prodvec.db.connection import connect, database_url
from prodvec.db.model_registry import CatalogModel, list_models, load_active_encoder
from prodvec.errors import ConfigError

if TYPE_CHECKING:
    from prodvec.encode import Encoder


def add_commands(commands: argparse._SubParsersAction) -> None:
    worker = commands.add_parser("worker", help="embed pending products (keeps running unless --once)")
    worker.add_argument("--once", action="store_true", help="embed everything pending, then exit")
    worker.add_argument("--bulk", action="store_true",
                        help="with --once, for big backfills: drop the HNSW indexes, embed, rebuild them once at the "
                             "end (searches stay correct meanwhile, but slower)")
    worker.add_argument("--batch-size", type=int, default=None, help="images per encoder batch")
    worker.add_argument("--decode-threads", type=int, default=None, help="threads loading and decoding images")
    worker.add_argument("--gpu-decode", action=argparse.BooleanOptionalAction, default=None,
                        help="decode plain JPEGs in batches on the GPU (nvJPEG) [on when the model runs on CUDA]")
    worker.add_argument("--lease-seconds", type=float, default=None,
                        help="how long a claim is held before others may take it (default 60); a worker that dies "
                             "gives its products back after this long")
    worker.add_argument("--poll-seconds", type=float, default=None,
                        help="fallback poll interval when idle (default 5); NOTIFY wakes the worker at once anyway")
    worker.add_argument("--prefetch-batches", type=int, default=None, help="batches decoded ahead of the encoder")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (e.g. 9108; 0 picks a free one)")
    worker.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics server listens on [0.0.0.0]")
    worker.set_defaults(handler=_worker)

    status = commands.add_parser(
        "status", help="how many products are embedded, pending, failed",
        description="Products by state: up_to_date, pending, retrying, failed, no_image and not_queued add up to "
                    "total. embedded: products with a vector (searchable), pending ones that keep their previous "
                    "vector included.",
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    failures = commands.add_parser("failures", help="failed products, and those waiting to retry, and why")
    failures.add_argument("--limit", type=int, default=100)
    failures.add_argument("--json", action="store_true")
    failures.set_defaults(handler=_failures)

    retry = commands.add_parser("retry", help="queue failed products again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--sku", action="append", help="this product (repeatable)")
    which.add_argument("--all", action="store_true", help="every failed product")
    retry.set_defaults(handler=_retry)

    requeue = commands.add_parser(
        "requeue", help="queue every product with an image to be embedded again by the active model",
        description="The active model's vectors stay searchable until the new ones are written. To change models "
                    "or catalog views, add the new one beside the active one instead: `prodvec model add SPEC "
                    "[--views multi]`.",
    )
    requeue.set_defaults(handler=_requeue)


def _worker(args: argparse.Namespace) -> int:
    # SIGTERM/SIGINT before the worker exists (model loading takes seconds): exit 0 right after.
    interrupted: list[str] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _: interrupted.append(signal.Signals(received).name))

    if args.bulk and not args.once:
        raise ConfigError("--bulk goes with --once: a long-running worker must keep the index in place")
    settings = load_settings()
    url = database_url(settings)
    # The catalog's active model (a new catalog records the settings' now, its first embed).
    # A database that does not answer: say so now, before the model loads, and exit.
    with connect(url) as conn:
        settings = catalog_settings(conn, settings, record=True)
        models = list_models(conn)
        # --once with nothing to do: done, without loading torch and the model (seconds).
        idle = args.once and not jobs.claimable(conn, [model.id for model in models])
    if idle:
        print("worker: nothing to embed", file=sys.stderr)
        _report_waiting(url)
        return 0

    from prodvec.encode import load_encoder
    from prodvec.worker.bulk import hnsw_index_dropped
    from prodvec.worker.metrics import WorkerMetrics, serve
    from prodvec.worker.pipeline import Worker, WorkerOptions

    overrides = {
        name: value
        for name, value in (
            ("batch_size", args.batch_size),
            ("decode_threads", args.decode_threads),
            ("gpu_decode", args.gpu_decode),
            ("lease_seconds", args.lease_seconds),
            ("poll_seconds", args.poll_seconds),
            ("prefetch_batches", args.prefetch_batches),
        )
        if value is not None
    }
    with connect(url, autocommit=True) as conn:  # autocommit: no transaction held open while the model loads
        encoder = load_active_encoder(conn, settings)
    progress = _progress_bar(url) if args.once and sys.stderr.isatty() and not interrupted else None
    metrics = WorkerMetrics()
    worker = Worker(url, encoder, WorkerOptions(**overrides), on_progress=progress.update if progress else None,
                    metrics=metrics, policy=settings.catalog_policy,
                    loader=functools.partial(load_encoder, device=settings.device))
    # SIGTERM/SIGINT: finish the batch being encoded, hand back the rest, exit 0.
    def stop(received: int, _: object) -> None:
        interrupted.append(signal.Signals(received).name)
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    if interrupted:
        worker.stop()
    server = None
    if args.metrics_port is not None:
        server = serve(metrics, url, port=args.metrics_port, host=args.metrics_host)
        print(f"worker: metrics on http://{args.metrics_host}:{server.port}/metrics", file=sys.stderr)
    print(_banner(encoder, settings.catalog_views, worker.decodes_on_gpu, models), file=sys.stderr)
    try:
        with hnsw_index_dropped(url) if args.bulk else contextlib.nullcontext():
            stats = worker.run(once=args.once)
    finally:
        if progress:
            progress.close()
        if server:
            server.close()
    print(f"worker: {stats.summary()}", file=sys.stderr)
    if interrupted:
        print(f"worker: interrupted ({interrupted[0]}): the batch in hand was written, the rest handed back; "
              "run the worker again to go on", file=sys.stderr)
    elif args.once:
        _report_waiting(url)
    return 0


def _banner(encoder: Encoder, catalog_views: str, decodes_on_gpu: bool, models: list[CatalogModel]) -> str:
    """What the worker embeds for: the active model (``encoder`` under ``catalog_views``) and, after
    its jobs, the catalog's other models, added or kept for rollback. Its lanes load those when it
    starts: one this machine cannot load is skipped with a warning of its own, after this line."""
    decoding = "JPEGs decoded on the GPU" if decodes_on_gpu else "images decoded with PIL"
    others = [model for model in models if not model.active]
    if not others:
        return f"worker: encoder {encoder.spec} on {encoder.device}, {catalog_views}-view catalog, {decoding}"
    return (f"worker: encoder {encoder.spec} on {encoder.device} for the active model ({catalog_views}-view), "
            f"{decoding}; then for the catalog's other model(s): {', '.join(map(str, others))}")


#: Error texts listed when `worker --once` leaves products waiting to retry; the rest are counted.
_LISTED_REASONS = 3


def _report_waiting(url: str) -> None:
    """After `worker --once`: the jobs it left waiting to retry after transient errors, and why.
    A job embeds one product for one model: with models added beside the active one, a product
    whose photo is not there yet has a job waiting for each."""
    with connect(url) as conn:
        waiting = jobs.waiting_to_retry(conn)
        several_models = len(list_models(conn)) > 1
    if not waiting:
        return
    total = sum(group.jobs for group in waiting)
    next_try = min(group.next_try_seconds for group in waiting)
    counted = "job(s) (one per product and model)" if several_models else "product(s)"
    print(f"worker: {total} {counted} wait to retry after transient errors, the next in {next_try:.0f} s: run "
          "`prodvec worker --once` again then (`prodvec failures` lists them)", file=sys.stderr)
    for group in waiting[:_LISTED_REASONS]:
        print(f"worker:   {group.jobs} × {group.reason}", file=sys.stderr)
    others = sum(group.jobs for group in waiting[_LISTED_REASONS:])
    if others:
        print(f"worker:   {others} × other errors", file=sys.stderr)


def _progress_bar(url: str):  # -> tqdm
    from tqdm import tqdm

    with connect(url) as conn:
        counts = jobs.status(conn)
    return tqdm(total=counts.pending + counts.retrying, unit="img", desc="embedding")


def _status(args: argparse.Namespace) -> int:
    with connect() as conn:
        counts = jobs.status(conn)
    print_report(counts.as_dict(), as_json=args.json)
    kept = counts.embedded - counts.up_to_date
    if not args.json and kept:
        print(f"({kept} queued product(s) keep their previous vector, and stay searchable, until re-embedded)")
    return 0


def _failures(args: argparse.Namespace) -> int:
    with connect() as conn:
        rows = [vars(failure) for failure in jobs.failures(conn, limit=args.limit)]
    if args.json:
        print_json(rows)
    elif rows:
        for row in rows:
            retry_in = row.pop("retry_in_seconds")
            row["state"] = _failure_state(retry_in)
        # One model's failures need no model column; while a model is added, say whose job failed.
        models = ["model"] if len({row["model"] for row in rows}) > 1 else []
        print_table(rows, ["sku", "state", "attempts", "reason", "image", *models])
    else:
        print("no failed products, none waiting to retry")
    return 0


def _failure_state(retry_in: float | None) -> str:
    if retry_in is None:
        return "failed"
    return f"retry in {retry_in:.0f} s" if retry_in >= 1 else "retry due now"


def _retry(args: argparse.Namespace) -> int:
    with connect() as conn:
        if not args.all:
            unknown = jobs.unknown_skus(conn, args.sku)
            if unknown:
                raise ConfigError(f"no product has sku {', '.join(map(repr, unknown))}: nothing was requeued")
        requeued = jobs.retry_failed(conn, None if args.all else args.sku)
    if not args.all and len(requeued) < len(args.sku):
        others = sorted(set(args.sku) - set(requeued))
        print(f"not failed, so not requeued: {', '.join(others)}", file=sys.stderr)
    print(f"requeued {len(requeued)} product(s)")
    return 0


def _requeue(args: argparse.Namespace) -> int:
    with connect() as conn:
        queued = jobs.requeue_all(conn)
    print(f"queued {queued} product(s): run `prodvec worker` to embed them again")
    return 0
