"""`prodvec serve`: the HTTP API and the search page, on uvicorn."""
from __future__ import annotations

import argparse
import os
import sys

from prodvec.errors import DatabaseError


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="the HTTP API and the search page: http://127.0.0.1:8000 (API docs at /docs)",
        description="Without PRODVEC_API_KEYS the server listens on loopback only; writes need PRODVEC_ADMIN_KEYS. "
                    "More settings: PRODVEC_MAX_UPLOAD_MB, PRODVEC_FETCH_ALLOW, PRODVEC_BATCH_WINDOW_MS, "
                    "PRODVEC_MAX_BATCH, PRODVEC_REQUEST_TIMEOUT, PRODVEC_DB_POOL (see prodvec/service/settings.py). "
                    "PRODVEC_READ_URLS: hot-standby replicas that searches read from while within "
                    "PRODVEC_MAX_REPLICA_LAG seconds of the primary (docs/service.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    parser.add_argument("--port", type=int, default=8000, help="port [8000]")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes, each with its own model and connection pool [1]")
    parser.add_argument("--allow-open", action="store_true",
                        help="allow listening beyond loopback without PRODVEC_API_KEYS: an open, read-only server")
    parser.add_argument("--queue-limit", type=int, default=None,
                        help="image/text queries waiting for the encoder before 503 [PRODVEC_QUEUE_LIMIT or 64]")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from prodvec.db.active_model import catalog_settings
    from prodvec.db.connection import connect, database_url
    from prodvec.db.migrate import embedding_dimensions
    from prodvec.errors import ConfigError
    from prodvec.service.security import check_bind
    from prodvec.service.settings import service_settings

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    # Flags become the environment the server processes read their settings from.
    if args.allow_open:
        os.environ["PRODVEC_ALLOW_OPEN"] = "1"
    if args.queue_limit is not None:
        os.environ["PRODVEC_QUEUE_LIMIT"] = str(args.queue_limit)
    settings = service_settings()
    check_bind(args.host, settings)
    url = database_url(settings.prodvec)  # starts (or attaches to) the embedded server when unset
    os.environ["DATABASE_URL"] = url  # every server process uses this one
    with connect(url) as conn:
        if embedding_dimensions(conn) is None:
            raise DatabaseError("the database has no prodvec schema yet: run `prodvec migrate` first")
        catalog_settings(conn, settings.prodvec)  # ModelMismatch now, in one line, not in each server process
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"prodvec serve: http://{shown}:{args.port}/ (API docs at /docs); keys "
          f"{'required' if settings.api_keys else 'off'} for reads, writes "
          f"{'on' if settings.admin_keys else 'off'}", file=sys.stderr)
    # A worker process answers the supervisor's health pings while it loads the model; on a
    # busy machine that can take longer than uvicorn's 5 s default, and it would be killed.
    uvicorn.run("prodvec.service.app:app_from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="info", timeout_graceful_shutdown=10, timeout_worker_healthcheck=60)
    return 0
