"""Catalog import against a real PostgreSQL: formats, upsert semantics, bad rows, the queue."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from prodvec.catalog import CatalogRow, import_catalog, importer, parse_row
from prodvec.errors import CatalogError, CatalogRowError, ConfigError

HEADER = "sku,title,category,price,stock,image\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def products(conn: psycopg.Connection) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT sku, title, category, price, stock, image, updated_at FROM products"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def jobs(conn: psycopg.Connection) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT p.sku, j.image, j.state, j.attempts, j.enqueued_at "
        "FROM embedding_jobs j JOIN products p ON p.id = j.product_id"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def bad_lines(report) -> dict[int, str]:
    return {error.line: error.reason for error in report.bad_rows}


def test_csv_import_types_rows_and_queues_products_with_images(conn, tmp_path):
    catalog = write(tmp_path / "catalog.csv", HEADER + (
        "A-1,Red shirt,shirt,19.99,3,https://cdn.example.com/a1.jpg\n"
        "A-2, Blue jeans ,trouser,45,0,\n"
        "A-3,Tote,bag,5.5,12,file:///srv/photos/a3.jpg\n"
    ))
    report = import_catalog(conn, catalog, progress=True)
    assert (report.inserted, report.updated, report.unchanged, report.bad_rows) == (3, 0, 0, [])
    assert report.seconds > 0
    stored = products(conn)
    assert stored["A-1"][:5] == ("Red shirt", "shirt", Decimal("19.99"), 3, "https://cdn.example.com/a1.jpg")
    assert stored["A-2"][:5] == ("Blue jeans", "trouser", Decimal("45.00"), 0, None)
    assert stored["A-3"][4] == "file:///srv/photos/a3.jpg"
    queued = jobs(conn)
    assert sorted(queued) == ["A-1", "A-3"]  # no image, nothing to embed
    assert queued["A-1"][:3] == ("https://cdn.example.com/a1.jpg", "pending", 0)


def test_jsonl_import_reads_numbers_exactly_and_ignores_extra_keys_when_told(conn, tmp_path):
    catalog = write(tmp_path / "catalog.ndjson", (
        '{"sku": "J-1", "title": "Tee", "price": 19.99, "stock": 3, "colour": "red", '
        '"image": "https://cdn.example.com/j1.jpg"}\n'
        "\n"
        '{"sku": 1002, "price": "5", "stok": "7", "stock": "7", "image": null}\n'
    ))
    with pytest.raises(CatalogRowError) as error:
        import_catalog(conn, catalog)
    assert error.value.line == 1 and "unknown key 'colour'" in error.value.reason
    assert products(conn) == {}
    write(catalog, catalog.read_text().replace(', "colour": "red"', ""))
    with pytest.raises(CatalogRowError) as error:  # found on line 3 before anything is written
        import_catalog(conn, catalog)
    assert error.value.line == 3 and "unknown key 'stok' (did you mean 'stock'?)" in error.value.reason
    assert products(conn) == {}
    report = import_catalog(conn, catalog, ignore_unknown_columns=True)
    assert (report.inserted, report.bad_rows) == (2, [])
    stored = products(conn)
    assert stored["J-1"][:5] == ("Tee", "", Decimal("19.99"), 3, "https://cdn.example.com/j1.jpg")
    assert stored["1002"][2:5] == (Decimal("5.00"), 7, None)


def test_format_can_be_forced_and_unknown_suffix_is_refused(conn, tmp_path):
    catalog = write(tmp_path / "export.txt", HEADER + "T-1,Tee,,1,1,\n")
    with pytest.raises(ConfigError, match="csv"):
        import_catalog(conn, catalog)
    assert import_catalog(conn, catalog, format="csv").inserted == 1


def test_reimport_unchanged_writes_and_queues_nothing(conn, tmp_path):
    catalog = write(tmp_path / "catalog.csv", HEADER + "".join(
        f"U-{i},Item {i},cat,{i}.50,{i},https://cdn.example.com/{i}.jpg\n" for i in range(20)
    ))
    import_catalog(conn, catalog)
    before_products, before_jobs = products(conn), jobs(conn)
    xmax = "SELECT sku, xmax::text FROM products ORDER BY sku"
    before_xmax = conn.execute(xmax).fetchall()
    report = import_catalog(conn, catalog)
    assert (report.inserted, report.updated, report.unchanged) == (0, 0, 20)
    assert products(conn) == before_products  # updated_at included
    assert jobs(conn) == before_jobs  # enqueued_at included
    # Not even row locks (a lock sets xmax): workers' write-backs never wait on a re-import.
    assert conn.execute(xmax).fetchall() == before_xmax


def test_reimport_updates_changed_rows_and_requeues_only_new_images(conn, tmp_path):
    rows = {
        "C-price": "C-price,Shirt,shirt,10.00,1,https://cdn.example.com/price.jpg",
        "C-stock": "C-stock,Shirt,shirt,10.00,1,https://cdn.example.com/stock.jpg",
        "C-image": "C-image,Shirt,shirt,10.00,1,https://cdn.example.com/old.jpg",
        "C-same": "C-same,Shirt,shirt,10.00,1,https://cdn.example.com/same.jpg",
    }
    catalog = write(tmp_path / "catalog.csv", HEADER + "\n".join(rows.values()) + "\n")
    import_catalog(conn, catalog)
    # As the worker leaves them: C-price embedded (job done and gone), C-image failed for good.
    conn.execute(
        "UPDATE products SET embedding = array_fill(0.1, ARRAY[512])::real[]::halfvec "
        "WHERE sku = 'C-price'"
    )
    conn.execute("DELETE FROM embedding_jobs j USING products p WHERE p.id = j.product_id AND p.sku = 'C-price'")
    conn.execute(
        "UPDATE embedding_jobs j SET state = 'failed', attempts = 5, last_error = '404' "
        "FROM products p WHERE p.id = j.product_id AND p.sku = 'C-image'"
    )
    before_products, before_jobs = products(conn), jobs(conn)

    rows["C-price"] = rows["C-price"].replace("10.00", "12.00")
    rows["C-stock"] = rows["C-stock"].replace(",1,", ",0,")
    rows["C-image"] = rows["C-image"].replace("old.jpg", "new.jpg")
    rows["C-new"] = "C-new,Dress,dress,30,2,https://cdn.example.com/new-dress.jpg"
    write(catalog, HEADER + "\n".join(rows.values()) + "\n")
    report = import_catalog(conn, catalog)

    assert (report.inserted, report.updated, report.unchanged) == (1, 3, 1)
    after_products, after_jobs = products(conn), jobs(conn)
    assert after_products["C-price"][2] == Decimal("12.00")
    assert after_products["C-stock"][3] == 0
    for sku in ("C-price", "C-stock", "C-image"):
        assert after_products[sku][5] > before_products[sku][5]  # updated_at moved
    assert after_products["C-same"] == before_products["C-same"]
    # Price and stock changes queue nothing: C-price stays embedded, C-stock's job is untouched.
    assert "C-price" not in after_jobs
    assert after_jobs["C-stock"] == before_jobs["C-stock"]
    # The new image resets the failed job to a fresh pending one for the new picture.
    assert after_jobs["C-image"][:3] == ("https://cdn.example.com/new.jpg", "pending", 0)
    assert after_jobs["C-image"][3] > before_jobs["C-image"][3]
    assert after_jobs["C-new"][1] == "pending"


def test_bad_csv_rows_are_reported_by_line_and_the_rest_imported(conn, tmp_path):
    catalog = write(tmp_path / "catalog.csv", HEADER + (
        "B-1,Good,shirt,19.99,3,https://cdn.example.com/b1.jpg\n"  # line 2
        ",No sku,shirt,5.00,1,\n"  # 3
        "B-3,Negative,shirt,-1,1,\n"  # 4
        "B-4,Bad stock,shirt,5,x,\n"  # 5
        'B-5,"Two-line\ntitle",shirt,5,2.5,\n'  # 6-7
        "B-6,Bad scheme,shirt,5,1,ftp://example.com/b6.jpg\n"  # 8
        "\n"  # 9
        "B-7,Too,many,fields,5,1,b7.jpg\n"  # 10
        "B-8,Fine,shirt,7.50,0,\n"  # 11
        "B-9,Cents,shirt,7.505,0,\n"  # 12
    ))
    report = import_catalog(conn, catalog)
    assert report.inserted == 2
    assert sorted(products(conn)) == ["B-1", "B-8"]
    reasons = bad_lines(report)
    assert sorted(reasons) == [3, 4, 5, 6, 8, 10, 12]
    assert "sku is missing" in reasons[3]
    assert "price must not be negative" in reasons[4]
    assert "stock must be a number" in reasons[5]
    assert "stock must be a whole number" in reasons[6]
    assert "unsupported scheme 'ftp'" in reasons[8]
    assert "7 fields" in reasons[10]
    assert "at most 2 decimals" in reasons[12]


def test_bad_jsonl_lines_are_reported_by_line(conn, tmp_path):
    catalog = write(tmp_path / "catalog.jsonl", (
        '{"sku": "J-1", "price": 1}\n'  # 1
        '{"sku": "J-2", "price": 2\n'  # 2: cut off
        "\n"  # 3
        '["J-3", 3]\n'  # 4
        '{"sku": "J-4", "price": NaN}\n'  # 5
        '{"sku": "J-5", "price": 5, "stock": -2}\n'  # 6
        '{"sku": "J-6", "price": 6, "image": "s3://bucket/j6.jpg"}\n'  # 7
        '{"sku": "J-7", "price": 7}\n'  # 8
    ))
    report = import_catalog(conn, catalog)
    assert sorted(products(conn)) == ["J-1", "J-7"]
    reasons = bad_lines(report)
    assert sorted(reasons) == [2, 4, 5, 6, 7]
    assert reasons[2].startswith("invalid JSON")
    assert "JSON object" in reasons[4]
    assert "finite" in reasons[5]
    assert "stock must not be negative" in reasons[6]
    assert "'s3'" in reasons[7]


def test_relative_image_paths_are_stored_absolute(conn, tmp_path, photo_dir):
    catalog = write(tmp_path / "catalog.csv", HEADER + (
        "P-1,Red,,1,1,photos/red.jpg\n"
        "P-2,Blue,,1,1,./photos/../photos/blue_stripes.png\n"
        "P-3,Abs,,1,1,/srv/images/p3.jpg\n"
    ))
    import_catalog(conn, catalog)
    stored = {sku: row[4] for sku, row in products(conn).items()}
    assert stored["P-1"] == str(photo_dir / "red.jpg")
    assert stored["P-2"] == str(photo_dir / "blue_stripes.png")
    assert stored["P-3"] == "/srv/images/p3.jpg"
    assert jobs(conn)["P-1"][0] == str(photo_dir / "red.jpg")


def test_repeated_sku_last_row_wins_across_chunks(conn, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
    catalog = write(tmp_path / "catalog.csv", HEADER + (
        "D-1,First,,1,1,\n"  # 2: replaced by line 6
        "D-2,Only,,2,1,\n"  # 3
        "D-1,Second,,1,1,\n"  # 4: replaced by line 6
        "D-3,Only,,3,1,\n"  # 5
        "D-1,Third,,1,1,\n"  # 6
    ))
    report = import_catalog(conn, catalog)
    assert (report.inserted, report.updated, report.unchanged) == (3, 0, 0)
    assert products(conn)["D-1"][0] == "Third"
    assert bad_lines(report) == {
        2: "sku 'D-1' appears again on line 6, which replaces this row",
        4: "sku 'D-1' appears again on line 6, which replaces this row",
    }


def test_import_is_one_transaction(conn, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
    catalog = write(tmp_path / "catalog.csv", HEADER + "".join(f"T-{i},,,1,1,\n" for i in range(5)))
    write_chunk = importer._write_chunk
    calls = []

    def failing_second_chunk(connection, chunk, **options):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise psycopg.OperationalError("connection lost")
        return write_chunk(connection, chunk, **options)

    monkeypatch.setattr(importer, "_write_chunk", failing_second_chunk)
    with pytest.raises(psycopg.OperationalError):
        import_catalog(conn, catalog)
    assert products(conn) == {}
    monkeypatch.setattr(importer, "_write_chunk", write_chunk)
    assert import_catalog(conn, catalog).inserted == 5  # the staging table went with the rollback


def test_csv_without_sku_column_is_refused(conn, tmp_path):
    catalog = write(tmp_path / "catalog.csv", "title,price\nTee,1\n")
    with pytest.raises(CatalogRowError) as error:
        import_catalog(conn, catalog)
    assert error.value.line == 1 and "no 'sku' column" in error.value.reason


def test_csv_header_needs_price_and_known_columns(conn, tmp_path):
    no_price = write(tmp_path / "no_price.csv", "sku,title,stock\nA,Tee,1\n")
    with pytest.raises(CatalogRowError, match="no 'price' column"):
        import_catalog(conn, no_price)
    misspelt = write(tmp_path / "misspelt.csv", "sku,title,price,stok,colour\nA,Tee,1,5,red\nB,Cap,2,3,blue\n")
    with pytest.raises(CatalogRowError) as error:
        import_catalog(conn, misspelt)
    assert error.value.line == 1
    assert "unknown column 'stok' (did you mean 'stock'?)" in error.value.reason
    assert "--ignore-unknown-columns" in error.value.reason
    assert products(conn) == {}
    # Told to, the unknown columns are left out: stock is then missing, so 0.
    report = import_catalog(conn, misspelt, ignore_unknown_columns=True)
    assert report.inserted == 2 and {sku: row[3] for sku, row in products(conn).items()} == {"A": 0, "B": 0}


def test_missing_and_empty_files_say_so(conn, tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        import_catalog(conn, tmp_path / "nope.csv")
    with pytest.raises(CatalogError, match="is a folder"):
        import_catalog(conn, tmp_path)
    with pytest.raises(CatalogError, match="is empty"):
        import_catalog(conn, write(tmp_path / "empty.csv", ""))
    with pytest.raises(CatalogError, match="is empty"):
        import_catalog(conn, write(tmp_path / "empty.jsonl", ""))
    with pytest.raises(CatalogError, match="no product rows"):
        import_catalog(conn, write(tmp_path / "header.csv", HEADER + "\n"))
    with pytest.raises(CatalogError, match="no product rows"):
        import_catalog(conn, write(tmp_path / "blank.jsonl", "\n\n"))


def test_strict_fails_the_whole_import_on_any_bad_row(conn, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)  # the bad row comes after chunks were written
    rows = "".join(f"S-{i},,,{i},1,\n" for i in range(5)) + "S-bad,,,-1,1,\nS-9,,,9,1,\n"
    catalog = write(tmp_path / "catalog.csv", HEADER + rows)
    with pytest.raises(CatalogError) as error:
        import_catalog(conn, catalog, strict=True)
    assert "1 bad row(s), so nothing was imported" in str(error.value)
    assert "line 7: price must not be negative" in str(error.value)
    assert products(conn) == {}
    report = import_catalog(conn, catalog)
    assert report.inserted == 6 and bad_lines(report).keys() == {7}


def _stock_by_sku(conn: psycopg.Connection) -> dict[str, int]:
    return {sku: row[3] for sku, row in products(conn).items()}


def test_sync_deletes_or_deactivates_products_not_in_the_file(conn, tmp_path):
    catalog = write(tmp_path / "catalog.csv", HEADER + "".join(f"Y-{i},,,{i},5,\n" for i in range(10)))
    import_catalog(conn, catalog)
    # The feed: Y-0..Y-7, a bad row for Y-8 (its sku is readable: kept), a new Y-new; Y-9 is gone.
    feed = write(tmp_path / "feed.csv", HEADER + "".join(f"Y-{i},,,{i},5,\n" for i in range(8))
                 + "Y-8,,,-3,5,\nY-new,,,1,1,\n")
    report = import_catalog(conn, feed, sync="deactivate")
    assert (report.inserted, report.deactivated, report.removed) == (1, 1, 0)
    expected = {f"Y-{i}": 5 for i in range(9)} | {"Y-9": 0, "Y-new": 1}
    assert _stock_by_sku(conn) == expected
    assert import_catalog(conn, feed, sync="deactivate").deactivated == 0  # already at stock 0

    report = import_catalog(conn, feed, sync="delete")
    assert (report.inserted, report.removed) == (0, 1)
    del expected["Y-9"]
    assert _stock_by_sku(conn) == expected


def test_sync_over_its_bound_writes_nothing(conn, tmp_path):
    catalog = write(tmp_path / "catalog.csv", HEADER + "".join(f"Z-{i},,,{i},5,\n" for i in range(10)))
    import_catalog(conn, catalog)
    before = products(conn)
    # A feed cut short: 4 of 10 products missing (40%), and a price change that must not land either.
    short = write(tmp_path / "short.csv", HEADER + "Z-0,,,100,5,\n" + "".join(f"Z-{i},,,{i},5,\n" for i in range(1, 6)))
    for mode in ("delete", "deactivate"):
        with pytest.raises(CatalogError) as error:
            import_catalog(conn, short, sync=mode)
        assert "4 of the 10 products (40%)" in str(error.value) and "--max-remove-share 0.4" in str(error.value)
        assert products(conn) == before
    report = import_catalog(conn, short, sync="delete", max_remove_share=0.4)
    assert (report.updated, report.removed) == (1, 4)
    assert sorted(products(conn)) == [f"Z-{i}" for i in range(6)]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"sku": " S ", "price": "12.50", "stock": "3"}, CatalogRow("S", "", "", Decimal("12.50"), 3, None)),
        ({"sku": "S", "price": Decimal("12.5"), "stock": 3}, CatalogRow("S", "", "", Decimal("12.5"), 3, None)),
        ({"sku": "S", "price": "12.500", "stock": "3.0"}, CatalogRow("S", "", "", Decimal("12.500"), 3, None)),
        ({"sku": "S", "price": "0", "stock": ""}, CatalogRow("S", "", "", Decimal("0"), 0, None)),
        ({"sku": "S", "price": "1", "image": "HTTPS://cdn.example.com/x.jpg"},
         CatalogRow("S", "", "", Decimal("1"), 0, "HTTPS://cdn.example.com/x.jpg")),
    ],
)
def test_valid_values(record, expected):
    assert parse_row(record, 7, "/catalogs") == expected


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"sku": "S"}, "price is missing"),
        ({"sku": "S", "price": "inf"}, "finite"),
        ({"sku": "S", "price": "1e11"}, "at most 9999999999.99"),
        ({"sku": "S", "price": "$5"}, "price must be a number"),
        ({"sku": "S", "price": True}, "price must be a number"),
        ({"sku": "S", "price": "1", "stock": "3.5"}, "whole number"),
        ({"sku": "S", "price": "1", "stock": str(2**31)}, "at most"),
        ({"sku": "S", "price": "1", "title": ["a"]}, "title must be text"),
        ({"sku": "S\x00", "price": "1"}, "NUL"),
        ({"sku": "S\udcff", "price": "1"}, "UTF-8"),
        ({"sku": "S" * 501, "price": "1"}, "longer than 500"),
        ({"sku": "S", "price": "1", "category": "é" * 251}, "category is longer than 250"),
        ({"sku": "S", "price": "1", "image": "https:/nohost.jpg"}, "no host"),
        ({"sku": "S", "price": "1", "image": "data:image/png;base64,AAAA"}, "'data'"),
    ],
)
def test_invalid_values(record, reason):
    with pytest.raises(CatalogRowError) as error:
        parse_row(record, 7, "/catalogs")
    assert error.value.line == 7
    assert reason in error.value.reason


def test_a_quote_left_open_is_named_with_its_line(conn, tmp_path):
    """A quote not closed on its line takes the next lines into its field: the reason says so,
    not the unquoted comma a wrong field count usually means."""
    never = write(tmp_path / "never.csv", HEADER + 'Q-1,Tee,,1,1,\nQ-2,"Big cushion,,2,1,\nQ-3,Rug,,3,1,\n')
    report = import_catalog(conn, never)
    assert sorted(products(conn)) == ["Q-1"]
    assert "a quote opened on line 3 is never closed" in bad_lines(report)[3]
    later = write(tmp_path / "later.csv", HEADER + 'L-1,"Big cushion,,2,1,\nL-2,Rug,,"3,1,\nL-3,Mat,,4,1,\n')
    report = import_catalog(conn, later)
    assert "a quote opened on line 2 is only closed on line 3" in bad_lines(report)[2]
    assert "L-3" in products(conn)
    shifted = write(tmp_path / "shifted.csv", HEADER + "S-1,Tee, red,shirt,1,1,\nS-2,Cap,,1\n")
    reasons = bad_lines(import_catalog(conn, shifted))
    assert "(an unquoted comma?)" in reasons[2] and "(a missing field or comma?)" in reasons[3]


@pytest.mark.parametrize(("encoding", "looks"), [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"),
                                                 ("utf-32", "UTF-32")])
def test_a_file_in_another_unicode_encoding_says_to_save_it_as_utf8(conn, tmp_path, encoding, looks):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(HEADER + "U-1,Tee,,1,1,\n", encoding=encoding)
    with pytest.raises(CatalogError, match=rf"is not UTF-8 \(it looks like {looks}\): save it as UTF-8"):
        import_catalog(conn, catalog)
    assert products(conn) == {}


def test_a_latin1_header_is_refused_but_a_latin1_row_is_only_that_row(conn, tmp_path):
    header = tmp_path / "header.csv"
    header.write_bytes("sku,title,price,catégorie\nA,Tee,1,x\n".encode("latin-1"))
    with pytest.raises(CatalogError, match=r"is not UTF-8 .*Latin-1.*: save it as UTF-8"):
        import_catalog(conn, header)
    row = tmp_path / "row.csv"
    row.write_bytes(HEADER.encode() + "A,Tee,,1,1,\nB,Caf\xe9,,2,1,\n".encode("latin-1"))
    report = import_catalog(conn, row)  # the header reads: the row checks judge each row
    assert report.inserted == 1 and "title is not valid UTF-8" in bad_lines(report)[3]
    binary = tmp_path / "sheet.csv"
    binary.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    with pytest.raises(CatalogError, match="is not text"):
        import_catalog(conn, binary)
