-- What current agents report beyond the first protocol: the latest host metrics and agent
-- health, the user the agent runs as; pipelines may report CRASH_LOOP or a status this
-- server does not know yet (kept as given, bounded). Log lines live in Redis rings now; the
-- column `recent_logs` is no longer written but stays, so an api of the previous release still
-- running beside this one during a rolling upgrade keeps working.
ALTER TABLE nodes
    ADD COLUMN host_metrics jsonb,
    ADD COLUMN agent_health jsonb,
    ADD COLUMN running_as text;

ALTER TABLE node_pipeline_status DROP CONSTRAINT node_pipeline_status_status_check;
ALTER TABLE node_pipeline_status
    ADD CONSTRAINT node_pipeline_status_status_check CHECK (status ~ '^[A-Z_]{1,32}$');
