//! A fresh, migrated Postgres database per test.

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// A database created for one test.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

fn admin_url() -> String {
    std::env::var("FLOTILLA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates `flotilla_t_<random>` and runs the migrations on it.
pub async fn fresh() -> TestDb {
    let admin = admin_url();
    let name = format!("flotilla_t_{}", uuid::Uuid::new_v4().simple());
    let admin_pool = crate::within(
        "postgres",
        PgPoolOptions::new().max_connections(1).connect(&admin),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot reach Postgres at {admin}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin_pool)
        .await
        .expect("create test database");
    admin_pool.close().await;
    let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
    let url = format!("{base}/{name}");
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect(&url)
        .await
        .expect("connect test database");
    flotilla_shared::db::MIGRATOR
        .run(&pool)
        .await
        .expect("migrate");
    TestDb { url, pool }
}
