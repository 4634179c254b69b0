-- Undo 0001_products.sql. Drops every product and embedding.
DROP TABLE IF EXISTS embedding_jobs;
DROP TABLE IF EXISTS products;
DROP FUNCTION IF EXISTS prodvec_enqueue_inserted();
DROP FUNCTION IF EXISTS prodvec_enqueue_image_changes();
DROP FUNCTION IF EXISTS prodvec_enqueue(bigint[], text[]);
DROP FUNCTION IF EXISTS prodvec_touch_updated_at();
DROP FUNCTION IF EXISTS prodvec_set_embedding_dimensions(integer, boolean);
