-- Undo 0007_active_model.sql: the model is PRODVEC_MODEL's again, per process.
DROP FUNCTION IF EXISTS prodvec_set_active_model(text, integer, text, boolean);
DROP TABLE IF EXISTS active_model;
