"""`prodvec quantized-index create|drop`: the opt-in binary-code index (migrations/0008)."""
from __future__ import annotations

import argparse
import re

from prodvec.cli.output import print_json, print_report
from prodvec.errors import ConfigError

#: A PostgreSQL memory setting: a number and an optional unit.
_MEMORY = re.compile(r"\d+\s*(B|kB|MB|GB|TB)?")


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quantized-index",
        help="an HNSW index on 1-bit codes of the vectors (several times smaller and faster to build), "
             "searched for candidates that are re-ranked exactly; searches use it while it exists",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="(re)build it; run again after the catalog changed a lot")
    create.add_argument("--no-centre", dest="centred", action="store_false",
                        help="code the raw vectors, not their difference from the catalog mean "
                             "(poorer codes for vectors that share a common direction, as CLIP's do)")
    create.add_argument("--m", type=int, default=None, help="graph degree [32]")
    create.add_argument("--ef-construction", type=int, default=None, help="build candidate list [128]")
    create.add_argument("--maintenance-work-mem", default="1GB", help="memory for the build [1GB]")
    create.add_argument("--replace-halfvec", action="store_true",
                        help="then drop the halfvec HNSW index of products.embedding, which searches no longer use: "
                             "what the code index saves is saved (`drop` builds the halfvec index again)")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=_create)
    drop = actions.add_parser("drop", help="drop it: searches use the halfvec index again (built again if it "
                                           "was replaced)")
    drop.add_argument("--json", action="store_true")
    drop.set_defaults(handler=_drop)


def _create(args: argparse.Namespace) -> int:
    from prodvec.db.connection import database_url
    from prodvec.db.quantized_index import DEFAULT_EF_CONSTRUCTION, DEFAULT_M, create_index

    m = DEFAULT_M if args.m is None else args.m
    ef_construction = DEFAULT_EF_CONSTRUCTION if args.ef_construction is None else args.ef_construction
    if not (2 <= m <= 100) or not (4 <= ef_construction <= 1000) or ef_construction < 2 * m:
        raise ConfigError("use 2 <= --m <= 100 and 2 × m <= --ef-construction <= 1000 (pgvector's limits)")
    if not _MEMORY.fullmatch(args.maintenance_work_mem.strip()):
        raise ConfigError(f"--maintenance-work-mem {args.maintenance_work_mem!r}: give a PostgreSQL memory size "
                          "such as 512MB or 2GB")
    report = create_index(database_url(), centred=args.centred, m=m, ef_construction=ef_construction,
                          maintenance_work_mem=args.maintenance_work_mem, replace_halfvec=args.replace_halfvec)
    # Recall measured through an earlier code index went with it (create_index).
    print_report({**report, "recall": "not measured through this index yet: run `prodvec recall --tune`"},
                 as_json=args.json)
    return 0


def _drop(args: argparse.Namespace) -> int:
    from prodvec.db.connection import database_url
    from prodvec.db.quantized_index import drop_index

    dropped = drop_index(database_url())  # rebuilds the halfvec index where the code index had replaced it
    if args.json:
        print_json({"dropped": dropped})
    else:
        print("dropped the binary-code index: searches use the halfvec index again" if dropped
              else "no binary-code index to drop")
    return 0
