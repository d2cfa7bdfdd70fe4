-- Node tokens carry 192 random bits, so a SHA-256 digest protects them as well as bcrypt does
-- and checks in microseconds. New nodes store only the digest. A node enrolled before keeps its
-- bcrypt hash until its token next verifies, when the digest replaces it (nothing is
-- re-enrolled). Exactly one of the two is set.
ALTER TABLE nodes ADD COLUMN token_digest bytea CHECK (octet_length(token_digest) = 32);
ALTER TABLE nodes ALTER COLUMN token_hash DROP NOT NULL;
ALTER TABLE nodes ADD CONSTRAINT nodes_one_token_credential
    CHECK ((token_digest IS NULL) <> (token_hash IS NULL));
