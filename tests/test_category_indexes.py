"""Per-category HNSW indexes (migrations/0003): made and dropped by prodvec_index_categories(),
chosen by PostgreSQL for searches filtered to one category, exact near and far from it."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from test_search import CLUSTERS, Catalog, assert_exact, catalog, db  # noqa: F401 - fixtures

from prodvec.cli.main import main
from prodvec.models import Product
from prodvec.search import execute, plan, similar_to_many
from prodvec.search.statements import compile_filter

INDEX_PREFIX = "products_embedding_hnsw_c_"


def _category_indexes(conn: psycopg.Connection) -> dict[str, str]:
    """index name → its predicate's category, as PostgreSQL has it."""
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'products' AND starts_with(indexname, %s)",
        (INDEX_PREFIX,),
    )
    return {name: definition.rsplit("category = '", 1)[1].split("'")[0] for name, definition in rows}


def test_categories_with_enough_products_get_an_index_and_lose_it(conn: psycopg.Connection, catalog: Catalog) -> None:
    # Every cluster holds ~100 products, "rare" 6.
    actions = conn.execute("SELECT category, action FROM prodvec_index_categories(50)").fetchall()
    assert sorted(actions) == [(category, "created") for category in sorted(CLUSTERS)]
    assert sorted(_category_indexes(conn).values()) == sorted(CLUSTERS)
    again = conn.execute("SELECT action FROM prodvec_index_categories(50)").fetchall()
    assert {action for (action,) in again} == {"kept"}
    conn.execute("UPDATE products SET category = 'rare' WHERE category = 'hats'")
    after = conn.execute("SELECT category, action FROM prodvec_index_categories(50)").fetchall()
    assert (None, "dropped") in after and ("rare", "created") in after
    assert sorted(_category_indexes(conn).values()) == sorted({*CLUSTERS, "rare"} - {"hats"})


@pytest.mark.parametrize("near", ["bags", "shoes"], ids=["near", "far"])
def test_a_category_filter_searches_that_categorys_index_exactly(
    conn: psycopg.Connection, catalog: Catalog, db: Session, monkeypatch: pytest.MonkeyPatch, near: str
) -> None:
    conn.execute("SELECT prodvec_index_categories(50)")
    monkeypatch.setattr(plan, "EXACT_MAX_ROWS", 0)  # at this size every filter would go exact
    plan.forget()
    # At 400 rows PostgreSQL would rather sort them all than use any index; at scale it need not be told.
    db.execute(text("SET LOCAL enable_seqscan = off"))
    db.execute(text("SET LOCAL enable_bitmapscan = off"))
    scans_before = _index_scans(conn, "bags")
    mask = (catalog.category == "bags") & (catalog.price <= 150)
    # Over psycopg's prepare threshold: a generic plan could not use the index any more.
    for seed in range(8):
        query = catalog.query_near(near, seed)
        (result,) = similar_to_many(db, [query], k=10, where=[Product.category == "bags", Product.price <= 150])
        assert result.strategy == "hnsw"
        assert_exact(result, catalog, query, mask)
    db.execute(text("SELECT pg_stat_force_next_flush()"))  # the counts reach pg_stat once idle
    db.commit()
    deadline = time.monotonic() + 60  # a bound for a loaded machine; the loop ends as soon as they arrive
    while _index_scans(conn, "bags") < scans_before + 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _index_scans(conn, "bags") >= scans_before + 8


def test_the_plan_sizes_the_scan_to_the_category(conn: psycopg.Connection, catalog: Catalog, db: Session) -> None:
    conn.execute("SELECT prodvec_index_categories(50)")
    plan.forget()
    facts = plan.table_facts(db)
    in_bags = int((catalog.category == "bags").sum())
    assert facts.category_index_rows("bags") == in_bags
    assert facts.category_index_rows("rare") is None and facts.category_index_rows(None) is None
    settings = plan.category_index_settings(10, in_bags / 8, in_bags)
    assert settings.max_scan_tuples > in_bags  # the whole category's graph: short only when < k match
    assert settings.ef_search == 160  # 2k candidates at an eighth of the category
    assert plan.category_index_settings(10, in_bags, in_bags).ef_search == plan.CATEGORY_EF_SEARCH_MIN


