-- The last log lines an agent reported for a pipeline (a JSON array of strings, bounded by the
-- api), so an operator can see why it crashed.
ALTER TABLE node_pipeline_status ADD COLUMN recent_logs jsonb;
