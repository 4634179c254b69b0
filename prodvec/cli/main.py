"""`prodvec` command line: parses arguments and hands each command to its module."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from prodvec import __version__
from prodvec.db.connection import unavailable
from prodvec.errors import ProdvecError
from prodvec.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    from prodvec.cli import catalog, database, evaluate, model, quantized, queue, recall, search, serve

    parser = argparse.ArgumentParser(prog="prodvec", description="Product image search inside PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _talk_options(parser, default=False)
    # Not required: a bare `prodvec` gets the help, which lists the commands (main).
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)

    demo = commands.add_parser("demo", help="embedded DB, sample catalog, embed, search: the whole tour")
    demo.add_argument("--reset", action="store_true",
                      help="drop the prodvec_demo database an earlier demo left (with what you imported or changed "
                           "in it) and run the demo again")
    demo.set_defaults(handler=_run_demo)

    database.add_commands(commands)
    catalog.add_commands(commands)
    queue.add_commands(commands)
    search.add_commands(commands)
    evaluate.add_commands(commands)
    recall.add_commands(commands)
    model.add_commands(commands)
    serve.add_commands(commands)
    quantized.add_commands(commands)
    return parser


def _talk_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    # No mutually exclusive group: its error would differ from main's check, which must be there
    # anyway for -v before the command and -q after it (or the reverse).
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log debugging details too")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="log only warnings and errors, no progress (not with -v)")


class _CommandParser(argparse.ArgumentParser):
    """A command's parser (and its sub-commands', which argparse makes of the same class): -v and
    -q after the command too (`prodvec worker -v`), as people type them. Their defaults there are
    left unset: a command's parser writes its values over the main parser's, and would otherwise
    undo a -q given before the command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _talk_options(self, default=argparse.SUPPRESS)


def _run_demo(args: argparse.Namespace) -> int:
    from prodvec.demo.run import run_demo

    return run_demo(reset=args.reset)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:  # before the command, after it, or one on each side
        return _error("-v/--verbose and -q/--quiet go against each other: give one")
    if args.command is None:  # a usage error as argparse's (exit 2), with the commands to choose from
        parser.print_help(sys.stderr)
        return 2
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    try:
        return int(args.handler(args) or 0)
    except ProdvecError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `prodvec status --json | head`: the reader left, nothing to say
        # Point stdout at /dev/null, so flushing it at exit raises nothing either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        # A connection lost mid-command (psycopg's own error, or SQLAlchemy's wrapping it):
        # one line too. Anything else is a bug, and its traceback is wanted.
        cause = getattr(exc, "orig", None) or exc
        if isinstance(cause, _NO_SCHEMA):  # pgvector there (a managed server), prodvec's tables not yet
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            return _error(f"the database has no prodvec schema yet ({reason}): run `prodvec migrate`")
        if not isinstance(cause, psycopg.OperationalError):
            raise
        return _error(unavailable(cause))  # as connect() says it, for the commands that connect there


#: What a command meets on a database whose schema prodvec has not made (or an older one).
_NO_SCHEMA = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedColumn)


def _error(message: str) -> int:
    print(f"prodvec: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
