-- Fleet-page sessions. The browser's cookie holds a random session id; the server keeps only
-- its SHA-256, so a session ends on the server (sign-out, expiry, revocation of its token)
-- whatever the browser keeps, and a database dump yields no usable session.
CREATE TABLE operator_sessions (
    id_digest  bytea PRIMARY KEY,
    token_id   uuid NOT NULL REFERENCES operator_tokens (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX operator_sessions_token_idx ON operator_sessions (token_id);
CREATE INDEX operator_sessions_expires_idx ON operator_sessions (expires_at);
