-- Flotilla schema. Tokens are stored only as bcrypt hashes, found through a lookup id.

CREATE TABLE environments (
    id                      uuid PRIMARY KEY,
    name                    text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    enrollment_token_lookup text NOT NULL UNIQUE,
    enrollment_token_hash   text NOT NULL,
    enrollment_token_hint   text NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE nodes (
    id                uuid PRIMARY KEY,
    environment_id    uuid NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    host              text NOT NULL,
    os                text,
    agent_version     text,
    vector_version    text,
    deployment_mode   text,
    -- Operator-set labels win over the ones the agent reports; selectors match the union.
    labels            jsonb NOT NULL DEFAULT '{}',
    reported_labels   jsonb NOT NULL DEFAULT '{}',
    status            text NOT NULL DEFAULT 'HEALTHY' CHECK (status IN ('HEALTHY', 'UNREACHABLE')),
    last_seen         timestamptz,
    token_lookup      text NOT NULL UNIQUE,
    token_hash        text NOT NULL,
    maintenance       boolean NOT NULL DEFAULT false,
    pending_action    jsonb,
    last_update_error text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    enrolled_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nodes_environment_idx ON nodes (environment_id);
-- The health sweep scans only nodes that are still marked healthy.
CREATE INDEX nodes_healthy_last_seen_idx ON nodes (last_seen) WHERE status = 'HEALTHY';

CREATE TABLE pipelines (
    id               uuid PRIMARY KEY,
    environment_id   uuid NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    latest_version   integer NOT NULL DEFAULT 1,
    deployed_version integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pipelines_environment_name_key UNIQUE (environment_id, name)
);

-- The node selector belongs to a version, so deploy and rollback change config and
-- placement together and "the selector before the change" is always well defined.
CREATE TABLE pipeline_versions (
    pipeline_id   uuid NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    version       integer NOT NULL CHECK (version >= 1),
    config_yaml   text NOT NULL,
    -- Hex SHA-256 of config_yaml: what the agent writes, so it changes exactly on a restart.
    checksum      text NOT NULL,
    log_level     text,
    node_selector jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pipeline_versions_pkey PRIMARY KEY (pipeline_id, version)
);

CREATE TABLE node_pipeline_status (
    node_id         uuid NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    pipeline_id     uuid NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    version         integer NOT NULL,
    status          text NOT NULL CHECK (status IN ('RUNNING', 'STARTING', 'STOPPED', 'CRASHED', 'PENDING')),
    pid             bigint,
    uptime_seconds  bigint,
    config_checksum text,
    metrics         jsonb NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, pipeline_id)
);
CREATE INDEX node_pipeline_status_pipeline_idx ON node_pipeline_status (pipeline_id, status);

CREATE TABLE sample_requests (
    id             uuid PRIMARY KEY,
    pipeline_id    uuid NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    environment_id uuid NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    component_keys text[] NOT NULL CHECK (cardinality(component_keys) >= 1),
    sample_limit   integer NOT NULL CHECK (sample_limit BETWEEN 1 AND 50),
    status         text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'COMPLETED', 'ERROR', 'EXPIRED')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    completed_at   timestamptz,
    completed_by   uuid
);
CREATE INDEX sample_requests_pending_idx ON sample_requests (pipeline_id) WHERE status = 'PENDING';

CREATE TABLE samples (
    request_id    uuid NOT NULL REFERENCES sample_requests(id) ON DELETE CASCADE,
    component_key text NOT NULL,
    node_id       uuid,
    events        jsonb,
    schema        jsonb,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT samples_request_component_key UNIQUE (request_id, component_key)
);

CREATE TABLE settings (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    poll_interval_ms integer NOT NULL CHECK (poll_interval_ms BETWEEN 1000 AND 3600000)
);

CREATE TABLE operator_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    token_lookup text NOT NULL,
    token_hash   text NOT NULL,
    revoked      boolean NOT NULL DEFAULT false,
    bootstrap    boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Free-form (bootstrap) tokens share short lookups on purpose, so this is not unique.
CREATE INDEX operator_tokens_lookup_idx ON operator_tokens (token_lookup) WHERE NOT revoked;
CREATE UNIQUE INDEX operator_tokens_one_bootstrap ON operator_tokens (bootstrap) WHERE bootstrap;
