//! The gateway's Postgres access against a real Postgres: coalesced credential reads
//! (`flotilla_shared::batched_reads`) and the pool's idle-aware ping (`flotilla_shared::db`).

use crate::common;

use flotilla_shared::auth::node::{lookup_id, NodeCredentials, CREDENTIALS_ANY};
use flotilla_shared::batched_reads::BatchedReads;
use flotilla_testkit::proxy::Proxy;
use flotilla_testkit::{eventually, redis_url, within};
use futures_util::future::join_all;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

#[tokio::test]
async fn a_burst_of_reads_shares_few_queries_and_each_gets_its_own_row() {
    let db = flotilla_testkit::db::fresh().await;
    let nodes = common::nodes(&db.pool, 300).await;
    let reads = BatchedReads::<NodeCredentials>::new(db.pool.clone(), CREDENTIALS_ANY);
    // Every node, a few of them twice, and lookup ids that do not exist.
    let mut asks: Vec<(Option<uuid::Uuid>, String)> = nodes
        .iter()
        .chain(&nodes[..20])
        .map(|(id, token)| (Some(*id), lookup_id(token).unwrap().to_owned()))
        .collect();
    asks.extend((0..10).map(|i| (None, format!("nosuchlookup{i:04}"))));

    let answers = within(
        "the reads",
        join_all(asks.iter().map(|(_, lookup)| reads.read(lookup))),
    )
    .await;
    for ((expected, lookup), answer) in asks.iter().zip(answers) {
        let row = answer.expect("the read succeeds");
        assert_eq!(row.as_ref().map(|r| r.id), *expected, "{lookup}");
        if let Some(row) = row {
            assert_eq!(&row.token_lookup, lookup);
        }
    }
    // 330 reads queued at once take two rounds of at most 256; allow a little scheduling slack.
    assert!(reads.rounds() <= 4, "{} queries", reads.rounds());

    // A lone read later goes out at once, as its own round.
    let before = reads.rounds();
    let (id, token) = &nodes[0];
    let row = within("one read", reads.read(lookup_id(token).unwrap())).await;
    assert_eq!(row.unwrap().map(|r| r.id), Some(*id));
    assert_eq!(reads.rounds(), before + 1);
}

#[tokio::test]
async fn every_reader_of_a_failed_round_gets_an_error() {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    let reads = BatchedReads::<NodeCredentials>::new(pool, CREDENTIALS_ANY);
    let answers = within(
        "the reads",
        join_all((0..20).map(|i| {
            let reads = reads.clone();
            async move { reads.read(&format!("lookup{i}")).await }
        })),
    )
    .await;
    // Each one an unreachable database (the api answers 503 for these), not a query error.
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut))),
        "{answers:?}"
    );
}

/// A one-connection pool on `url`.
fn pool_through(url: &str, ping_idle_ms: u64) -> sqlx::PgPool {
    let mut settings = flotilla_testkit::settings(url, &redis_url()).database;
    settings.max_connections = 1;
    settings.ping_idle_ms = ping_idle_ms;
    flotilla_shared::db::pool(&settings).unwrap()
}

#[tokio::test]
async fn a_pooled_connection_idle_past_ping_idle_ms_is_checked_before_use() {
    let db = flotilla_testkit::db::fresh().await;
    let (proxy, through_proxy) = Proxy::in_front_of(&db.url).await;
    // 0: every idle connection counts as idle too long; an hour: none does.
    let checked = pool_through(&through_proxy, 0);
    let trusted = pool_through(&through_proxy, 3_600_000);
    let select = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move { sqlx::query("SELECT 1").execute(&pool).await }
    };
    for pool in [&checked, &trusted] {
        within("a first query", select(pool)).await.unwrap();
        // Back in the pool (sqlx returns it from a task of its own).
        eventually("the connection is idle", Duration::from_secs(5), || async {
            (pool.num_idle() == 1).then_some(())
        })
        .await;
    }

    // Postgres goes away and comes back; each pool's one connection died meanwhile.
    proxy.cut();
    proxy.heal();
    assert!(
        within("a query on the trusted connection", select(&trusted))
            .await
            .is_err(),
        "a connection handed out unchecked fails its query"
    );
    within("a query on the checked pool", select(&checked))
        .await
        .expect("the dead connection is pinged, dropped and replaced");
}
