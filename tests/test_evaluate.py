"""`prodvec eval`: metrics on a hand-computable case, then end to end against the embedded database."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from conftest import record_catalog_views
from PIL import Image

from prodvec.cli import evaluate as evaluate_cli
from prodvec.encode import robust
from prodvec.encode.robust import encode_queries
from prodvec.errors import ConfigError, ModelMismatch, QueryError
from prodvec.evaluate import metrics, read_queries
from prodvec.evaluate.perturb import PERTURBATIONS, perturb
from prodvec.images import views
from prodvec.images.views import VIEW_NAMES
from prodvec.worker.pipeline import Worker


def test_metrics_by_hand() -> None:
    # Three queries; their products come 1st, 3rd and nowhere in the top 4.
    ranked = [["A", "B", "C", "D"], ["D", "A", "B", "C"], ["C", "D", "A", "E"]]
    ranks = [metrics.rank_of(target, hits) for target, hits in zip("ABB", ranked, strict=True)]
    assert ranks == [1, 3, None]
    assert metrics.recall_at(ranks, 1) == pytest.approx(1 / 3)
    assert metrics.recall_at(ranks, 2) == pytest.approx(1 / 3)
    assert metrics.recall_at(ranks, 3) == pytest.approx(2 / 3)
    assert metrics.mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 3 + 0) / 3)
    relevant = [[True, False, True, True], [False, False, False, False], [True, True]]
    # (2/3 + 0/3 + 2/2) / 3: the short list is judged on the 2 results it holds.
    assert metrics.precision_at(relevant, 3) == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert metrics.precision_at(relevant, 1) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        metrics.recall_at([], 1)


def test_read_queries_resolves_paths_and_checks_columns(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text("image,sku,category\nphotos/a.jpg,A,\nhttps://x.test/b.jpg,,shoes\n")
    first, second = read_queries(tmp_path / "q.csv")
    assert (first.line, first.image, first.sku, first.category) == (2, str(tmp_path / "photos" / "a.jpg"), "A", None)
    assert (second.image, second.sku, second.category) == ("https://x.test/b.jpg", None, "shoes")
    (tmp_path / "bad.csv").write_text("image,title\na.jpg,x\n")
    with pytest.raises(ConfigError, match="'sku' and/or 'category'"):
        read_queries(tmp_path / "bad.csv")
    (tmp_path / "unlabelled.csv").write_text("image,sku\na.jpg,\n")
    with pytest.raises(ConfigError, match=":2: neither"):
        read_queries(tmp_path / "unlabelled.csv")


def test_perturbations_are_deterministic_and_change_the_photo(photo_dir: Path) -> None:
    with Image.open(photo_dir / "red.jpg") as opened:
        photo = opened.convert("RGB")
    for name in PERTURBATIONS:
        once, again = perturb(photo, name, seed=3), perturb(photo, name, seed=3)
        assert once.mode == "RGB" and np.array_equal(np.asarray(once), np.asarray(again)), name
        assert once.size != photo.size or not np.array_equal(np.asarray(once), np.asarray(photo)), name
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(photo, "fog", seed=0)


def _eval(*argv: str) -> int:
    """`prodvec eval ARGV` through its own parser and handler (independent of main's wiring)."""
    parser = argparse.ArgumentParser()
    evaluate_cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.handler(args)


def _catalog(conn: psycopg.Connection, db_url: str, photo_dir: Path, encoder,
             policy: views.ViewPolicy = views.SINGLE_VIEW) -> list[Path]:
    """Every photo as a product (sku = file stem, category = colour), embedded by the worker
    under the view ``policy``."""
    photos = sorted(photo_dir.iterdir())
    for photo in photos:
        conn.execute(
            "INSERT INTO products (sku, category, image) VALUES (%s, %s, %s)",
            (photo.stem, photo.stem.split("_")[0], str(photo)),
        )
    stats = Worker(db_url, encoder, policy=policy).run(once=True)
    assert stats.embedded == len(photos)
    return photos


def test_eval_end_to_end(conn, db_url: str, photo_dir: Path, test_encoder, capsys) -> None:
    photos = _catalog(conn, db_url, photo_dir, test_encoder)
    # Random weights, so only what holds for any encoder: a catalog photo finds itself first
    # (identical pixels, identical vector). Paths are relative to the CSV's folder.
    lines = ["image,sku,category"] + [f"photos/{p.name},{p.stem},{p.stem.split('_')[0]}" for p in photos]
    queries = photo_dir.parent / "queries.csv"
    queries.write_text("\n".join(lines) + "\n")

    assert _eval(str(queries), "-k", "2", "--no-robust", "--json") == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["n"] == len(photos) and scores["model"] == test_encoder.spec and scores["robust"] is False
    assert scores["recall@1"] == scores["recall@5"] == scores["recall@10"] == scores["mrr"] == 1.0
    # Each colour has 2 products (square, stripes): the top 2 hold the query photo itself, so
    # precision@2 is at least 1/2; at most 1.
    assert 0.5 <= scores["precision@2"] <= 1.0
    assert set(scores) >= {"recall@1", "recall@2", "recall@5", "recall@10", "mrr", "precision@2", "k"}

    # Robust views (the default): the photo itself still comes first, its extra views pay a penalty.
    assert _eval(str(queries), "--json") == 0
    robust = json.loads(capsys.readouterr().out)
    assert robust["robust"] is True and robust["recall@1"] == robust["mrr"] == 1.0

    # Mixed labels: each metric counts only the rows that carry its label.
    lines = ["image,sku,category"] + [
        f"photos/{p.name},{p.stem}," if i % 2 else f"photos/{p.name},,{p.stem.split('_')[0]}"
        for i, p in enumerate(photos)
    ]
    queries.write_text("\n".join(lines) + "\n")
    assert _eval(str(queries)) == 0
    table = capsys.readouterr().out
    assert f"{len(photos)} queries" in table and "recall@1" in table and "precision@10" in table
    assert _eval(str(queries), "--json") == 0
    mixed = json.loads(capsys.readouterr().out)
    assert (mixed["n"], mixed["n_sku"], mixed["n_category"], mixed["recall@1"]) == (8, 4, 4, 1.0)


def test_eval_end_to_end_multi_view(conn, db_url: str, photo_dir: Path, test_encoder, capsys,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """PRODVEC_CATALOG_VIEWS=multi: the worker stores both views, eval searches them; a catalog
    photo still finds itself first. Evaluating it under single is refused."""
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "multi")  # what `prodvec eval` searches under
    record_catalog_views(conn, "multi")
    photos = _catalog(conn, db_url, photo_dir, test_encoder, views.MULTI_VIEW)
    queries = photo_dir.parent / "queries.csv"
    queries.write_text("image,sku\n" + "".join(f"photos/{p.name},{p.stem}\n" for p in photos))
    for flag in ("--robust", "--no-robust"):
        assert _eval(str(queries), flag, "--json") == 0
        scores = json.loads(capsys.readouterr().out)
        assert scores["model"] == f"{test_encoder.spec}+multi-view"
        assert scores["recall@1"] == scores["mrr"] == 1.0
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "single")
    with pytest.raises(ModelMismatch, match="PRODVEC_CATALOG_VIEWS=single disagrees"):
        _eval(str(queries))


