-- Undo 0006_recall_settings.sql: searches fall back to the planner's own effort.
DROP TABLE prodvec_recall_settings;
