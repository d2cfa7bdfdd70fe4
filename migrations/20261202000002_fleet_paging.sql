-- The fleet API pages by keyset and filters on the server; each order and filter here is an
-- index path, so a page of a 100,000-node fleet reads about a page of rows.
--
-- Sort by host: case-insensitive, byte order (C collation), so the same index serves the
-- order, the cursor and the host-prefix filter (a range on the key). With and without an
-- environment.
CREATE INDEX nodes_env_host_idx ON nodes (environment_id, (lower(host) COLLATE "C"), id);
CREATE INDEX nodes_host_idx ON nodes ((lower(host) COLLATE "C"), id);
-- The same order within one status (status filter, summary counts).
CREATE INDEX nodes_env_status_host_idx ON nodes (environment_id, status, (lower(host) COLLATE "C"), id);
-- Sort by last seen, newest first; never-seen nodes last.
CREATE INDEX nodes_env_last_seen_idx
    ON nodes (environment_id, (coalesce(last_seen, '-infinity'::timestamptz)) DESC, id DESC);
CREATE INDEX nodes_last_seen_idx
    ON nodes ((coalesce(last_seen, '-infinity'::timestamptz)) DESC, id DESC);
-- Nodes in maintenance are few: a partial index finds them.
CREATE INDEX nodes_maintenance_idx ON nodes (environment_id) WHERE maintenance;
-- Nodes with a pipeline in a given status (pipelineStatus alone, crashed anywhere).
CREATE INDEX node_pipeline_status_status_node_idx ON node_pipeline_status (status, node_id);
