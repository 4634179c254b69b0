-- The catalog importer's statements (prodvec/catalog/importer.py). Column order everywhere is
-- CatalogRow's: sku, title, category, price, stock, image.

-- name: create_staging
CREATE TEMP TABLE prodvec_import_staging (
    sku text, title text, category text, price numeric(12, 2), stock integer, image text
)

-- name: truncate_staging
TRUNCATE prodvec_import_staging

-- name: copy_staging
COPY prodvec_import_staging (sku, title, category, price, stock, image) FROM STDIN (FORMAT BINARY)

-- name: drop_staging
-- Dropped by hand rather than ON COMMIT: the caller's transaction may outlive the import.
DROP TABLE prodvec_import_staging

-- name: upsert
-- Unchanged rows are filtered out before the INSERT: ON CONFLICT DO UPDATE would lock them
-- (and log the lock) even when its WHERE skips the update, so a re-import of a big unchanged
-- catalog would hold every product locked, stalling the worker's write-backs until commit.
-- The WHERE after ON CONFLICT still guards against a concurrent change to the same values.
-- xmax = 0 on a returned row means it was inserted; an updated row carries this transaction's
-- xmax (its row lock). PostgreSQL 18's RETURNING old.* would say it directly, but
-- DATABASE_URL may point at an older server.
WITH written AS (
    INSERT INTO products AS p (sku, title, category, price, stock, image)
    SELECT sku, title, category, price, stock, image FROM prodvec_import_staging s
    WHERE NOT EXISTS (
        SELECT FROM products cur
        WHERE cur.sku = s.sku
          AND (cur.title, cur.category, cur.price, cur.stock, cur.image)
              IS NOT DISTINCT FROM (s.title, s.category, s.price, s.stock, s.image))
    ON CONFLICT (sku) DO UPDATE
        SET title = EXCLUDED.title, category = EXCLUDED.category, price = EXCLUDED.price,
            stock = EXCLUDED.stock, image = EXCLUDED.image
        WHERE (p.title, p.category, p.price, p.stock, p.image)
              IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.category, EXCLUDED.price, EXCLUDED.stock, EXCLUDED.image)
    RETURNING xmax = 0 AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written

-- name: create_sync_skus
-- A sync's record of every sku in the file (valid rows and bad rows whose sku could be read):
-- the products not in it are the ones the feed dropped.
CREATE TEMP TABLE prodvec_import_skus (sku text PRIMARY KEY)

-- name: remember_skus
INSERT INTO prodvec_import_skus SELECT sku FROM prodvec_import_staging ON CONFLICT DO NOTHING

-- name: remember_bad_skus
INSERT INTO prodvec_import_skus SELECT unnest(%(skus)s::text[]) ON CONFLICT DO NOTHING

-- name: sync_missing
-- (products not in the file, all products): the safety bound compares the two.
SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT FROM prodvec_import_skus s WHERE s.sku = p.sku)), count(*)
FROM products AS p

-- name: sync_delete
-- Their queue jobs go with them (ON DELETE CASCADE).
DELETE FROM products AS p WHERE NOT EXISTS (SELECT FROM prodvec_import_skus s WHERE s.sku = p.sku)

-- name: sync_deactivate
-- Kept, vectors and all, but out of stock: searches with an in-stock filter skip them.
UPDATE products AS p SET stock = 0
WHERE p.stock <> 0 AND NOT EXISTS (SELECT FROM prodvec_import_skus s WHERE s.sku = p.sku)

-- name: drop_sync_skus
DROP TABLE prodvec_import_skus

-- name: category_exists
-- A category filter (`prodvec search --category`, the API's): a category no product has cannot
-- match; both say so (prodvec/catalog/categories.py).
SELECT EXISTS (SELECT FROM products WHERE category = %(category)s)

-- name: categories
SELECT DISTINCT category FROM products WHERE category <> '' ORDER BY category
