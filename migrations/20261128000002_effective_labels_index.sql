-- Selector matching (which nodes a pipeline change reaches) tests JSONB containment on the
-- effective labels; this index turns a scan of the environment into an index lookup.
CREATE INDEX nodes_effective_labels_idx ON nodes USING gin ((reported_labels || labels) jsonb_path_ops);
