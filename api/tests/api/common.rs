//! Shared set-up for the api's integration tests.

use flotilla_testkit::api::{self, ApiHandle};
use flotilla_testkit::db::{self, TestDb};

/// A fresh database and an api on it.
pub async fn start() -> (TestDb, ApiHandle) {
    let db = db::fresh().await;
    let settings = flotilla_testkit::settings(&db.url, &flotilla_testkit::redis_url());
    let api = api::spawn(settings).await;
    (db, api)
}

/// Like [`start`] with a settings tweak.
pub async fn start_with(
    tweak: impl FnOnce(&mut flotilla_shared::settings::Settings),
) -> (TestDb, ApiHandle) {
    let db = db::fresh().await;
    let mut settings = flotilla_testkit::settings(&db.url, &flotilla_testkit::redis_url());
    tweak(&mut settings);
    let api = api::spawn(settings).await;
    (db, api)
}

/// Asserts a refusal's `Retry-After` is the time left, in whole seconds rounded up, of a
/// one-minute window that opened at `opened`.
pub fn assert_retry_after_left(headers: &reqwest::header::HeaderMap, opened: std::time::Instant) {
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    let left = 60 - opened.elapsed().as_secs().min(59);
    assert!(
        (left..=60).contains(&wait),
        "Retry-After {wait}, {left} s left"
    );
}
