"""Rows of product columns → Product objects in the session, as an ORM query gives them.

A product the session holds already is returned as it is (an ORM query does not overwrite
loaded objects either); any other becomes a persistent object of the session, its embedding
left to load on first access (deferred, as mapped).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session, make_transient_to_detached

from prodvec.models import Product
from prodvec.search.statements import PRODUCT_COLUMNS

_ATTRIBUTES = tuple(PRODUCT_COLUMNS)
_ID = _ATTRIBUTES.index("id")
_CLASS_MANAGER = inspect(Product).class_manager


def products(session: Session, rows: Sequence[Sequence[Any]]) -> list[Product]:
    """One Product per row; each row starts with the PRODUCT_COLUMNS, in order."""
    found = []
    for row in rows:
        product = session.identity_map.get(session.identity_key(Product, row[_ID]))
        if product is None:
            # As the ORM's own loader does: loaded values go straight into the instance dict,
            # with no change history (half the time of the constructor, which records changes).
            product = _CLASS_MANAGER.new_instance()
            product.__dict__.update(zip(_ATTRIBUTES, row[: len(_ATTRIBUTES)], strict=True))
            make_transient_to_detached(product)  # persistent once added, nothing to flush
            session.add(product)
        found.append(product)
    return found