def test_eval_refuses_meaningless_runs(conn, db_url: str, photo_dir: Path, tmp_path: Path, test_encoder) -> None:
    _catalog(conn, db_url, photo_dir, test_encoder)
    queries = tmp_path / "queries.csv"
    queries.write_text(f"image,sku\n{photo_dir / 'red.jpg'},NOPE\n")
    with pytest.raises(QueryError, match="NOPE"):
        _eval(str(queries))
    conn.execute("UPDATE products SET embedding_model = 'open_clip:RN50:none'")
    queries.write_text(f"image,sku\n{photo_dir / 'red.jpg'},red\n")
    with pytest.raises(QueryError, match="embedded with open_clip:RN50:none"):
        _eval(str(queries))


def test_robust_query_views(photo_dir: Path, test_encoder) -> None:
    encoder = test_encoder
    images = [Image.open(p).convert("RGB") for p in sorted(photo_dir.iterdir())[:3]]
    plain = encode_queries(encoder, images, robust=False)
    assert plain.shape == (3, 1, encoder.dimensions)
    pixels = torch.stack([encoder.preprocess(image) for image in images])
    assert np.allclose(plain[:, 0], encoder.encode_images(pixels), atol=1e-5)
    robust_vectors = encode_queries(encoder, images, robust=True)
    assert robust_vectors.shape == (3, len(VIEW_NAMES), encoder.dimensions) and robust_vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(robust_vectors, axis=2), 1, atol=1e-4)
    # Multi-view: the query's and the product's views, in their names' order, as unit rows.
    policy = views.MULTI_VIEW
    queries = encode_queries(encoder, images, robust=True, policy=policy)
    products = robust.encode_products(encoder, images, policy=policy)
    assert queries.shape == (3, len(policy.query_view_names), encoder.dimensions)
    assert products.shape == (3, len(policy.catalog_view_names), encoder.dimensions)
    assert np.allclose(queries[:, 0], products[:, 0], atol=1e-5)  # both sides see the same fitted photo
    assert np.allclose(np.linalg.norm(products, axis=2), 1, atol=1e-4)


