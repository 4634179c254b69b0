-- Statements of the HTTP service (prodvec/service/); searches go through prodvec.search.

-- name: product
-- One product with its open embedding job, if any (GET /v1/products/{sku}, /images/{sku}).
SELECT p.sku, p.title, p.category, p.price, p.stock, p.image, p.embedding IS NOT NULL AS embedded,
       p.embedding_model, p.embedded_at, p.updated_at, j.state AS queue, j.last_error
FROM products AS p
LEFT JOIN embedding_jobs AS j ON j.product_id = p.id AND j.model_id = (SELECT id FROM active_model)
WHERE p.sku = %(sku)s;

-- name: categories
-- The page's category filter: every category with its product count, embedded ones apart.
SELECT category AS name, count(*) AS products, count(*) FILTER (WHERE embedding IS NOT NULL) AS embedded
FROM products
GROUP BY category
ORDER BY category;

-- name: delete_product
-- Its embedding job goes with it (ON DELETE CASCADE).
DELETE FROM products WHERE sku = %(sku)s RETURNING id;
