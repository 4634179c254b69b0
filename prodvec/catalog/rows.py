"""One catalog record (a CSV row or a JSON object) checked and typed into a `CatalogRow`.

Every check that the database would otherwise make happens here, so one bad value is reported
as a bad row instead of failing the COPY and with it the whole import.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from prodvec.errors import CatalogRowError

#: The columns prodvec reads. Any other column or key is refused unless the import ignores them.
COLUMNS = ("sku", "title", "category", "price", "stock", "image")
#: Columns a CSV header must name: every row needs a sku and a price (see _price). Missing
#: title, category, stock or image are blank, blank, 0 and no image.
REQUIRED_COLUMNS = ("sku", "price")

# products.price is numeric(12, 2) and products.stock an int4: larger values would abort the COPY.
MAX_PRICE = Decimal("9999999999.99")
MAX_STOCK = 2**31 - 1
CENT = Decimal("0.01")
# sku and category sit in btree indexes, whose entries may not exceed ~2,700 bytes.
# 500 characters stay below that in any UTF-8 text.
MAX_INDEXED_CHARS = 500
# The category's index entry also carries the product's vector (migrations/0005): the
# table takes categories of up to 1,000 bytes, which 250 characters never exceed.
MAX_CATEGORY_CHARS = 250
URL_SCHEMES = ("http", "https", "file")
# A URL scheme (RFC 3986) and an http(s) authority; regexes, as urlsplit would double the time
# a row takes to check.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_HOST = re.compile(r"//[^/?#]")


class CatalogRow(NamedTuple):
    """A valid product row, typed as the products table stores it.

    A tuple in `COLUMNS` order, so the importer hands it to COPY as it is.
    """

    sku: str
    title: str
    category: str
    price: Decimal
    stock: int
    image: str | None  # absolute local path, file:// or http(s):// URL; None: no image


def parse_row(record: Mapping[str, object], line: int, base_dir: str) -> CatalogRow:
    """Check and type one record; raise `CatalogRowError` (with ``line``) when it is invalid.

    ``base_dir`` (absolute) is the catalog file's folder: relative image paths are resolved
    against it, so the stored path works from wherever the worker runs.
    """
    try:
        sku = clean_sku(record.get("sku"))
        if sku is None:
            raise ValueError("sku is missing")
        return CatalogRow(
            sku=sku,
            title=_text(record.get("title"), "title"),
            category=_text(record.get("category"), "category", max_chars=MAX_CATEGORY_CHARS),
            price=_price(record.get("price")),
            stock=_stock(record.get("stock")),
            image=_image(record.get("image"), base_dir),
        )
    except ValueError as exc:
        raise CatalogRowError(line, str(exc)) from None


def clean_sku(value: object) -> str | None:
    """The sku as stored (stripped), None when missing or blank; ValueError when malformed."""
    sku = _text(value, "sku", max_chars=MAX_INDEXED_CHARS)
    return sku or None


def _text(value: object, field: str, *, max_chars: int | None = None) -> str:
    if value is None:
        return ""
    # JSON numbers are accepted for text fields (sku 12345); anything else is a mistake.
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{field} must be text, not {type(value).__name__}")
    text = str(value).strip()
    if "\x00" in text:
        raise ValueError(f"{field} contains a NUL character")
    if not text.isascii():
        try:
            # Files are decoded with surrogateescape: invalid UTF-8 shows up here, per row.
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{field} is not valid UTF-8") from None
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(f"{field} is longer than {max_chars} characters")
    return text


def _number(value: object, field: str) -> Decimal | None:
    """A finite Decimal from a string or JSON number; None when missing or blank."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    elif isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ValueError(f"{field} must be a number, not {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{field} must be a number, not {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{field} must be a finite number, not {value!r}")
    return number


def _price(value: object) -> Decimal:
    # Required: a product silently priced 0 would show up as free.
    price = _number(value, "price")
    if price is None:
        raise ValueError("price is missing")
    if price < 0:
        raise ValueError(f"price must not be negative, not {value!r}")
    if price > MAX_PRICE:
        raise ValueError(f"price must be at most {MAX_PRICE}, not {value!r}")
    if price != price.quantize(CENT):
        raise ValueError(f"price must have at most 2 decimals, not {value!r}")
    return price


def _stock(value: object) -> int:
    # Missing stock means none in stock. "3.0" (spreadsheets, pandas) is accepted, "3.5" not.
    stock = _number(value, "stock")
    if stock is None:
        return 0
    if stock != stock.to_integral_value():
        raise ValueError(f"stock must be a whole number, not {value!r}")
    if stock < 0:
        raise ValueError(f"stock must not be negative, not {value!r}")
    if stock > MAX_STOCK:
        raise ValueError(f"stock must be at most {MAX_STOCK}, not {value!r}")
    return int(stock)


def _image(value: object, base_dir: str) -> str | None:
    image = _text(value, "image")
    if not image:
        return None
    match = _SCHEME.match(image)
    if match is None:
        # normpath, not Path.resolve(): no filesystem access per row; the file may come later.
        return os.path.normpath(os.path.join(base_dir, image))
    scheme = match[1].lower()
    if scheme not in URL_SCHEMES:
        raise ValueError(
            f"image {image!r}: unsupported scheme {scheme!r} (use a local path, file:// or http(s)://)"
        )
    if scheme != "file" and not _HOST.match(image, match.end()):
        raise ValueError(f"image {image!r} has no host")
    return image
