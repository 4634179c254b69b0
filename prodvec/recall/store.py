"""prodvec_recall_settings (migrations/0006): what `prodvec recall` measured and tuned, which
searches read (plan.table_facts) and the watch exports."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from prodvec.recall.tune import Figures, TunedBand
from prodvec.search import execute, plan
from prodvec.sql import queries


def save_tuned(session: Session, kind: str, bands: Sequence[TunedBand], *, target: float, products: float) -> None:
    """Replace the kind's bands with a tuning's (committed; this process's searches use it at once)."""
    sql = queries("recall.sql")
    execute.run(session, sql["forget_kind"], {"kind": kind})
    for number, band in enumerate(bands):
        _save(session, kind, number, band.max_distance, band.ef_search, band.figures, target, products)
    session.commit()
    plan.forget()


def save_measured(session: Session, kind: str, by_band: dict[int, Figures], *, products: float) -> None:
    """Record what the kind's bands reached now, keeping their effort; a kind never tuned gets
    one band at the planned effort. Bands without an index answer in the sample keep their figures."""
    for number, figures in by_band.items():
        if figures.queries:
            _save(session, kind, number, None, None, figures, None, products)
    session.commit()
    plan.forget()


def stored(session: Session) -> list[dict[str, Any]]:
    """Every kind's bands as stored, nearest first."""
    columns = ("kind", "band", "max_distance", "ef_search", "recall", "worst_decile", "queries", "target",
               "products", "measured_at")
    return [dict(zip(columns, row, strict=True)) for row in execute.fetch(session, queries("recall.sql")["report"], {})]


def _save(session: Session, kind: str, band: int, max_distance: float | None, ef_search: int | None,
          figures: Figures, target: float | None, products: float) -> None:
    execute.run(session, queries("recall.sql")["save_band"], {
        "kind": kind, "band": band, "max_distance": max_distance, "ef_search": ef_search,
        "recall": figures.recall, "worst_decile": figures.worst_decile,
        "queries": figures.queries, "target": target, "products": int(products),
    })
