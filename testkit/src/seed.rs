//! Nodes written straight into the database as enrollment leaves them, for tests and benchmarks
//! that need many at once.

use flotilla_shared::auth::tokens::{self, NODE_PREFIX};
use serde_json::Value;
use uuid::Uuid;

/// Inserts one node per host into `environment` in one statement, with `labels` (one object per
/// host; none leaves every node's empty), last seen now if `seen`, and a fresh node token
/// stored as an enrolled node's is (its lookup id and digest). Returns `(id, token)` per host.
pub async fn nodes<'e>(
    db: impl sqlx::PgExecutor<'e>,
    environment: Uuid,
    hosts: &[String],
    labels: &[Value],
    seen: bool,
) -> sqlx::Result<Vec<(Uuid, String)>> {
    let issued: Vec<_> = hosts.iter().map(|_| tokens::issue(NODE_PREFIX)).collect();
    let ids: Vec<Uuid> = hosts.iter().map(|_| Uuid::new_v4()).collect();
    let lookups: Vec<&str> = issued.iter().map(|t| t.lookup.as_str()).collect();
    let digests: Vec<Vec<u8>> = issued
        .iter()
        .map(|t| tokens::node_digest(&t.token).to_vec())
        .collect();
    let labels: Vec<Value> = match labels {
        [] => hosts
            .iter()
            .map(|_| Value::Object(Default::default()))
            .collect(),
        given => given.to_vec(),
    };
    sqlx::query(
        "INSERT INTO nodes (id, environment_id, host, token_lookup, token_digest, labels, last_seen)
         SELECT t.id, $1, t.host, t.lookup, t.digest, t.labels, CASE WHEN $7 THEN now() END
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::jsonb[])
           AS t(id, host, lookup, digest, labels)",
    )
    .bind(environment)
    .bind(&ids)
    .bind(hosts)
    .bind(&lookups)
    .bind(&digests)
    .bind(&labels)
    .bind(seen)
    .execute(db)
    .await?;
    Ok(ids
        .into_iter()
        .zip(issued.into_iter().map(|t| t.token))
        .collect())
}
