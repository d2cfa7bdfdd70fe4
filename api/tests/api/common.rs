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
