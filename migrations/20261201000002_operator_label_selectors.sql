-- A pipeline version may match its selector against the labels an operator set on a node only
-- ('operator'), never those the agent reports about itself; 'any' (the default, and what every
-- existing version keeps) matches the effective labels as before. Stored per version beside
-- node_selector, so deploy and rollback move placement as one.
ALTER TABLE pipeline_versions
    ADD COLUMN selector_labels text NOT NULL DEFAULT 'any'
        CHECK (selector_labels IN ('any', 'operator'));

-- Change notifications of operator-label pipelines test containment on operator labels alone;
-- this index serves them as nodes_effective_labels_idx serves the effective labels.
CREATE INDEX nodes_labels_idx ON nodes USING gin (labels jsonb_path_ops);
