"""The binary-code index with exact re-rank, against numpy brute force.

3,000 clustered 512-d vectors that share a common direction (as CLIP's do: far from centred),
inserted with their embeddings. The codes are checked bit by bit against numpy's signs of the
vectors minus their mean; searches against numpy's exact top k.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector
from test_cli import _fails

from prodvec import session as open_session
from prodvec.cli.main import main as cli_main
from prodvec.db.quantized_index import create_index, drop_index
from prodvec.models import Product
from prodvec.recall import store
from prodvec.search import Sku, execute, plan, quantized
from prodvec.search.execute import Query
from prodvec.search.statements import compile_filter
from prodvec.worker.bulk import hnsw_index_dropped

DIMENSIONS = 512
ROWS = 3000
CLUSTERS = 30
TIE = 1e-3  # halfvec distances of different rows can tie within this


@dataclass(frozen=True)
class Catalog:
    ids: np.ndarray
    vectors: np.ndarray  # float32 rows of the stored half-precision values
    category: np.ndarray

    def truth(self, query: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids and cosine distances of the (matching) products, nearest first."""
        mask = np.ones(len(self.ids), bool) if mask is None else mask
        q = query.astype(np.float16).astype(np.float32)
        unit = self.vectors[mask] / np.linalg.norm(self.vectors[mask], axis=1, keepdims=True)
        distances = 1 - unit @ (q / np.linalg.norm(q))
        order = np.argsort(distances, kind="stable")
        return self.ids[mask][order], distances[order]


