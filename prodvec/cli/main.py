"""`prodvec` command line: parses arguments and hands each command to its module."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from prodvec.errors import ProdvecError


def build_parser() -> argparse.ArgumentParser:
    from prodvec.cli import catalog, database, evaluate, quantized, queue, search

    parser = argparse.ArgumentParser(prog="prodvec", description="Product image search inside PostgreSQL.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="embedded DB, sample catalog, embed, search: the whole tour")
    demo.set_defaults(handler=_run_demo)

    database.add_commands(commands)
    catalog.add_commands(commands)
    queue.add_commands(commands)
    search.add_commands(commands)
    evaluate.add_commands(commands)
    quantized.add_commands(commands)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from prodvec.demo.run import run_demo

    return run_demo()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except ProdvecError as exc:
        print(f"prodvec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
