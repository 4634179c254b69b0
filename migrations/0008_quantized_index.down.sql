-- Undo 0008_quantized_index.sql: the binary-code index, its code function and the functions
-- that manage them.
SELECT prodvec_drop_quantized_index();
DROP FUNCTION IF EXISTS prodvec_drop_quantized_index();
DROP FUNCTION IF EXISTS prodvec_create_quantized_index(boolean, integer, integer);