@pytest.fixture
def catalog(conn: psycopg.Connection) -> Catalog:
    rng = np.random.default_rng(16)
    shared = rng.standard_normal(DIMENSIONS)
    centres = 0.7 * shared / np.linalg.norm(shared) + 0.5 * _unit(rng.standard_normal((CLUSTERS, DIMENSIONS)))
    cluster = rng.integers(0, CLUSTERS, ROWS)
    vectors = _unit(centres[cluster] + 0.3 * _unit(rng.standard_normal((ROWS, DIMENSIONS)))).astype(np.float16)
    category = np.array([f"c{c % 10}" for c in cluster])
    # Into a table without its HNSW index, which is rebuilt after: ~50x faster (ENVIRONMENT.md).
    conn.execute("DROP INDEX products_embedding_hnsw")
    with conn.cursor().copy("COPY products (sku, category, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "halfvec"])
        for i in range(ROWS):
            copy.write_row((f"Q{i:05d}", category[i], HalfVector(vectors[i])))
    conn.execute("SELECT prodvec_create_vector_indexes()")
    conn.execute("VACUUM ANALYZE products")
    ids = np.array([row[0] for row in conn.execute("SELECT id FROM products ORDER BY sku")])
    plan.forget()
    return Catalog(ids, vectors.astype(np.float32), category)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _queries(catalog: Catalog, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    rows = rng.choice(ROWS, n, replace=False)
    return [catalog.vectors[r] + 0.2 * _unit(rng.standard_normal(DIMENSIONS)) for r in rows]


def test_codes_are_the_signs_of_the_centred_vectors(conn, db_url, catalog: Catalog) -> None:
    made = create_index(db_url)
    assert made["dimensions"] == DIMENSIONS and made["products"] == ROWS
    mean = catalog.vectors.mean(axis=0)
    assert made["mean_norm"] == pytest.approx(np.linalg.norm(mean), rel=1e-2)
    rows = conn.execute("SELECT id, prodvec_binary_code(embedding)::text FROM products ORDER BY id LIMIT 50").fetchall()
    raw_agreement, centred_agreement = [], []
    for product_id, code in rows:
        bits = np.array([c == "1" for c in code])
        vector = catalog.vectors[catalog.ids == product_id][0]
        centred_agreement.append(np.mean(bits == (vector - mean > 0)))
        raw_agreement.append(np.mean(bits == (vector > 0)))
    # The mean is stored as halfvec: a component within its rounding of the mean may flip.
    assert min(centred_agreement) > 0.99
    assert np.mean(raw_agreement) < 0.9  # so the test tells centred codes from raw ones
    assert create_index(db_url, centred=False)["mean_norm"] == 0
    code = conn.execute("SELECT prodvec_binary_code(embedding)::text FROM products WHERE id = %s",
                        (int(catalog.ids[0]),)).fetchone()[0]
    assert [c == "1" for c in code] == list(catalog.vectors[0] > 0)


def test_searches_rerank_the_code_index_candidates(conn, db_url, catalog: Catalog) -> None:
    create_index(db_url)
    recalls = []
    with open_session() as db:
        for query in _queries(catalog, 20):
            result = Product.similar_to(query, session=db, k=10)
            assert result.strategy == "hnsw" and not result.exact
            ids, distances = catalog.truth(query)
            by_id = dict(zip(ids, distances, strict=True))
            found = [hit.product.id for hit in result]
            # Re-ranked by the exact distance: each hit's distance is numpy's, nearest first.
            assert [hit.distance for hit in result] == pytest.approx([by_id[i] for i in found], abs=TIE)
            assert [hit.distance for hit in result] == sorted(hit.distance for hit in result)
            recalls.append(np.mean([by_id[i] <= distances[9] + TIE for i in found]))
        plan_used = "\n".join(row[0] for row in db.connection().exec_driver_sql(
            "EXPLAIN SELECT id FROM products ORDER BY prodvec_binary_code(embedding)::bit(512) "
            "<~> prodvec_binary_code((SELECT embedding FROM products LIMIT 1))::bit(512) LIMIT 10").fetchall())
    assert np.mean(recalls) >= 0.95
    assert "products_embedding_bit_hnsw" in plan_used


def test_filtered_searches_stay_complete(conn, db_url, catalog: Catalog) -> None:
    create_index(db_url)
    query = _queries(catalog, 1)[0]
    with open_session() as db:
        # One category in ten: ~300 matches, few enough for the plan's exact pass.
        result = Product.similar_to(query, session=db, k=10, where=[Product.category == "c3"])
        ids, _ = catalog.truth(query, catalog.category == "c3")
        assert result.exact and [hit.product.id for hit in result] == list(ids[:10])
        # Nine categories in ten: the code index's iterative scan fills the list past the filter.
        result = Product.similar_to(query, session=db, k=10, where=[Product.category != "c3"])
        ids, distances = catalog.truth(query, catalog.category != "c3")
        assert result.strategy == "hnsw" and all(hit.product.category != "c3" for hit in result)
        found = {hit.product.id for hit in result}
        assert len(found & set(ids[distances <= distances[9] + TIE])) >= 9
        # More like this: the product itself is left out.
        sku = "Q00007"
        assert sku not in {hit.product.sku for hit in Product.similar_to(Sku(sku), session=db, k=10)}


def test_a_pass_that_cannot_fill_its_candidates_hands_over(conn, db_url, catalog: Catalog) -> None:
    create_index(db_url)
    with open_session() as db:
        where = compile_filter([Product.category == "c3"], db.get_bind().dialect)
        query = Query(_queries(catalog, 1)[0], where, 10, None)
        matches = int((catalog.category == "c3").sum())
        kind, settings = quantized.code_plan(10, matches, ROWS, filtered=True, few_matches=False,
                                             dimensions=DIMENSIONS)
        assert kind == "codes_filtered" and settings.code_dimensions == DIMENSIONS
        # More candidates asked than products match: no re-rank is trusted (similar.py then runs exact).
        assert execute.index(db, query, dataclasses.replace(settings, ef_search=matches + 1)) == []
        hits = execute.index(db, query, dataclasses.replace(settings, ef_search=matches))
    ids, _ = catalog.truth(query.vector, catalog.category == "c3")
    assert [hit.product.id for hit in hits] == list(ids[:10])  # all re-ranked: exact


def test_few_matches_give_the_scan_a_short_budget(conn, db_url, catalog: Catalog) -> None:
    """Few matches (an exact pass over them is cheap): the scan may visit the tuples that hold its
    candidates where matches lie as densely as on average, twice over, so a query far from them
    runs out and the exact pass answers it (at 100k rows: benchmarks/quantized.py, docs/scaling.md;
    this catalog is too small to run out). A query among them fills its list."""
    create_index(db_url)
    matches = int((catalog.category == "c3").sum())
    _, few = quantized.code_plan(10, matches, ROWS, filtered=True, few_matches=True, dimensions=DIMENSIONS)
    _, many = quantized.code_plan(10, matches, ROWS, filtered=True, few_matches=False, dimensions=DIMENSIONS)
    assert few.max_scan_tuples == int(2 * 100 * ROWS / matches) < ROWS and many.max_scan_tuples == ROWS + 1
    in_c3 = catalog.vectors[catalog.category == "c3"][0]
    with open_session() as db:
        where = compile_filter([Product.category == "c3"], db.get_bind().dialect)
        near = execute.index(db, Query(in_c3, where, 10, None), few)
    ids, _ = catalog.truth(in_c3, catalog.category == "c3")
    assert [hit.product.id for hit in near] == list(ids[:10])


def test_dropped_index_hands_back_to_the_halfvec_index(conn, db_url, catalog: Catalog, capsys) -> None:
    assert cli_main(["quantized-index", "create", "--json"]) == 0
    assert '"products": 3000' in capsys.readouterr().out
    assert cli_main(["quantized-index", "drop"]) == 0
    assert conn.execute("SELECT to_regclass('products_embedding_bit_hnsw'), "
                        "to_regprocedure('prodvec_binary_code(halfvec)')").fetchone() == (None, None)
    assert drop_index(db_url) is False
    plan.forget()
    query = _queries(catalog, 1)[0]
    with open_session() as db:
        result = Product.similar_to(query, session=db, k=10)
    ids, _ = catalog.truth(query)
    assert len({hit.product.id for hit in result} & set(ids[:10])) >= 9
    assert cli_main(["quantized-index", "create", "--m", "40", "--ef-construction", "64"]) == 2
    assert "pgvector's limits" in capsys.readouterr().err


def test_recall_measures_and_tunes_searches_through_the_code_index(conn, db_url, catalog: Catalog, capsys) -> None:
    create_index(db_url)
    assert cli_main(["recall", "--tune", "--target", "0.95", "--queries", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The code index answered every index pass the sample planned: its kinds were tuned, no halfvec one.
    assert {"codes_unfiltered", "codes_filtered"} <= set(report["kinds"])
    assert not {"unfiltered", "scan", "quick_look"} & set(report["kinds"])
    assert "LIMIT" in report["kinds"]["codes_unfiltered"]["sql"]
    plan.forget()
    recalls = []
    with open_session() as db:
        stored = {row["kind"]: row for row in store.stored(db)}
        assert stored["codes_unfiltered"]["target"] == 0.95
        for query in _queries(catalog, 20):
            result = Product.similar_to(query, session=db, k=10)
            ids, distances = catalog.truth(query)
            if result.strategy == "hnsw":  # an index answer carries its band's measured recall
                assert result.recall is not None and 0 < result.recall <= 1
            found = {hit.product.id for hit in result}
            recalls.append(len(found & set(ids[distances <= distances[9] + TIE])) / 10)
    assert np.mean(recalls) >= 0.95  # scored by numpy, not by the tuning's own pass
    # Rebuilt: the recall measured on the old graph is forgotten, searches say nothing measured.
    create_index(db_url)
    plan.forget()
    with open_session() as db:
        assert not {row["kind"] for row in store.stored(db)} & {"codes_unfiltered", "codes_filtered"}
        result = Product.similar_to(_queries(catalog, 1)[0], session=db, k=10)
        assert result.strategy == "hnsw" and result.recall is None


def test_recall_says_when_the_code_index_answered_nothing(conn, db_url, capsys) -> None:
    """30 products, fewer than a pass's 100 candidates: every code pass comes back short and
    the exact pass answers. The report says so, and advises no plain-SQL setting."""
    rng = np.random.default_rng(3)
    for i, vector in enumerate(_unit(rng.standard_normal((30, DIMENSIONS)))):
        conn.execute("INSERT INTO products (sku, category, embedding) VALUES (%s, 'c', %s)",
                      (f"S{i:02d}", HalfVector(vector)))
    conn.execute("ANALYZE products")
    create_index(db_url)
    plan.forget()
    assert cli_main(["recall", "--tune", "--target", "0.95", "--queries", "10"]) == 0
    out = capsys.readouterr().out
    assert "codes_unfiltered: the index answered none of its" in out
    assert "codes_unfiltered: SET" not in out
    assert "ef_search is how many candidates are re-ranked" in out
    assert cli_main(["recall", "--show"]) == 0  # stored efforts in words, not blanks
    shown = capsys.readouterr().out
    assert "ef_search is how many candidates are re-ranked" in shown and ("exact" in shown or "as planned" in shown)


def test_the_code_index_can_replace_the_halfvec_index(conn, db_url, catalog: Catalog, capsys) -> None:
    def exists(index: str) -> bool:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (index,)).fetchone()[0]

    assert cli_main(["quantized-index", "create", "--replace-halfvec", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["halfvec_index"].startswith("dropped: the code index replaces it (")
    assert not exists("products_embedding_hnsw") and exists("products_embedding_bit_hnsw")
    plan.forget()
    recalls = []
    with open_session() as db:  # searches go on through the codes
        for query in _queries(catalog, 10):
            result = Product.similar_to(query, session=db, k=10)
            ids, distances = catalog.truth(query)
            assert result.strategy == "hnsw"
            found = {hit.product.id for hit in result}
            recalls.append(len(found & set(ids[distances <= distances[9] + TIE])) / 10)
    assert np.mean(recalls) >= 0.95
    # A bulk backfill rebuilds the coarse column's index, not the replaced one.
    with hnsw_index_dropped(db_url):
        assert not exists("products_embedding_coarse_hnsw")
    assert exists("products_embedding_coarse_hnsw") and not exists("products_embedding_hnsw")
    assert "replaced by the binary-code index" in _fails(capsys, "index-check")
    # Dropping the code index builds the halfvec index again.
    assert cli_main(["quantized-index", "drop"]) == 0
    assert exists("products_embedding_hnsw") and not exists("products_embedding_bit_hnsw")
