-- Every operator change, with who made it (the token's id, and its name as it was then), what
-- and when. Rows are only ever appended; the id orders them and is the paging cursor.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    token_id    uuid NOT NULL,
    token_name  text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
