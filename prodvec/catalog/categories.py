"""Categories as the catalog has them. Filters match a category exactly, so a name no product
has matches nothing: most often a typo. `prodvec search` and the HTTP API both say so, naming
the near ones, instead of answering with nothing."""
from __future__ import annotations

import difflib

import psycopg

from prodvec.sql import queries

#: Categories offered when an unknown one is asked for.
LISTED_CATEGORIES = 8


def unknown_category(conn: psycopg.Connection, category: str) -> str | None:
    """None when some product has ``category``; otherwise why no product can match, naming the
    near categories (or some of those there are)."""
    sql = queries("catalog.sql")
    if (conn.execute(sql["category_exists"], {"category": category}).fetchone() or (False,))[0]:
        return None
    known = [name for (name,) in conn.execute(sql["categories"])]
    near = difflib.get_close_matches(category, known, n=LISTED_CATEGORIES)
    if near:
        offer = f"near ones: {', '.join(near)}"
    elif known:
        more = ", …" if len(known) > LISTED_CATEGORIES else ""
        offer = f"there are {len(known)}: {', '.join(known[:LISTED_CATEGORIES])}{more}"
    else:
        offer = "no product has a category yet"
    return f"unknown category {category!r}: no product has it (categories match exactly); {offer}"
