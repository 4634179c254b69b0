"""Named queries kept in .sql files beside this module.

A file holds blocks that start with a line ``-- name: NAME``; the text up to the next such
line is that query, with psycopg ``%(param)s`` placeholders.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries(filename: str) -> dict[str, str]:
    text = (Path(__file__).parent / filename).read_text()
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
