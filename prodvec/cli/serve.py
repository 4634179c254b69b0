"""`prodvec serve`: the HTTP API and the search page, on uvicorn."""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

from prodvec.errors import ConfigError, DatabaseError


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
    parser.add_argument("--port", type=_port, default=8000, help="port, 1 to 65535 [8000]")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes, each with its own model and connection pool [1]")
    parser.add_argument("--allow-open", action="store_true",
                        help="allow listening beyond loopback without PRODVEC_API_KEYS: an open, read-only server")
    parser.add_argument("--queue-limit", type=_at_least_one, default=None,
                        help="image/text queries waiting for the encoder before 503 [PRODVEC_QUEUE_LIMIT or 64]")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from prodvec.db.active_model import catalog_settings
    from prodvec.db.connection import connect, database_url
    from prodvec.db.migrate import embedding_dimensions
    from prodvec.service.security import check_bind
    from prodvec.service.settings import service_settings

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    # Flags become the environment the server processes read their settings from.
    if args.allow_open:
        os.environ["PRODVEC_ALLOW_OPEN"] = "1"
    if args.queue_limit is not None:
        os.environ["PRODVEC_QUEUE_LIMIT"] = str(args.queue_limit)
    log_level = "debug" if args.verbose else "warning" if args.quiet else "info"
    os.environ["PRODVEC_LOG_LEVEL"] = log_level  # prodvec's logging in each server process, as in this one
    settings = service_settings()
    check_bind(args.host, settings)
    check_free(args.host, args.port)  # now, not after the database is started and the model loaded
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
    # uvicorn's own logs follow -q/-v as prodvec's do: with -q only its warnings, and no line per
    # request. A worker process answers the supervisor's health pings while it loads the model; on
    # a busy machine that can take longer than uvicorn's 5 s default, and it would be killed.
    uvicorn.run("prodvec.service.app:app_from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=log_level,
                access_log=not args.quiet, timeout_graceful_shutdown=10, timeout_worker_healthcheck=60)
    return 0


def _at_least_one(text: str) -> int:
    """--queue-limit's type: a whole number of at least 1 (checked here, so the error names the flag)."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return number


def _port(text: str) -> int:
    """--port's type: a TCP port number (uvicorn would take 99999 and listen on another port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: give one from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number: give one from 1 to 65535")
    return port


def check_free(host: str, port: int) -> None:
    """Bind the address as uvicorn will (same family, SO_REUSEADDR), and let it go: ConfigError
    in one line if it cannot be had. A moment later something else could take it, but the
    usual case, a server already running there, is told before any slow start-up work."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except socket.gaierror:
        raise ConfigError(f"cannot listen on {host}: no such host name: pass --host with an address of this machine") \
            from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use: stop what uses it or pass --port") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"may not listen on port {port} (ports under 1024 need root): pass --port 8000 "
                              "or another port from 1024 up") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot listen on {host}: it is not an address of this machine: pass --host "
                              "127.0.0.1, 0.0.0.0 or one of its addresses") from None
        raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
