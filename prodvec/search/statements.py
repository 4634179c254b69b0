"""The search's SQL: the caller's filter compiled once by SQLAlchemy, slotted into the
statements of prodvec/sql/search_passes.sql, with the parameters psycopg sends."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

from prodvec.errors import QueryError
from prodvec.models import Product
from prodvec.sql import queries

#: Parameter names of the statements the filter is slotted into; its own parameters must differ.
OWN_PARAMETERS = frozenset({"query", "exclude_id"})

NO_FILTER = "TRUE"

#: The products' vector column of each catalog view, in ViewPolicy.catalog_view_names order:
#: the photo, and under PRODVEC_CATALOG_VIEWS=multi the coarse thumbnail.
VECTOR_COLUMNS = ("embedding", "embedding_coarse")

#: The product attributes a hit loads and their columns: the non-deferred ones (not the embedding).
PRODUCT_COLUMNS: dict[str, str] = {
    attr.key: attr.columns[0].name for attr in inspect(Product).column_attrs if not attr.deferred
}
_COLUMNS_SQL = ", ".join(PRODUCT_COLUMNS.values())


@dataclass(frozen=True)
class Filter:
    """The caller's WHERE clauses as SQL text (columns as ``products.x``) and its parameters."""

    sql: str
    params: dict[str, Any]
    #: The categories every match must be in (`category == x`, or `category.in_([...])`), when
    #: the filter says so: per-category indexes may serve or size it (migrations/0003).
    categories: tuple[str, ...] = ()
    #: The filter is that category membership alone: its matches are exactly those categories' products.
    categories_only: bool = False

    @property
    def empty(self) -> bool:
        return self.sql == NO_FILTER

    @property
    def category(self) -> str | None:
        """The one category every match is in, when the filter pins exactly one."""
        return self.categories[0] if len(self.categories) == 1 else None


def _pinned_categories(terms: Sequence[ColumnElement[bool]]) -> tuple[str, ...]:
    """The categories a filter restricts matches to, read from its top-level AND terms
    (`category == x`, or `category.in_([...])` of plain strings); () if it says none."""
    for term in terms:
        if not isinstance(term, BinaryExpression) or not term.left.compare(Product.__table__.c.category):
            continue
        value = term.right.effective_value if isinstance(term.right, BindParameter) else None
        if term.operator is operators.eq and isinstance(value, str):
            return (value,)
        if (term.operator is operators.in_op and isinstance(value, (list, tuple)) and value
                and all(isinstance(item, str) for item in value)):
            return tuple(dict.fromkeys(value))
    return ()


def _and_terms(clause: ColumnElement[bool]) -> list[ColumnElement[bool]]:
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        return [term for inner in clause.clauses for term in _and_terms(inner)]
    return [clause]


def compile_filter(where: Sequence[ColumnElement[bool]], dialect: Dialect) -> Filter:
    if not where:
        return Filter(NO_FILTER, {})
    compiled = and_(*where).compile(dialect=dialect)
    # The statement with its IN lists rendered one parameter per item, and their values.
    expanded = compiled.construct_expanded_state()
    # The type conversions SQLAlchemy applies on execute (a vector or a TypeDecorator's value
    # compared in a filter): each parameter's type's, the expanded items' from the expansion.
    processors = {
        name: bind.type.dialect_impl(dialect).bind_processor(dialect)
        for bind, name in compiled.bind_names.items()
        if not bind.expanding
    }
    processors.update(expanded.processors)
    params = {
        name: process(value) if (process := processors.get(name)) else value
        for name, value in expanded.parameters.items()
    }
    clash = OWN_PARAMETERS & params.keys()
    if clash:
        raise QueryError(f"a where clause uses the parameter name(s) {sorted(clash)}: rename the bindparam")
    terms = [term for clause in where for term in _and_terms(clause)]
    categories = _pinned_categories(terms)
    return Filter(expanded.statement, params, categories, categories_only=bool(categories) and len(terms) == 1)


def statement(name: str, filter: Filter, vector_column: str = VECTOR_COLUMNS[0], **limits: int) -> str:
    """A statement of search_passes.sql with the filter, the product columns, the vector column
    searched and LIMITs in place."""
    if vector_column not in VECTOR_COLUMNS:  # SQL text, never a caller's string
        raise ValueError(f"not a vector column: {vector_column!r}")
    return queries("search_passes.sql")[name].format(
        filters=filter.sql, columns=_COLUMNS_SQL, vector_column=vector_column,
        **{key: int(value) for key, value in limits.items()},
    )
