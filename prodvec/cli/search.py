"""`prodvec search`: nearest products to an image, a text or a sku, with filters."""
from __future__ import annotations

import argparse
import os
import re
from decimal import Decimal
from typing import Any

from prodvec.cli.output import print_json, print_table
from prodvec.errors import ConfigError, QueryError

#: The Python API's advice in QueryError messages to search by sku (for any text that is no
#: readable image): the command line spells it --sku, and gives it only for what could be a sku.
_SKU_ADVICE = re.compile(r"( \(to search by sku, )pass Sku\((.+?)\)(\))")


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("search", help="find products that look like an image, a text or a sku")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query photo: path or http(s) URL")
    query.add_argument("--text", help="query text (CLIP models only)")
    query.add_argument("--sku", help="more like this product (itself excluded)")
    parser.add_argument("--category", action="append", metavar="CATEGORY",
                        help="only products in this category (exact name); repeat it for products in any of several")
    parser.add_argument("--min-price", type=_price)
    parser.add_argument("--max-price", type=_price)
    parser.add_argument("--in-stock", action="store_true")
    parser.add_argument("-k", type=int, default=10, help="how many products (default 10)")
    parser.add_argument("--max-distance", type=float, help="cosine distance cut-off")
    parser.add_argument("--robust", action=argparse.BooleanOptionalAction, default=None,
                        help="also search the query photo's turned and coarse views "
                             "(default: PRODVEC_ROBUST_QUERIES, on)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_search)


def _price(text: str) -> Decimal:
    """--min-price/--max-price's type: argparse says which option a bad value belongs to only
    for the errors it knows, and Decimal('abc') raises none of those."""
    try:
        return Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation
        raise argparse.ArgumentTypeError(f"{text!r} is not a price: give a number such as 49.90") from None


def filters(args: argparse.Namespace) -> list[Any]:
    from prodvec.models import Product

    clauses: list[Any] = []
    if args.category:
        clauses.append(Product.category.in_(args.category))
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


def check_options(args: argparse.Namespace) -> None:
    """Options that no product could match, or that make no search: ConfigError saying why."""
    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, not {args.k}")
    if args.max_distance is not None and not 0 <= args.max_distance <= 2:
        raise ConfigError(f"--max-distance is a cosine distance between 0 and 2, not {args.max_distance}")
    for flag, price in (("--min-price", args.min_price), ("--max-price", args.max_price)):
        if price is not None and not price.is_finite():
            raise ConfigError(f"{flag} must be a number, not {price}")
    if args.max_price is not None and args.max_price < 0:
        raise ConfigError(f"--max-price {args.max_price} matches no product: prices are never negative")
    if args.min_price is not None and args.max_price is not None and args.min_price > args.max_price:
        raise ConfigError(
            f"--min-price {args.min_price} is above --max-price {args.max_price}: no product can match"
        )


def check_categories(url: str, categories: list[str]) -> None:
    """ConfigError naming the near categories for the first of ``categories`` no product has."""
    from prodvec.catalog.categories import unknown_category
    from prodvec.db.connection import connect

    with connect(url) as conn:
        for category in categories:
            problem = unknown_category(conn, category)
            if problem and "," in category:  # several categories in one, as some tools spell a list
                several = " ".join(f"--category {name.strip()!r}" for name in category.split(",") if name.strip())
                problem += f"; to search several categories, repeat --category: {several}"
            if problem:
                raise ConfigError(problem)


def cli_advice(message: str, image: str | None) -> str:
    """A QueryError's message with the command line's spelling of its advice; no --sku advice
    for an --image that is a URL or a path (a folder in it, an image file's extension)."""
    if image is not None and not could_be_sku(image):
        return _SKU_ADVICE.sub("", message)
    return _SKU_ADVICE.sub(r"\1use --sku \2\3", message)


def could_be_sku(text: str) -> bool:
    """Whether an --image argument might be a sku typed after the wrong flag."""
    from PIL import Image

    suffix = os.path.splitext(text)[1].lower()
    return "://" not in text and "/" not in text and os.sep not in text and suffix not in Image.registered_extensions()


def _search(args: argparse.Namespace) -> int:
    from prodvec import read_session
    from prodvec.db.connection import database_url
    from prodvec.models import Product
    from prodvec.search import Sku

    check_options(args)
    url = database_url()
    if args.category:
        check_categories(url, args.category)
    options = {"k": args.k, "where": filters(args), "max_distance": args.max_distance}
    try:
        with read_session(url) as db:  # a replica of PRODVEC_READ_URLS when one is up and caught up
            if args.text is not None:
                result = Product.similar_to_text(args.text, session=db, **options)
            else:
                query = Sku(args.sku) if args.sku is not None else args.image  # a path or URL
                result = Product.similar_to(query, session=db, robust=args.robust, **options)
            rows = hit_rows(result)
    except QueryError as exc:
        raise QueryError(cli_advice(str(exc), args.image)) from exc
    if args.json:
        print_json({"hits": rows, "strategy": result.strategy, "exact": result.exact,
                    "recall": result.recall, "candidates": result.candidates, "k": args.k,
                    "model": result.model})  # as the service's search answer names it
        return 0
    print_table(rows, ["sku", "title", "category", "price", "stock", "distance"])
    if not rows:
        print("(no product matches: none passes the filters" +
              (" within --max-distance)" if args.max_distance is not None else ", or none has a vector yet)"))
    elif result.exact:
        print("(exact: every matching product was compared)" if len(rows) == args.k
              else f"(exact: only {len(rows)} products match)")
    else:
        print(f"(from the HNSW index: the approximate {len(rows)} nearest; " + _recall_note(result.recall) + ")")
    return 0


def _recall_note(recall: float | None) -> str:
    if recall is None:
        return "recall not measured on this catalog yet: `prodvec recall`"
    return f"recall@10 measured {recall:.3f} for searches like this one"
