-- The audit trail filtered to one target (a pipeline's history, a token's), newest first: an
-- index walk instead of a scan of the whole trail.
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id, id);