def test_exact_passes_keep_more_of_a_category_when_they_read_the_index(
    conn: psycopg.Connection, catalog: Catalog, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fifth of a category: exact when the (category, price) index carries the vectors
    (the test's narrow vectors are carried), its category index when exact reads the table."""
    conn.execute("SELECT prodvec_index_categories(50)")
    plan.forget()
    facts = plan.table_facts(db)
    assert facts.vectors_in_filter_index
    in_bags = facts.category_index_rows("bags")
    monkeypatch.setattr(plan, "_planner_estimate", lambda session, query: int(0.2 * in_bags))
    where = compile_filter([Product.category == "bags", Product.price <= 150], db.get_bind().dialect)
    query = execute.Query(catalog.query_near("bags", 0), where, k=10, exclude_id=None)
    assert plan.choose(db, query, facts).exact_cap is not None
    from_table = plan.choose(db, query, dataclasses.replace(facts, vectors_in_filter_index=False))
    assert from_table.exact_cap is None and from_table.index.max_scan_tuples > in_bags


def test_cli_makes_the_indexes(db_url: str, catalog: Catalog, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["category-indexes", "--min-products", "50", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert sorted(row["category"] for row in made) == sorted(CLUSTERS)
    assert {row["action"] for row in made} == {"created"}
    assert all(row["index_name"].startswith(INDEX_PREFIX) for row in made)


def _index_scans(conn: psycopg.Connection, category: str) -> int:
    (name,) = conn.execute("SELECT prodvec_category_index_name(%s)", (category,)).fetchone()
    conn.execute("SELECT pg_stat_clear_snapshot()")
    (scans,) = conn.execute(
        "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_indexes WHERE indexrelname = %s", (name,)
    ).fetchone()
    return int(scans)


def test_only_one_pinned_category_counts(db: Session) -> None:
    from prodvec.search.statements import compile_filter

    dialect = db.get_bind().dialect
    assert compile_filter([Product.category == "bags", Product.price < 5], dialect).category == "bags"
    assert compile_filter([Product.category.in_(["bags"])], dialect).category == "bags"
    assert compile_filter([Product.category.in_(["bags", "shoes"])], dialect).category is None
    assert compile_filter([Product.category.in_(["bags", "shoes"])], dialect).categories == ("bags", "shoes")
    assert compile_filter([text("category = 'bags'")], dialect).category is None  # opaque SQL: not read


def test_a_category_alone_needs_no_planner_estimate(
    conn: psycopg.Connection, catalog: Catalog, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.execute("SELECT prodvec_index_categories(50)")
    monkeypatch.setattr(plan, "EXACT_MAX_ROWS", 0)
    plan.forget()

    def no_estimate(*args: object) -> int:
        raise AssertionError("the index holds the category's products: the planner need not be asked")

    monkeypatch.setattr(plan, "_planner_estimate", no_estimate)
    query = catalog.query_near("shoes", 3)
    (result,) = similar_to_many(db, [query], k=10, where=[Product.category == "bags"])
    assert result.candidates == int((catalog.category == "bags").sum())
    assert_exact(result, catalog, query, catalog.category == "bags")
    (both,) = similar_to_many(db, [query], k=10, where=[Product.category.in_(["bags", "shoes"])])
    assert both.candidates == int(np.isin(catalog.category, ["bags", "shoes"]).sum())
    assert_exact(both, catalog, query, np.isin(catalog.category, ["bags", "shoes"]))
    with pytest.raises(AssertionError, match="need not be asked"):  # another term: it must be asked
        similar_to_many(db, [query], k=10, where=[Product.category == "bags", Product.stock > 0])
    with pytest.raises(AssertionError, match="need not be asked"):  # no index, no statistics for "gloves"
        similar_to_many(db, [query], k=10, where=[Product.category.in_(["bags", "gloves"])])


def test_the_statistics_size_a_category_filter_without_asking_the_planner(
    conn: psycopg.Connection, catalog: Catalog, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No category indexes: ANALYZE's most common categories give what a category filter keeps."""
    plan.forget()

    def no_estimate(*args: object) -> int:
        raise AssertionError("the statistics know the category: the planner need not be asked")

    monkeypatch.setattr(plan, "_planner_estimate", no_estimate)
    query = catalog.query_near("hats", 5)
    where = [Product.category.in_(["rare", "hats"])]
    (result,) = similar_to_many(db, [query], k=10, where=where)
    mask = np.isin(catalog.category, ["rare", "hats"])
    # ANALYZE read every row of this small table: its shares are the true ones (of all products).
    assert result.candidates == pytest.approx(mask.sum(), rel=0.05)
    assert_exact(result, catalog, query, mask)


def test_index_check_searches_products_with_their_own_vectors_through_the_index(
    conn: psycopg.Connection, db_url: str, catalog: Catalog, capsys: pytest.CaptureFixture[str]
) -> None:
    def main_index_scans() -> int:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        (scans,) = conn.execute(
            "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_indexes WHERE indexrelname = 'products_embedding_hnsw'"
        ).fetchone()
        return scans

    before = main_index_scans()
    assert main(["index-check", "--sample", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["searched"] == 50 and report["ef_search"] == 40
    # A 400-product graph: every product within reach (found counts it back first, at distance 0).
    assert report["found"] == 50 and report["share"] == 1.0
    # The command's backend sends its counts as it exits, which a loaded machine may delay past a
    # few seconds; the loop ends as soon as they arrive.
    deadline = time.monotonic() + 60
    while main_index_scans() < before + 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert main_index_scans() >= before + 50  # through the index, not a sort of the table

    conn.execute("DROP INDEX products_embedding_hnsw")
    assert main(["index-check"]) == 2
    assert "no halfvec HNSW index" in capsys.readouterr().err
