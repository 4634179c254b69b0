"""`prodvec search`: nearest products to an image, a text or a sku, with filters."""
from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

from prodvec.cli.output import print_json, print_table


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("search", help="find products that look like an image, a text or a sku")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query photo: path or http(s) URL")
    query.add_argument("--text", help="query text (CLIP models only)")
    query.add_argument("--sku", help="more like this product (itself excluded)")
    parser.add_argument("--category")
    parser.add_argument("--min-price", type=Decimal)
    parser.add_argument("--max-price", type=Decimal)
    parser.add_argument("--in-stock", action="store_true")
    parser.add_argument("-k", type=int, default=10, help="how many products (default 10)")
    parser.add_argument("--max-distance", type=float, help="cosine distance cut-off")
    parser.add_argument("--robust", action=argparse.BooleanOptionalAction, default=None,
                        help="also search the query photo's turned and coarse views (default: PRODVEC_ROBUST_QUERIES, on)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_search)


def filters(args: argparse.Namespace) -> list[Any]:
    from prodvec.models import Product

    clauses: list[Any] = []
    if args.category:
        clauses.append(Product.category == args.category)
    if args.min_price is not None:
        clauses.append(Product.price >= args.min_price)
    if args.max_price is not None:
        clauses.append(Product.price <= args.max_price)
    if args.in_stock:
        clauses.append(Product.stock > 0)
    return clauses


def hit_rows(result: Any) -> list[dict[str, Any]]:
    return [
        {
            "sku": hit.product.sku,
            "title": hit.product.title,
            "category": hit.product.category,
            "price": hit.product.price,
            "stock": hit.product.stock,
            "distance": round(hit.distance, 4),
            "image": hit.product.image,
        }
        for hit in result
    ]


def _search(args: argparse.Namespace) -> int:
    from prodvec import read_session
    from prodvec.models import Product
    from prodvec.search import Sku

    options = {"k": args.k, "where": filters(args), "max_distance": args.max_distance}
    with read_session() as db:  # a replica of PRODVEC_READ_URLS when one is up and caught up
        if args.text is not None:
            result = Product.similar_to_text(args.text, session=db, **options)
        else:
            query = Sku(args.sku) if args.sku is not None else args.image  # a path or URL
            result = Product.similar_to(query, session=db, robust=args.robust, **options)
        rows = hit_rows(result)
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["sku", "title", "category", "price", "stock", "distance"])
        print("(exact: every matching product was compared)" if result.exact
              else "(from the HNSW index: approximate nearest, k hits found)")
    return 0