def test_fitted_view_shows_the_whole_photo() -> None:
    from torchvision import transforms

    photo = Image.new("RGB", (70, 35), (10, 20, 30))
    fitted = views.fitted_view(photo, keep=0.875)
    assert fitted.size == (80, 80)  # square, with margins the centre crop removes: 70 / 0.875
    crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    shown = np.asarray(crop(fitted))
    assert (shown[112, 3] < 100).all() and (shown[112, -4] < 100).all()  # the photo spans the crop's width
    assert (shown[2, 112] == 255).all()  # padded to a square with background above and below
    assert views.fitted_view(photo, keep=1.0).size == (70, 70)

    class Timm:  # timm's ImageNet preprocessing: resize to 256, keep the centre 224
        preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])

    assert robust.crop_keep(Timm()) == pytest.approx(0.875)


def test_view_fusion_by_hand() -> None:
    penalty = views.SINGLE_VIEW.query_view_penalty
    # Product "b" is only close in an extra view: it pays the penalty there.
    per_view = [[("a", 0.30), ("b", 0.50)], [("b", 0.10), ("c", 0.40)], [], [("a", 0.29)]]
    assert views.merge_views(per_view, 2) == [("b", pytest.approx(0.10 + penalty)), ("a", pytest.approx(0.30))]
    assert views.merge_views([[("a", 0.3)]], 5) == [("a", 0.3)]  # not robust: one view
    # The in-memory fusion gives the same distances: 1 query, 4 views, 2 catalog vectors.
    catalog = np.eye(2, dtype=np.float32)
    queries = np.array([[[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6]]], dtype=np.float32)
    assert np.allclose(views.fused_distances(queries, catalog), [[0.0, penalty]])
    assert np.allclose(views.fused_distances(queries[:, :1], catalog), [[0.0, 1.0]])


def test_multi_view_fusion_by_hand() -> None:
    policy = views.ViewPolicy(fit=True, turn_degrees=0, query_coarse=24, catalog_coarse=24,
                                     query_view_penalty=0.01, catalog_view_penalty=0.02)
    assert policy.query_view_names == ("fitted photo", "coarse 24 px")
    assert np.allclose(policy.penalties(2, 2), [[0.0, 0.02], [0.01, 0.03]])
    # Product 1 matches only coarse view × coarse view: it pays both penalties.
    queries = np.array([[[1, 0, 0], [0, 1, 0]]], dtype=np.float32)  # 1 query × 2 views
    products = np.array([[[1, 0, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0]]], dtype=np.float32)  # 2 products × 2 views
    assert np.allclose(views.fused_distances(queries, products, policy), [[0.0, 0.03]])
    # The same from per-search top-k lists, one per (query view, product view) pair, query-view-major.
    per_pair = [[(0, 0.0)], [(1, 1.0)], [(0, 1.0)], [(1, 0.0)]]
    merged = views.merge_views(per_pair, 2, policy.penalties(2, 2).ravel())
    assert merged == [(0, pytest.approx(0.0)), (1, pytest.approx(0.03))]
